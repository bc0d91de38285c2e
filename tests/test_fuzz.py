"""
A generated fuzz of bad input for every ``salt-run deploytoken.*`` and every ``kingfisher.*`` function,
called in-process through Salt's own loader, the way ``salt-run`` and the minion call them: the typed
words go through ``salt.utils.args.parse_input`` and ``salt.minion.load_args_and_kwargs``, and a runner
sees them in ``__opts__["arg"]`` as it does under ``salt-run``.

Every input carries at least one part that must be refused (an unknown or repeated argument, a line
break, a value out of range or of the wrong kind); the rest is drawn at random from good and odd values.
Each must end in one of our sentences (exit status 2 for the runner, a Salt error for the module), never
a traceback, and leave the token store and the master's files as they were.

``DEPLOYTOKEN_FUZZ_INPUTS`` inputs per function (default 20; ``scripts/stress`` runs 1,000), drawn from a
seed printed with the counts, so a failing run can be replayed with ``DEPLOYTOKEN_FUZZ_SEED``.
"""

import dataclasses
import hashlib
import inspect
import json
import os
import pathlib
import random
import sqlite3
import traceback

import pytest
import salt.config
import salt.loader
import salt.minion
import salt.utils.args
from salt.exceptions import SaltException

from conftest import PEOPLE, REPO
from deploytoken import commands as token
from deploytoken import model
from deploytoken.stores import sqlite as sqlite_store

INPUTS = int(os.environ.get("DEPLOYTOKEN_FUZZ_INPUTS", "20"))
SEED = int(os.environ.get("DEPLOYTOKEN_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))

# Values that look like something: good ones, odd ones and hostile ones, as a person or a script may type.
ODD = [
    "", " ", "x", "alice", "Alice Smith", "upgrade postgres", "0", "1", "-1", "10", "1e300", "1e-300", "nan", "inf",
    "-inf", "0x10", "9" * 400, "True", "False", "None", "null", "~", "[]", "{}", "[1, 2]", '{"a": 1}', "'", '"',
    "$(id)", "`id`", "; rm -rf /", "../../etc/passwd", "/", "/tmp", "*", "collect*", "=", "a=b", "--help", "-c",
    "%s%s%s", "{0}", "\\", "N\u043ebody", "Nobody", "\u202egnp.exe", "\U0001f680", "\ufeff", "x" * 600,
    "!!python/object/apply:os.system ['id']", "3f9c0a1b2c3d4e5f", "hand-0123456789abcdef", "deploytoken/released",
    "Dana Lee: fine", "sqlite", "postgres", "google", "glob", "list", "always", "never", "auto", "root", "nobody",
    "http://localhost:6800", "127.0.0.1", "600", "86401", "0.05", "3600.5",
]


@dataclasses.dataclass(frozen=True)
class Function:
    name: str
    params: tuple  # every parameter, in order
    poisons: dict  # parameter -> values that parameter must refuse, whatever else is given

    def typed(self, rng):
        """The words typed after the function's name: some parameters at random, and one poison."""
        words = [f"{param}={rng.choice(ODD)}" for param in rng.sample(self.params, rng.randint(0, min(3, len(
            self.params))))]
        words.insert(rng.randint(0, len(words)), self.poison(rng, words))
        return words

    def poison(self, rng, words):
        kinds = ["unknown"] + (["value"] if self.poisons else []) + (
            ["twice", "line break", "trailing line break"] if self.params and self.runner else [])
        kind = rng.choice(kinds)
        if kind == "unknown":
            return f"{rng.choice(['resaon', 'tiemout', 'force_', 'x', 'pillar', 'user_'])}={rng.choice(ODD)}"
        if kind == "value":
            param = rng.choice(sorted(self.poisons))
            for word in list(words):
                if word.startswith(f"{param}="):
                    words.remove(word)  # the poison is the one value of its parameter
            return f"{param}={rng.choice(self.poisons[param])}"
        param = rng.choice(self.params)
        if kind == "twice":
            words.append(f"{param}={rng.choice(ODD)}")
            return f"{param}={rng.choice(ODD)}"
        if kind == "line break":
            return f"{param}={rng.choice(ODD)}\n{rng.choice(ODD)}"
        return f"{param}={rng.choice(ODD)}\n"

    @property
    def runner(self):
        return self.name.startswith("deploytoken.")


SECONDS = ["-1", "-0.5", "1e300", "nan", "inf", "abc", "[1]", '{"s": 1}', "86401", "99999999", "9" * 400]
FLAGS = ["maybe", "2", "-1", "[]", "{}", "yes please", "0.5"]
LONG = ["x" * 501, "a\x07b", "a\x1b[31mb", "a\u2028b", '{"a": 1}', "[1, 2]"]
CLAIMS = ["xyz", "123", "3f9c0a1b2c3d4e5", "hand-xyz", "../claim", "3f9c0a1b2c3d4e5fa"]
RUNNER = [
    Function("deploytoken.status", (), {}),
    Function("deploytoken.acquire", ("reason", "wait", "timeout", "interval", "name"),
             {"reason": LONG, "wait": FLAGS, "timeout": SECONDS, "interval": SECONDS + ["0", "0.05", "3601"],
              "name": LONG + ["Nobody", "N\u043ebody", "N0b0dy", "Nobody."]}),
    Function("deploytoken.release", ("note", "name", "force", "reason", "claim"),
             {"note": LONG, "force": FLAGS, "claim": CLAIMS, "name": ["Nobody", "N\u043ebody"]}),
    Function("deploytoken.history", ("limit",), {"limit": ["0", "-1", "10001", "1.5", "abc", "1e300", "nan"]}),
    Function("deploytoken.report", ("since", "path"),
             {"since": ["yesterday", "-1d", "0", "30", "2999-01-01", "2026-13-45", "[1]", "1e300", "nan",
                        "9" * 400 + "d"],
              "path": ["/nonexistent-dt/report.html", "/", "/tmp", "/etc/passwd", "[1]", "a\x07b", "",
                       "/tmp/" + "r" * 300 + ".html"]}),
    Function("deploytoken.update_repos", ("repos",),
             {"repos": ["relative/path", "[1, 2]", '["/nonexistent-dt"]', "[]", "{}", '["", "/"]', "[null]"]}),
    Function("deploytoken.setup", ("targets", "reason", "wait", "consent", "repos", "tgt_type", "busy_args",
                                   "timeout", "interval", "name", "ssh"),
             {"targets": ["", " ", "a\x07b", "[]"], "reason": LONG + ["x [consent: Dana: ok]"],
              "consent": ["Dana", "Dana:", ": why", "x" * 501], "repos": ["relative", "[1]", '["/nonexistent-dt"]'],
              "tgt_type": ["globb", "", "[]"],
              "busy_args": ['"always"', '{"postgres": "sometimes"}', '{"foo": 1}', '{"port": 0}', '{"users": "a;b"}',
                            "[1]", '{"users": "alice", "postgres": "never"}', '{"threshold": 99999}',
                            '{"url": "http://u:p@h:6800"}'],
              "timeout": SECONDS, "wait": FLAGS, "ssh": FLAGS}),
    Function("deploytoken.cleanup", ("note", "name"), {"note": LONG, "name": ["Nobody", "N\u043ebody"]}),
    Function("deploytoken.override", ("reason", "targets", "minutes", "cancel", "id"),
             {"reason": LONG + [""], "minutes": ["0", "-1", "1441", "1e300", "nan", "abc", "1.5"],
              "cancel": FLAGS, "targets": ["a b", "a\tb", "", " ", "G@os:Debian", "L@", "a,,b", "L@a*"],
              "id": ["override-xyz", "../x", "[1]"]}),
    Function("deploytoken.migrate", ("to",), {"to": ["nosuch", "../x", "[1]", "{}", ""]}),
    Function("deploytoken.flush", (), {}),
    Function("deploytoken.doctor", ("targets", "tgt_type", "ssh"),
             {"targets": ["a\x07b", "[]"], "tgt_type": ["globb", "", "[]"], "ssh": FLAGS}),
    Function("deploytoken.remind", (), {}),
    Function("deploytoken.notify_me", ("name",), {"name": LONG + ["Nobody", "N\u043ebody"]}),
    Function("deploytoken.announce", ("tag", "data"),
             {"tag": ["x\ny", "deploytoken/released", "salt/auth", "[1]"], "data": ['"text"', "[1]", "{}", "1e300"]}),
]
URLS = ["http://[::1", "ftp://x", "http://", "http://a b", "http://h:0", "http://h:99999", "http://h/?q=1",
        "http://h#f", '{"a": 1}', "[1]", "kfuser:S3cretPW@127.0.0.1:9", "http://u:p/w@h:6800", ""]
USERS = ["a;b", "../x", "Root", "a b", "-rf", "x" * 40, "[1, 2]", '{"a": 1}', "alice\x00", "\u00e9lise"]
THRESHOLDS = ["-1", "abc", "nan", "1e400", "[1]", "-inf", "9" * 400]
PORTS = ["0", "70000", "abc", "1.5", "True", "-1", "9" * 400, "[1]"]
RUNAS = ["dtknosuchuser", "a\x00b", "x" * 300]
MODULE = [
    Function("kingfisher.report", ("source",), {"source": ["celery", "../x", "[1]", '{"a": 1}', ""]}),
    Function("kingfisher.scrapyd_jobs", ("url", "username", "password"), {"url": URLS}),
    Function("kingfisher.tmux_sessions", ("users",), {"users": USERS}),
    Function("kingfisher.long_queries", ("threshold", "socket_dir", "port", "user", "runas"),
             {"threshold": THRESHOLDS, "port": PORTS, "runas": RUNAS}),
    Function("kingfisher.postgres_restart_pending", ("state_test",),
             {"state_test": ["[1]", "1", "a b", "{\"a\": 1}", "../x", ""]}),
    Function("kingfisher.busy", ("postgres", "url", "username", "password", "users", "threshold", "socket_dir",
                                 "port", "user", "runas"),
             {"postgres": ["sometimes", "[]", "ALWAYS", "1"], "url": URLS, "users": USERS, "threshold": THRESHOLDS,
              "port": PORTS, "runas": RUNAS}),
]


def inputs_of(function):
    rng = random.Random(f"{SEED}:{function.name}")
    return [function.typed(rng) for _ in range(INPUTS)]


@dataclasses.dataclass
class Counts:
    inputs: int = 0
    refused: int = 0
    tracebacks: int = 0
    changes: int = 0
    accepted: int = 0
    examples: list = dataclasses.field(default_factory=list)

    def bad(self, kind, words, what):
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {words!r}: {what}")

    def report(self, name):
        print(f"\nfuzz {name} (seed {SEED}): {self.inputs} inputs, {self.refused} clean refusals, "
              f"{self.tracebacks} tracebacks, {self.changes} state changes, {self.accepted} not refused")
        for example in self.examples:
            print(f"  {example}")


def one_sentence(text):
    """Our sentences: text, no traceback, no doubled full stop at the end."""
    return isinstance(text, str) and text.strip() and "Traceback" not in text and not text.rstrip().endswith("..")


# ---- the runner -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """Salt's runner loader on a master configuration of our own, with a held token and some history."""
    root = tmp_path_factory.mktemp("fuzz-master")
    (root / "cache" / "proc").mkdir(parents=True)
    store_path = root / "cache" / "deploytoken.sqlite"
    opts = salt.config.master_config(None)
    opts.update(root_dir=str(root), cachedir=str(root / "cache"), pki_dir=str(root / "pki"),
                sock_dir=str(root / "sock"), runner_dirs=[str(REPO / "_runners")], utils_dirs=[str(REPO / "_utils")],
                file_roots={"base": []}, pillar_roots={"base": []},
                deploytoken={"sqlite": {"path": str(store_path)}, "people": PEOPLE})
    store = sqlite_store.SqliteStore(str(store_path))
    for login in ("bob", "carol"):
        held = token.acquire(store, login, PEOPLE, reason="earlier")
        token.release(store, login, PEOPLE, note="done", claim=held["claim"])
    token.acquire(store, "alice", PEOPLE, reason="the fuzz")
    functions = salt.loader.runner(opts, utils=salt.loader.utils(opts))
    for function in RUNNER:
        # What Salt's runner client gives every job.
        functions[function.name].__globals__["__user__"] = "sudo_alice"
    return opts, functions, store_path


def master_state(opts, store_path):
    """The token, the history and every file the runner keeps (the read cache aside)."""
    with sqlite3.connect(store_path) as db:
        rows = [db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in ("token", "history", "meta")]
    digest = hashlib.sha256(json.dumps(rows, default=str).encode())
    for path in sorted(pathlib.Path(opts["cachedir"]).rglob("*")):
        if path.is_file() and "pillar" not in path.name and "proc" not in path.parts and path != store_path:
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def call_runner(opts, functions, name, words):
    """As salt-run does (salt/runner.py, Runner.run): the words in __opts__, parsed, bound, called."""
    opts["fun"], opts["arg"] = name, list(words)
    function = functions[name]
    args, kwargs = salt.minion.load_args_and_kwargs(function, salt.utils.args.parse_input(words))
    ret = function(*args, **kwargs)
    # The answer with its outputter, as under salt-run's command line: salt-run prints (and exits with) its data.
    assert isinstance(ret, dict) and set(ret) == {"data", "outputter"}, ret
    return ret["data"]


@pytest.mark.parametrize("function", RUNNER, ids=lambda function: function.name)
def test_fuzz_runner_refuses_bad_input_in_one_sentence_and_changes_nothing(master, function):
    opts, functions, store_path = master
    counts = Counts()
    before = master_state(opts, store_path)
    try:
        for words in inputs_of(function):
            counts.inputs += 1
            try:
                ret = call_runner(opts, functions, function.name, words)
            except Exception:  # noqa: BLE001 - exactly what the fuzz looks for
                counts.bad("tracebacks", words, traceback.format_exc().splitlines()[-1])
                ret = None
            if ret is not None:
                if function.name == "deploytoken.announce" and "retcode" not in ret:
                    # Past its arguments announce never fails: it says why nothing was posted.
                    sentence, clean = ret.get("message"), ret.get("posted") is False
                else:
                    sentence, clean = ret.get("error"), ret.get("retcode") == 2
                if clean and one_sentence(sentence):
                    counts.refused += 1
                elif "Traceback" in str(ret):
                    counts.bad("tracebacks", words, str(ret)[-300:])
                else:
                    counts.bad("accepted", words, str(ret)[:300])
            after = master_state(opts, store_path)
            if after != before:
                counts.bad("changes", words, "the store or the master's files changed")
                before = after
    finally:
        opts.pop("fun", None), opts.pop("arg", None)
        counts.report(function.name)
    assert (counts.tracebacks, counts.changes, counts.accepted) == (0, 0, 0), counts.examples


# ---- the execution module ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def minion(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-minion")
    opts = salt.config.minion_config(None)
    opts.update(id="fuzz-minion", root_dir=str(root), cachedir=str(root / "cache"), pki_dir=str(root / "pki"),
                sock_dir=str(root / "sock"), file_client="local", module_dirs=[str(REPO / "_modules")],
                utils_dirs=[str(REPO / "_utils")], file_roots={"base": []}, pillar_roots={"base": []})
    opts["grains"] = salt.loader.grains(opts)
    utils = salt.loader.utils(opts)
    return salt.loader.minion_mods(opts, utils=utils, context={})


@pytest.mark.parametrize("function", MODULE, ids=lambda function: function.name)
def test_fuzz_kingfisher_refuses_bad_input_in_one_sentence(minion, function):
    counts = Counts()
    try:
        for words in inputs_of(function):
            counts.inputs += 1
            try:
                # As the minion does (salt/minion.py): parsed, bound (unknown arguments are Salt's refusal).
                args, kwargs = salt.minion.load_args_and_kwargs(minion[function.name],
                                                                salt.utils.args.parse_input(words))
                inspect.signature(minion[function.name]).bind(*args, **kwargs)
            except (SaltException, TypeError):  # Salt's own refusal of the arguments, before our code runs
                counts.refused += 1
                continue
            try:
                ret = minion[function.name](*args, **kwargs)
            except SaltException as exc:
                if one_sentence(str(exc)):
                    counts.refused += 1
                else:
                    counts.bad("tracebacks", words, str(exc)[:300])
                continue
            except Exception:  # noqa: BLE001 - exactly what the fuzz looks for
                counts.bad("tracebacks", words, traceback.format_exc().splitlines()[-1])
                continue
            counts.bad("accepted", words, str(ret)[:300])
    finally:
        counts.report(function.name)
    assert (counts.tracebacks, counts.accepted) == (0, 0), counts.examples


def test_every_function_is_fuzzed(master, minion):
    _, functions, _ = master
    assert {name for name in functions if name.startswith("deploytoken.")} == {f.name for f in RUNNER}
    assert {name for name in minion if name.startswith("kingfisher.")} == {f.name for f in MODULE}
    assert model.MAX_TEXT_LENGTH == 500  # LONG's first value is one character too many
