"""The guard on a minion with ``multiprocessing: False``, where every job has the minion's pid: it finds
its own job by its jid, so another person's job running at the same time is never taken for it. A
minion of its own on the shared master, for this module only."""

import time

import pytest

from guard_helpers import GUARDED
from test_guard_states import guard_of

pytestmark = pytest.mark.daemons

THREADED = "dt-threaded"


@pytest.fixture(scope="module")
def threaded_minion(salt_master, session_dir):
    overrides = {"multiprocessing": False,
                 "deploytoken": {"store_memory": str(session_dir / "threaded-store-memory.json")}}
    minion = salt_master.salt_minion_daemon(THREADED, overrides=overrides)
    with minion.started():
        ret = salt_master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt=THREADED)
        assert ret.returncode == 0, ret
        yield minion


def test_another_persons_job_running_does_not_let_the_non_holder_through(
        salt_cli, threaded_minion, token, write_sls, marker_dir):
    sls = write_sls("dtthreaded", GUARDED.format(marker=marker_dir / "deployed"))
    token.take("alice")
    sleeping = salt_cli.run("--async", "test.sleep", "60", minion_tgt=THREADED, env={"SUDO_USER": "alice"})
    assert sleeping.returncode == 0, sleeping
    deadline = time.monotonic() + 30
    while not salt_cli.run("saltutil.running", minion_tgt=THREADED).data and time.monotonic() < deadline:
        time.sleep(0.2)
    # The sleeping job ends with this module's minion. saltutil.kill_all_jobs would signal the job's pid,
    # which is the minion's own here, and wait two minutes for an answer that never comes.
    for _ in range(3):  # the proc files are listed in no fixed order: try more than once
        ret = salt_cli.run("state.apply", sls, minion_tgt=THREADED, env={"SUDO_USER": "bob"})
        assert ret.returncode == 1
        assert guard_of(ret)["comment"].startswith("Deploy token is held by Alice Smith (alice) since "), ret
        assert "so Bob Jones (bob) may not deploy" in guard_of(ret)["comment"]
    assert not (marker_dir / "deployed").exists()
    passed = salt_cli.run("state.apply", sls, minion_tgt=THREADED, env={"SUDO_USER": "alice"})
    assert passed.returncode == 0, guard_of(passed)["comment"]
