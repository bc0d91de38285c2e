"""
``salt-run`` without its process: the runner functions loaded by Salt's own loader (``RunnerClient``)
in the test process, on a real master's configuration, talking to that master's event bus.

A ``salt-run`` process costs one to three seconds of start-up; this costs milliseconds once loaded. Use it
where the point of a test is what a runner function does; keep the real CLI (``salt_run``) for what only
the CLI shows: exit status, ``--out=json`` printing one document, progress on stderr, several
processes at once.

Salt's loader keeps one module object per runner module in a process, so a runner loaded on a master
configuration with another cachedir or sock_dir (say, a masterless operator's) would leave the shared
runner answering with that configuration's hints and firing its events on that bus: such a
configuration goes through the real ``salt-run`` instead.

``InProcessRun(config_file).run("deploytoken.acquire", "reason=x", env={"SUDO_USER": "alice"})`` answers
like the CLI fixtures do: ``.returncode`` (the answer's ``retcode``, as ``salt-run`` exits with it),
``.data``. The caller is ``sudo_<SUDO_USER>`` as salt-run run through sudo names it, else ``root``.
"""

import dataclasses
import json

import salt.client
import salt.config
import salt.runner


@dataclasses.dataclass
class Ran:
    returncode: int
    data: object

    @property
    def stdout(self):
        return json.dumps(self.data)

    stderr = ""


class InProcessRun:
    def __init__(self, config_file):
        self.config_file = str(config_file)
        self.config = {"conf_file": self.config_file}
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = salt.runner.RunnerClient(salt.config.master_config(self.config_file))
        return self._client

    def run(self, fun, *args, env=None):
        user = f"sudo_{env['SUDO_USER']}" if env and env.get("SUDO_USER") else "root"
        data = self.client.cmd(fun, arg=list(args), pub_data={"user": user}, print_event=False)
        returncode = data.get("retcode", 0) if isinstance(data, dict) else 0
        return Ran(returncode, data)


class InProcessSalt:
    """``salt MINION fun args`` without its process: Salt's ``LocalClient`` in the test process publishes
    the job to the real master and minion as the given person (``sudo_<SUDO_USER>``, else ``root``), and
    answers like the CLI fixtures: ``.returncode`` (1 when the minion's return code is not 0, as ``salt``
    exits) and ``.data``, the minion's return."""

    def __init__(self, config_file):
        self.config_file = str(config_file)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = salt.client.LocalClient(self.config_file)
        return self._client

    def run(self, fun, *args, minion_tgt, env=None, timeout=120):
        self.client.salt_user = f"sudo_{env['SUDO_USER']}" if env and env.get("SUDO_USER") else "root"
        answers = self.client.cmd(minion_tgt, fun, arg=list(args), timeout=timeout, full_return=True)
        if minion_tgt not in answers:
            return Ran(1, f"{minion_tgt} did not answer {fun} within {timeout} s")
        answer = answers[minion_tgt]
        failed = answer.get("retcode", 0) != 0 or answer.get("ret") is False
        return Ran(1 if failed else 0, answer.get("ret"))
