"""Commands in the runner's messages carry the -c folder of the call: pure functions, no daemon."""

from deploytoken import hints


def test_the_default_folder_needs_no_option_and_changes_nothing():
    assert hints.prefix("/etc/salt/master", "/etc/salt") == "salt-run"
    assert hints.prefix(None, "/etc/salt") == "salt-run"
    answer = {"message": "Give it back with: salt-run deploytoken.release note='...'"}
    assert hints.pasteable(answer, "salt-run") is answer


def test_another_folder_is_named_quoted_in_every_message_and_command():
    prefix = hints.prefix("/home/al ice/salt/master", "/etc/salt")
    assert prefix == "salt-run -c '/home/al ice/salt'"
    answer = {
        "message": "Wait with salt-run deploytoken.acquire wait=True, or ask Bob to run salt-run deploytoken.release.",
        "force_command": "salt-run deploytoken.release force=True reason='...'",
        "token": {"error": "run salt-run saltutil.sync_all", "retcode": 2},
        "rows": [{"reason": "salt-run deploytoken.release", "message": "already salt-run -c /x deploytoken.status"}],
    }
    assert hints.pasteable(answer, prefix) == {
        "message": f"Wait with {prefix} deploytoken.acquire wait=True, or ask Bob to run {prefix} "
                   "deploytoken.release.",
        "force_command": f"{prefix} deploytoken.release force=True reason='...'",
        "token": {"error": f"run {prefix} saltutil.sync_all", "retcode": 2},
        "rows": [{"reason": "salt-run deploytoken.release", "message": "already salt-run -c /x deploytoken.status"}],
    }, "a person's own text (a reason) is data, not a hint, and a command with -c is left alone"


def test_a_salt_run_that_is_not_the_one_on_path_is_named_as_it_was_typed(tmp_path):
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "salt-run").write_text("")
    typed = str(venv / "salt-run")
    assert hints.program(typed, None) == typed  # not on PATH at all
    assert hints.program(typed, "/usr/bin/salt-run") == typed  # another Salt's
    assert hints.program(typed, typed) == "salt-run"
    assert hints.program("/usr/lib/python3/dist-packages/cli_salt_run.py", None) == "salt-run"  # not salt-run's
    assert hints.program(".venv/bin/salt-run", None) == ".venv/bin/salt-run"
    assert hints.prefix("/srv/x/.local/conf/master", "/etc/salt", ".venv/bin/salt-run") == (
        ".venv/bin/salt-run -c /srv/x/.local/conf")
    assert hints.prefix("/etc/salt/master", "/etc/salt", ".venv/bin/salt-run") == ".venv/bin/salt-run"
    answer = {"message": "Give it back with: salt-run deploytoken.release note='...'"}
    assert hints.pasteable(answer, ".venv/bin/salt-run") == {
        "message": "Give it back with: .venv/bin/salt-run deploytoken.release note='...'"}
