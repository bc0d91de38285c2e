"""``kingfisher.busy``'s short answer (``_output/kingfisher.py``, loaded by Salt's own loader) on real answers
of the busy check: PostgreSQL cannot be read here (nothing listens on port 1), so what the answer says is
why it was asked at all."""

import salt.config
import salt.loader

from conftest import REPO
from deploytoken.kingfisher import busy as busy_check
from deploytoken.kingfisher import sources

PARTS = ("15", "client-15", "common", "contrib", "doc", "plpython3-15")
UPGRADES = {f"postgresql-{part}": "15.10-0+deb12u1" for part in PARTS}


def short_answer(report):
    opts = salt.config.minion_config(None)
    opts.update(outputter_dirs=[str(REPO / "_output")], extension_modules="")
    return salt.loader.outputters(opts, loaded_base_name="dt_kingfisher_output")["kingfisher"]({"kf": report})


def busy(tmp_path, restart, mode="auto"):
    given = {"scrapyd": False, "tmux": False,
             "postgres": {"threshold": 3600, "socket_dir": str(tmp_path), "port": 1, "runas": ""}}

    def lookup(key, default):
        name = key.split(":")[1]
        return given[name] if key.count(":") == 1 or given[name] is False else given[name].get(
            key.split(":")[2], default)

    settings = {name: sources.settings(name, {}, lookup) for name in sources.names()}
    return busy_check.busy(settings, postgres_mode=mode, restart=restart)


def test_the_short_answer_says_why_postgres_was_asked_when_a_restart_is_pending(tmp_path):
    report = busy(tmp_path, lambda: busy_check.restart_reasons(UPGRADES))
    lines = short_answer(report).splitlines()
    assert lines[0] == f"kf: {report['summary']}" and report["busy"]
    assert lines[1] == (
        "    PostgreSQL was checked because the next deployment would restart it: Package postgresql-15 would be "
        "upgraded to 15.10-0+deb12u1; Package postgresql-client-15 would be upgraded to 15.10-0+deb12u1; and 4 "
        "more (--out=json lists them).")
    assert lines[2].startswith("    postgres cannot be read, so it counts as busy: ")


def test_the_short_answer_says_when_the_restart_question_failed(tmp_path):
    def restart():
        raise OSError("apt-cache failed: exit status 100.")

    lines = short_answer(busy(tmp_path, restart)).splitlines()
    assert lines[1] == ("    PostgreSQL was checked because it could not be told whether the next deployment would "
                        "restart it: apt-cache failed: exit status 100.")


def test_the_short_answer_says_nothing_more_when_postgres_was_not_asked_about(tmp_path):
    skipped = short_answer(busy(tmp_path, lambda: busy_check.restart_reasons({}))).splitlines()
    assert len(skipped) == 1 and "and postgres (the next deployment would not restart PostgreSQL)." in skipped[0]
    always = short_answer(busy(tmp_path, None, mode="always")).splitlines()
    assert always[1].startswith("    postgres cannot be read, so it counts as busy: ")
