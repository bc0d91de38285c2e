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
