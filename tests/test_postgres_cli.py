"""``salt-run deploytoken.*`` end to end with the postgres backend: the real salt-run of the test master,
with master configs whose deploytoken settings point at a real PostgreSQL cluster."""

import pytest

import racing
from conftest import PEOPLE, as_user, hint_prefix
from kingfisher_fixtures import free_port

pytestmark = [pytest.mark.daemons]


@pytest.fixture
def postgres_config(pg_section):
    return {"backend": "postgres", "postgres": pg_section, "people": PEOPLE}


def test_full_cycle_through_the_cli(salt_run_with, postgres_config):
    cli = salt_run_with(postgres_config)
    taken = as_user(cli, "alice", "deploytoken.acquire", "reason=upgrade postgres")
    assert taken.returncode == 0, taken
    assert taken.data["holder"] == "Alice Smith" and taken.data["backend"] == "postgres"
    refused = as_user(cli, "bob", "deploytoken.acquire")
    assert refused.returncode == 1 and refused.data["message"].startswith("Deploy token is held by Alice Smith")
    status = as_user(cli, "carol", "deploytoken.status")
    assert status.data["claim"] == taken.data["claim"] and status.data["store"].startswith("postgresql://")
    released = as_user(cli, "alice", "deploytoken.release", "note=done")
    assert released.returncode == 0, released
    history = as_user(cli, "carol", "deploytoken.history")
    assert [(row["claim"], row["note"]) for row in history.data] == [(taken.data["claim"], "done")]


def test_two_master_configs_racing_leave_one_holder(salt_run_with, postgres_config):
    masters = [salt_run_with(postgres_config), salt_run_with(postgres_config)]
    logins = ["alice", "bob", "carol", "dave", "erin", "frank"]
    argument_lists = [(masters[i % 2].cmdline("deploytoken.acquire"), {"SUDO_USER": login})
                      for i, login in enumerate(logins)]
    rets = racing.returned(racing.run(racing.command, argument_lists))
    winners = [data for code, data in rets if code == 0]
    assert len(winners) == 1, rets
    losers = [(code, data) for code, data in rets if code != 0]
    assert all(code == 1 and data["message"].startswith(f"Deploy token is held by {winners[0]['holder']}")
               for code, data in losers), rets
    assert as_user(masters[1], "carol", "deploytoken.status").data["claim"] == winners[0]["claim"]


def test_database_down_exits_2_naming_host_and_port(salt_run_with):
    port = free_port()
    cli = salt_run_with({"backend": "postgres", "postgres": {"host": "127.0.0.1", "port": port, "dbname": "x",
                                                             "user": "x", "connect_timeout": 2}})
    ret = as_user(cli, "alice", "deploytoken.acquire")
    assert ret.returncode == 2
    assert ret.data["error"].startswith(f"The PostgreSQL token store at 127.0.0.1:{port} (database x) cannot be "
                                        "reached: ")


def test_migrate_copies_the_holder_and_history_once(salt_run_with, postgres_config, tmp_path):
    sqlite = {"sqlite": {"path": str(tmp_path / "token.sqlite")}, "people": PEOPLE}
    old = salt_run_with(dict(sqlite, postgres=postgres_config["postgres"]))
    for login in ("alice", "bob"):
        assert as_user(old, login, "deploytoken.acquire", f"reason=by {login}").returncode == 0
        assert as_user(old, login, "deploytoken.release", "note=done").returncode == 0
    held = as_user(old, "carol", "deploytoken.acquire", "reason=still here")

    moved = as_user(old, "carol", "deploytoken.migrate", "to=postgres")
    assert moved.returncode == 0, moved
    assert moved.data["history_rows"] == 2 and moved.data["holder"] == held.data["claim"]
    assert moved.data["message"].startswith("Copied 2 history row(s) and the holder's claim ")
    again = as_user(old, "carol", "deploytoken.migrate", "to=postgres")
    assert again.returncode == 0 and again.data["history_rows"] == 0

    new = salt_run_with(postgres_config)
    assert as_user(new, "alice", "deploytoken.status").data["claim"] == held.data["claim"]
    assert [row["reason"] for row in as_user(new, "alice", "deploytoken.history").data] == ["by bob", "by alice"]
    assert as_user(old, "carol", "deploytoken.migrate").data == {
        "error": f"Say which store to copy into, e.g. {hint_prefix(old)} deploytoken.migrate to=postgres.",
        "retcode": 2}


def test_migrate_ends_the_copy_of_a_running_override_and_says_so(salt_run_with, postgres_config, tmp_path):
    sqlite = {"sqlite": {"path": str(tmp_path / "token.sqlite")}, "people": PEOPLE}
    old = salt_run_with(dict(sqlite, postgres=postgres_config["postgres"]))
    made = as_user(old, "bob", "deploytoken.override", "reason=db down", "targets=db1", "minutes=30")
    assert made.returncode == 0, made
    moved = as_user(old, "carol", "deploytoken.migrate", "to=postgres")
    assert moved.returncode == 0, moved
    assert moved.data["overrides_ended"] == [made.data["id"]]
    ended = f" 1 running override(s) ({made.data['id']}) were copied as ended: they keep running in {tmp_path}/"
    assert ended + "token.sqlite only, " in moved.data["message"], moved.data["message"]
    assert moved.data["message"].endswith(f"make any still needed again with {hint_prefix(old)} deploytoken.override. "
                                          "Now set deploytoken:backend to postgres in the master config.")
    new = salt_run_with(postgres_config)
    assert as_user(new, "alice", "deploytoken.status").data["overrides"] == []
    assert [entry["id"] for entry in as_user(old, "alice", "deploytoken.status").data["overrides"]] == [
        made.data["id"]]
    (cancel,) = [row for row in as_user(new, "alice", "deploytoken.history").data
                 if row["kind"] == "override_cancelled"]
    assert cancel["forced_by"] == "Carol Díaz" and cancel["force_reason"].startswith("moved to postgresql://"), cancel
