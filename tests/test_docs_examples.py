"""
Every fenced block of ``README.md`` and ``docs/*.md`` is checked, so the docs cannot drift from the code.
``CHECKS`` gives each kind of block its check:

- after ``<!-- file: PATH -->``: that file of the repository, byte for byte;
- after ``<!-- part of: PATH -->``: consecutive whole lines of that file;
- ``bash``/``sh``/``console``/``cron``: each command parsed as Salt parses it, against Salt's own options
  and outputters and the real function's signature and argument checks (``salt-run deploytoken.*`` goes
  through the runner's own check of unknown, extra and repeated arguments); scripts and benchmarks exist;
- ``yaml``: a ``deploytoken:`` block read by our ``Settings`` and its store's own checks, a ``kingfisher:``
  block by each source's settings, a state file against the loaded states' signatures;
- ``json``: ``kingfisher.busy``'s answer, its keys and its summary sentence;
- ``text``: an output example, whose printed ``salt-run deploytoken.*`` commands are checked as above;
- ``sql``: run as pasted by a superuser of a throwaway PostgreSQL cluster that asks for passwords over TCP,
  then the store opened as the role it made, with the password from the page's ``pgpass`` line only;
- ``pgpass``: lines of libpq's password file, ``host:port:dbname:user:password``.

A block of any other kind fails. The example master configuration is loaded with Salt's own config
loader, and the quick start is run as pasted.
"""

import atexit
import dataclasses
import functools
import importlib
import inspect
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import psycopg
import pytest
import salt.config
import salt.loader
import salt.minion
import salt.state
import salt.utils.args
import salt.utils.parsers
import yaml
from salt.exceptions import CommandExecutionError, SaltException, SaltInvocationError

import deploytoken
from conftest import REPO, TIERS, example_master_conf
from deploytoken import settings as token_settings
from deploytoken import stores as token_stores
from deploytoken.guard import held
from deploytoken.kingfisher import busy as busy_check
from deploytoken.kingfisher import sources
from deploytoken.procedure import doctor
from deploytoken.stores.google import client, history
from deploytoken.stores.postgres import store as pg_store
from kingfisher_fixtures import start_postgres

PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[a-z]*)\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S)
MARKER = re.compile(r"<!-- (?P<kind>file|part of): (?P<path>\S+) -->")
EXAMPLE_CONF = REPO / "examples" / "master.d" / "deploytoken.conf"
VENV = os.path.dirname(os.path.dirname(sys.executable))
# The extending guide's example of a new Kingfisher source; checked for real once it is registered.
EXAMPLE_SOURCES = {"celery"}


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    line: int
    info: str
    text: str
    marker: tuple | None  # (kind, path) of a <!-- file: --> or <!-- part of: --> line just above

    @property
    def kind(self):
        return self.marker[0] if self.marker else self.info

    def __str__(self):
        return f"{self.page}:{self.line}"


def blocks():
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            indent = len(match["indent"])
            body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
            before = text[: match.start()].splitlines()
            marker = MARKER.fullmatch(before[-1].strip()) if before else None
            found.append(Block(str(page.relative_to(REPO)), len(before) + 1, match["info"], body,
                               (marker["kind"], marker["path"]) if marker else None))
    return found


BLOCKS = blocks()


# ---- Salt's own loaders, on a configuration of this test -----------------------------------------


# Module names of their own for the modules these loaders load: Salt keeps one module object per name in a
# process, and the in-process runner of the shared master (tests/salt_inprocess.py) must keep its __opts__.
OWN = "dt_docs_loaded"


@functools.cache
def master_opts():
    root = pathlib.Path(tempfile.mkdtemp(prefix="dt-docs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    opts = salt.config.master_config(None)
    opts.update(root_dir=str(root), cachedir=str(root / "cache"), pki_dir=str(root / "pki"),
                sock_dir=str(root / "sock"), runner_dirs=[str(REPO / "_runners")], utils_dirs=[str(REPO / "_utils")],
                file_roots={"base": []}, pillar_roots={"base": []})
    return opts


@functools.cache
def runners():
    return salt.loader.runner(master_opts(), utils=salt.loader.utils(master_opts(), loaded_base_name=OWN),
                              loaded_base_name=OWN)


@functools.cache
def minion():
    """The execution modules and states a minion loads, ours among them: ``(functions, states)``."""
    opts = salt.config.minion_config(None)
    opts.update(dict(master_opts(), module_dirs=[str(REPO / "_modules")], states_dirs=[str(REPO / "_states")],
                     file_client="local", grains={}))
    utils = salt.loader.utils(opts, loaded_base_name=OWN)
    functions = salt.loader.minion_mods(opts, utils=utils, loaded_base_name=OWN)
    return functions, salt.loader.states(opts, functions, utils, salt.loader.serializers(opts), loaded_base_name=OWN)


@functools.cache
def outputters():
    return salt.loader.outputters(master_opts(), loaded_base_name=OWN)


PARSERS = {
    "salt-run": salt.utils.parsers.SaltRunOptionParser,
    "salt": salt.utils.parsers.SaltCMDOptionParser,
    "salt-call": salt.utils.parsers.SaltCallOptionParser,
    "salt-ssh": salt.utils.parsers.SaltSSHOptionParser,
}


# ---- commands ---------------------------------------------------------------------------------------


def salt_options(program, words):
    """The words after the options, each option checked against ``program``'s own parser and each
    ``--out`` against the outputters Salt has."""
    parser = PARSERS[program]()
    words = list(words)
    rest = []
    while words:
        word = words.pop(0)
        if not word.startswith("-"):  # options may come anywhere, as Salt's parsers allow
            rest.append(word)
            continue
        name, _, value = word.partition("=")
        option = parser.get_option(name)
        assert option is not None, f"{program} has no option {name}"
        if option.takes_value() and not value:
            value = words.pop(0)
        if option.dest == "output":
            assert value in outputters(), f"{program} {word}: Salt has no outputter {value!r}"
    return rest


def check_runner_call(function, words):
    """``salt-run function words``: the function exists, and the runner's own check accepts the words."""
    assert function in runners(), f"salt-run has no function {function}"
    if not function.startswith("deploytoken."):
        return
    loaded = runners()[function]
    args, kwargs = salt.minion.load_args_and_kwargs(loaded, salt.utils.args.parse_input(words))
    checked = inspect.getclosurevars(loaded.func).nonlocals  # what _strict binds the call against
    module = loaded.func.__globals__
    name = function.split(".", 1)[1]
    opts = module["__opts__"]
    opts["fun"], opts["arg"] = function, list(words)
    try:
        problem = module["_argument_problem"](name, checked["valid"], args, kwargs) or module["_typed_problem"](name)
    finally:
        opts.pop("fun", None), opts.pop("arg", None)
    assert problem is None, problem
    checked["signature"].bind(*args, **kwargs)


def check_minion_call(function, words):
    """``salt TGT function words``: a function a minion has, and the words bind to its signature."""
    functions, _ = minion()
    assert function in functions, f"a minion has no function {function}"
    args, kwargs = salt.minion.load_args_and_kwargs(functions[function], salt.utils.args.parse_input(words))
    inspect.signature(functions[function]).bind(*args, **kwargs)
    if function == "kingfisher.busy":  # it takes any keyword, to refuse the unknown ones in its own words
        busy_check.check_arguments(kwargs)


def check_salt(program, words):
    rest = salt_options(program, words)
    if program == "salt-run" and {"-d", "--doc"} & set(words):  # the documentation of a module or function
        assert len(rest) == 1 and any(name == rest[0] or name.startswith(rest[0] + ".") for name in runners()), rest
    elif program == "salt-run":
        assert rest, "salt-run needs a function"
        check_runner_call(rest[0], rest[1:])
    elif program == "salt-call":
        check_minion_call(rest[0], rest[1:])
    else:  # salt and salt-ssh: a target, then the function
        assert len(rest) >= 2, f"{program} needs a target and a function"
        if program == "salt-ssh" and rest[1] == "state.single":
            pytest.fail("salt-ssh state.single finds no custom state on a real target: use state.apply")
        check_minion_call(rest[1], rest[2:])


def check_script(words):
    path = REPO / words[0]
    assert path.is_file() and os.access(path, os.X_OK), f"{words[0]} is not an executable script of the repository"
    if words[0] == "scripts/file-root":  # its one argument is a folder it makes, outside the checkout
        assert len(words) == 2 and os.path.isabs(words[1]), words
        return
    words = words[1:]
    while words:
        word = words.pop(0)
        if word == "-m":
            assert words.pop(0) in TIERS
        elif not word.startswith("-"):
            assert (REPO / word).exists(), f"{word} does not exist"


def check_python(words):
    assert words[1].startswith("benchmarks/") and (REPO / words[1]).is_file(), f"{words[1]} does not exist"


def check_pip(words):
    """``python3 -m pip wheel ... .`` or ``salt-pip``/``pip install`` of this checkout, its wheel or a
    requirements file of the repository (tests/test_package.py builds and installs the wheel for real)."""
    words = words[3:] if words[:3] == ["python3", "-m", "pip"] else words[1:]
    assert words[0] in ("install", "wheel"), words
    wheel = f"dist/deploytoken-{deploytoken.__version__}-py3-none-any.whl"
    rest = words[1:]
    while rest:
        word = rest.pop(0)
        if word in ("-r", "-w"):
            target = rest.pop(0)
            assert word == "-w" or (REPO / target).is_file(), f"{target} is not a file of the repository"
        elif not word.startswith("-"):
            assert word in (".", wheel), f"pip {words[0]} {word}: neither this checkout nor {wheel}"


def check_gcloud(words):
    # The login the Google store's own sentence tells people to run.
    assert shlex.join(words) == client.USER_LOGIN


def check_command(line):
    words = shlex.split(line, comments=True)
    if not words:
        return
    if words[0] == "sudo":
        words = words[3:] if words[1] == "-u" else words[1:]
    program = words[0].removeprefix(".venv/bin/")
    if program in PARSERS:
        check_salt(program, words[1:])
    elif program.startswith("scripts/"):
        check_script(words)
    elif program in ("pip", "salt-pip") or words[:3] == ["python3", "-m", "pip"]:
        check_pip(words)
    elif program == "python":
        check_python(words)
    elif program == "gcloud":
        check_gcloud(words)
    else:
        pytest.fail(f"no check for the command {line!r}")


def check_commands(block):
    for line in block.text.splitlines():
        check_command(line)


def check_console(block):
    """``$ command`` lines are commands; the others are what they print."""
    for line in block.text.splitlines():
        if line.startswith("$ "):
            check_command(line[2:])
        else:
            check_printed_commands(line)


def check_cron(block):
    for line in block.text.splitlines():
        fields = line.split(None, 5)
        assert len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", field) for field in fields[:5]), line
        check_command(fields[5])


PRINTED = re.compile(
    r"salt-run (?:-c \S+ )?(?P<function>deploytoken\.\w+)(?P<args>(?: \w+=(?:'[^']*'|\"[^\"]*\"|\S+))*)"
)


def check_printed_commands(text):
    """The ``salt-run deploytoken.*`` commands an output example prints, as far as the sentence goes."""
    for match in PRINTED.finditer(text):
        words = [word.rstrip(".,") for word in shlex.split(match["args"])]
        check_runner_call(match["function"], words)


def check_output(block):
    assert block.text.strip()
    check_printed_commands(" ".join(block.text.split()))  # a printed command may be wrapped over lines


# ---- YAML -----------------------------------------------------------------------------------------------


def check_deploytoken(block):
    """Our settings read it; each store's block passes that store's own checks (no connection made)."""
    found = token_settings.from_opts({"cachedir": "/var/cache/salt/master", "deploytoken": block})
    assert found.backend in token_stores.BACKENDS
    if "sqlite" in block:
        token_stores.backend("sqlite").from_settings(found)
    if "postgres" in block:
        section = dict(found.section("postgres"))
        password_file = section.pop("password_file", None)
        assert password_file is None or os.path.isabs(password_file)
        pg_store.PostgresStore(section)
    if "google" in block:
        section = found.section("google")
        known = set()
        for name in ("deploytoken.stores.google.store", "deploytoken.stores.google.client"):
            source = inspect.getsource(importlib.import_module(name))
            known |= set(re.findall(r"section(?:\.get\(|\[)\"(\w+)\"", source))
        assert set(section) <= known, f"deploytoken:google has no setting {sorted(set(section) - known)}"
        for key in ("document_id", "spreadsheet_id", "history_range"):
            assert section.get(key), f"deploytoken:google:{key} is missing"
        history.check_history_range(section["history_range"])


def check_kingfisher(block):
    """Each source's settings parse, as the module reads them from config or pillar."""

    def lookup(key, default):
        value = {"kingfisher": block}
        for part in key.split(":"):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    for name, value in block.items():
        if name in sources.SOURCES:
            sources.settings(name, {}, lookup)
        elif name == "busy":
            busy_check.check_mode(value["postgres"])
        else:
            assert name in EXAMPLE_SOURCES, f"kingfisher:{name} is not a Kingfisher source"


def check_states(block):
    """A state file: each state is one a minion loads, and its arguments bind to the function."""
    _, states = minion()
    keywords = salt.state.STATE_REQUISITE_KEYWORDS | salt.state.STATE_RUNTIME_KEYWORDS
    for state_id, body in block.items():
        assert isinstance(body, dict) and body, f"{state_id} is not a state"
        for function, args in body.items():
            given = {key: value for arg in args for key, value in arg.items()}
            given.setdefault("name", state_id)
            for keyword in keywords:
                given.pop(keyword, None)
            if function in states:
                inspect.signature(states[function]).bind(**given)
            else:  # one of Salt's own that this machine does not load (service.running without systemd)
                module, name = function.split(".")
                found = importlib.import_module(f"salt.states.{module}")
                assert callable(getattr(found, name, None)), f"Salt has no state {function}"


def check_yaml(block):
    parsed = yaml.safe_load(block.text)
    assert isinstance(parsed, dict) and parsed, "not a YAML mapping"
    first = block.text.splitlines()[0]
    assert not re.match(r"# (/|\S+\.(conf|sls)$)", first), (
        f"{block} names its file ({first}): quote that file with <!-- file: PATH --> or <!-- part of: PATH -->")
    for key, value in parsed.items():
        if key == "deploytoken":
            check_deploytoken(value)
        elif key == "kingfisher":
            check_kingfisher(value)
        else:
            check_states({key: value})


# ---- quotes and the rest ---------------------------------------------------------------------------------


def check_file(block):
    path = block.marker[1]
    assert (REPO / path).read_bytes() == block.text.encode(), f"{block} quotes {path} differently"


def check_part(block):
    path = block.marker[1]
    assert ("\n" + (REPO / path).read_text()).find("\n" + block.text) >= 0, f"{block} is not part of {path}"


def check_busy_json(block):
    """``kingfisher.busy``'s answer: its keys, its sources and statuses, and the summary they make."""
    answer = json.loads(block.text)
    assert set(answer) == set(busy_check.decide({}))
    assert set(answer["sources"]) <= set(sources.SOURCES)
    assert {source["status"] for source in answer["sources"].values()} <= {"busy", "idle", "skipped", "unknown"}
    assert answer["summary"] == busy_check.summary(answer["busy"], answer["sources"])


# ---- the database an administrator sets up --------------------------------------------------------------

PGPASS_LINE = re.compile(r"(?P<host>[^:]+):(?P<port>\d+|\*):(?P<dbname>[^:]+):(?P<user>[^:]+):(?P<password>.+)")


def check_pgpass(block):
    lines = block.text.splitlines()
    assert lines and all(PGPASS_LINE.fullmatch(line) for line in lines), f"{block}: not host:port:dbname:user:password"


def check_sql(block):
    """The page's SQL as pasted, then the store opened as the role it made, over TCP with a password read
    from the page's ``.pgpass`` line only (the host and port made this cluster's), file mode 0600."""
    (pgpass,) = [other for other in BLOCKS if other.page == block.page and other.kind == "pgpass"]
    line = PGPASS_LINE.fullmatch(pgpass.text.strip())
    cluster = start_postgres()
    try:
        hba = cluster.data / "pg_hba.conf"
        hba.write_text(f"host all {line['user']} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with cluster.connect(autocommit=True) as conn:
            for statement in block.text.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("SELECT pg_reload_conf()")
        folder = pathlib.Path(tempfile.mkdtemp(prefix="dt-pgpass-"))
        try:
            passfile = folder / ".pgpass"
            passfile.write_text(f"127.0.0.1:{cluster.port}:{line['dbname']}:{line['user']}:{line['password']}\n")
            passfile.chmod(0o600)
            section = {"host": "127.0.0.1", "port": cluster.port, "dbname": line["dbname"], "user": line["user"],
                       "sslmode": "disable", "schema": "deploytoken", "passfile": str(passfile)}
            store = token_stores.open_store(token_settings.Settings(
                cachedir="/nonexistent", backend="postgres", sections={"postgres": section}))
            store.read()
            with psycopg.connect(host=cluster.socket_dir, port=cluster.port, user="postgres",
                                 dbname=line["dbname"]) as conn:
                assert conn.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'deploytoken'"
                                    ).fetchone() == (line["user"],)
            # What the page says happens without the line, and with TLS asked of a server without it.
            for changed, words in (({"passfile": str(folder / "none")}, "fe_sendauth: no password supplied"),
                                   ({"sslmode": "require"}, "server does not support SSL")):
                with pytest.raises(SaltException, match=words):
                    token_stores.open_store(token_settings.Settings(
                        cachedir="/nonexistent", backend="postgres", sections={"postgres": dict(section, **changed)}
                    )).read()
                assert words in (REPO / block.page).read_text()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        cluster.stop()


CHECKS = {
    "file": check_file,
    "part of": check_part,
    "bash": check_commands,
    "sh": check_commands,
    "console": check_console,
    "cron": check_cron,
    "yaml": check_yaml,
    "json": check_busy_json,
    "text": check_output,
    "sql": check_sql,
    "pgpass": check_pgpass,
}


def test_every_block_of_the_docs_has_a_check():
    unchecked = [f"{block} ({block.kind or 'no kind'})" for block in BLOCKS if block.kind not in CHECKS]
    assert not unchecked, f"blocks no test checks: {unchecked}; give each a kind of CHECKS"
    assert "README.md" in {block.page for block in BLOCKS} and len(PAGES) > 1


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_block(block):
    CHECKS[block.kind](block)


def test_every_file_marker_is_followed_by_its_block():
    for page in PAGES:
        markers = len(re.findall(r"^ *<!-- (file|part of): ", page.read_text(), re.M))
        assert markers == len([block for block in BLOCKS if block.page == str(page.relative_to(REPO)) and block.marker])


def test_the_deploy_repository_and_the_master_config_are_quoted_whole():
    quoted = {block.marker[1] for block in BLOCKS if block.marker and block.marker[0] == "file"}
    assert quoted >= {"examples/deploy-repo/Saltfile", "examples/deploy-repo/salt-config/master",
                      "examples/deploy-repo/salt-config/roster", "examples/master.d/deploytoken.conf"}


LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")


def test_the_architecture_page_names_every_module_of_the_core():
    page = (REPO / "docs" / "architecture.md").read_text()
    modules = {path.name for path in (REPO / "_utils" / "deploytoken").rglob("*.py") if path.name != "__init__.py"}
    folders = {path.name + "/" for path in (REPO / "_utils" / "deploytoken").iterdir() if path.is_dir()
               and path.name != "__pycache__"}
    assert not [name for name in sorted(modules | folders) if name not in page]


def test_every_link_of_the_docs_names_a_file_of_the_repository():
    for page in PAGES:
        for match in LINK.finditer(page.read_text()):
            target = (page.parent / match["target"]).resolve()
            assert target.exists(), f"{page.name} links to {match['target']}"


# ---- the checks themselves catch what they are for ---------------------------------------------------------


@pytest.mark.parametrize("line, words", [
    ("salt-run deploytoken.acquire resaon=x", "has no argument resaon"),
    ("salt-run deploytoken.acquire reason=a reason=b", "got reason more than once"),
    ("salt-run deploytoken.aquire", "salt-run has no function deploytoken.aquire"),
    ("salt-run deploytoken.remind --out=quiet", "Salt has no outputter 'quiet'"),
    ("salt-run --nope deploytoken.status", "salt-run has no option --nope"),
    ("salt 'collect*' kingfisher.busy postgers=always", "kingfisher.busy has no argument 'postgers'"),
    ("salt 'collect*' kingfisher.state_doc", "a minion has no function kingfisher.state_doc"),
    ("./deploy", "no check for the command"),
])
def test_a_wrong_command_fails_its_check(line, words):
    with pytest.raises((AssertionError, TypeError, SaltInvocationError, CommandExecutionError,
                        pytest.fail.Exception)) as caught:
        check_command(line)
    assert words in str(caught.value)


def test_a_block_that_names_its_file_without_quoting_it_fails():
    block = Block("x.md", 1, "yaml", "# /etc/salt/master.d/deploytoken.conf\ndeploytoken:\n  backend: sqlite\n", None)
    with pytest.raises(AssertionError, match="names its file"):
        check_yaml(block)


# ---- the example master configuration ---------------------------------------------------------------------


def salt_reads(tmp_path, *files):
    """Salt's own config loader on a folder with an empty ``master`` and ``files`` in ``master.d/``."""
    (tmp_path / "master.d").mkdir()
    (tmp_path / "master").write_text("")
    for number, text in enumerate(files):
        (tmp_path / "master.d" / f"{number}-deploytoken.conf").write_text(text)
    return salt.config.master_config(str(tmp_path / "master"))


def test_salt_accepts_the_example_master_config_and_our_settings_read_it(tmp_path):
    opts = salt_reads(tmp_path, EXAMPLE_CONF.read_text())
    assert opts["ext_pillar"] == [{"deploytoken": {}}]
    # Off as pasted: a chat without its webhook file would drop every message, a reactor without its sls fail.
    assert opts["reactor"] == [] and "deploytoken-remind" not in (opts.get("schedule") or {})
    found = token_settings.from_opts(dict(opts, cachedir=str(tmp_path)))
    assert (found.backend, found.people["bob"], found.emails, found.notify) == (
        "sqlite", "Bob Jones", {"bob@example.org": "bob"}, None)
    # The store's file follows the master's cachedir, wherever that is.
    assert token_stores.backend("sqlite").from_settings(found).path == str(tmp_path / "deploytoken.sqlite")
    assert (found.remind_after, found.pillar_cache, found.pillar_max_age) == (None, 2, 300)
    checked = doctor.deploytoken_blocks(doctor.config_files(str(tmp_path / "master")))
    checked.append(doctor.ext_pillar(opts["ext_pillar"], str(tmp_path / "master")))
    checked.append(doctor.chat(found.notify, opts["user"]))
    assert [finding["level"] for finding in checked] == ["ok", "ok", "ok"], checked


def test_the_example_master_configs_chat_lines_turned_on_as_it_says(tmp_path):
    opts = salt_reads(tmp_path, example_master_conf(chat=True))
    assert opts["reactor"] == [{"deploytoken/*": ["salt://reactor/deploytoken.sls"]}]
    assert opts["schedule"]["deploytoken-remind"]["function"] == "deploytoken.remind"
    assert (REPO / "reactor" / "deploytoken.sls").is_file()
    found = token_settings.from_opts(dict(opts, cachedir=str(tmp_path)))
    assert (found.notify.kind, found.notify.url_file, found.remind_after, found.remind_every) == (
        "slack", "/etc/salt/deploytoken-webhook", 14400, 14400)
    # Where the webhook file is missing (this machine), doctor says so instead of exiting 0.
    assert doctor.chat(found.notify, opts["user"])["level"] == "problem"


def test_a_second_deploytoken_key_in_the_file_makes_salt_skip_it(tmp_path):
    # What the one example file avoids: Salt drops the whole file, ext_pillar and all, and carries on.
    opts = salt_reads(tmp_path, EXAMPLE_CONF.read_text() + "deploytoken:\n  backend: google\n")
    assert opts["ext_pillar"] == [] and "deploytoken" not in opts


# ---- the quick start, as pasted ------------------------------------------------------------------------------


def quick_start_blocks():
    readme = [block for block in BLOCKS if block.page == "README.md"]
    start = next(index for index, block in enumerate(readme) if block.text == "scripts/quickstart\n")
    return readme[start].text, readme[start + 1].text


@pytest.mark.integration
def test_the_quick_start_and_the_commands_after_it_work_as_pasted(tmp_path):
    script, after = quick_start_blocks()
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", ".local", "__pycache__"))
    # The requirements are already in this virtualenv, so the script's pip install has nothing to do.
    (copy / ".venv").symlink_to(VENV)
    for number, line in enumerate(script.splitlines() + after.splitlines()):
        done = subprocess.run(shlex.split(line), cwd=copy, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        if number == 0:  # one hint to give the token back, naming the salt-run that ran (not on PATH here)
            assert done.stdout.count("deploytoken.release") == 1, done.stdout
            assert done.stdout.rstrip().endswith(
                f"Give it back with: .venv/bin/salt-run -c {copy / '.local' / 'conf'} deploytoken.release note='...'"
            ), done.stdout
    history = subprocess.run([".venv/bin/salt-run", "-c", ".local/conf", "--out=json", "deploytoken.history"],
                             cwd=copy, capture_output=True, text=True, timeout=120)
    assert "tried it out" in history.stdout


def test_the_state_guards_document_themselves_for_sys_state_doc():
    # What ``salt 'collect*' sys.state_doc deploytoken kingfisher`` prints, which the docs point to.
    functions, states = minion()
    ours = sorted(name for name in states if name.split(".")[0] in ("deploytoken", "kingfisher"))
    assert "deploytoken.held" in ours and "kingfisher.no_running_jobs" in ours, ours
    documented = functions["sys.state_doc"]("deploytoken", "kingfisher")
    assert not [name for name in ours if len((documented.get(name) or "").strip()) < 40], documented


def test_acquire_documents_interval_as_the_docs_do():
    # salt-run -d deploytoken.acquire and docs/commands.md say the same: a waiter is woken, interval is the
    # longest sleep (tests/test_waiting_line.py shows the waiter woken well before it).
    doc = " ".join(runners()["deploytoken.acquire"].__doc__.split())
    assert "the longest sleep, in seconds, between two looks at the token (default 10)" in doc, doc
    assert "`interval` is only the longest sleep between two looks" in " ".join(
        (REPO / "docs" / "commands.md").read_text().split())


def test_the_salt_ssh_page_gives_the_fixes_doctor_gives():
    # A newcomer reads the page first and doctor's findings after: the same folder, the same chown, the same
    # set_path, the same ssh to run once.
    page = " ".join((REPO / "docs" / "salt-ssh.md").read_text().split())
    assert "Every command runs from the top folder of your clone, the one with the `Saltfile`" in page
    assert "every command runs as yourself, never with `sudo`" in page and "**Never with sudo.**" in page
    fix = "sudo chown -R $USER: .salt"
    assert f"`{fix}`" in page and doctor.not_under_sudo("ada")["text"].endswith(fix)
    (set_path,) = re.findall(r"`(set_path: [^`]+)`", page)
    (ssh_once,) = re.findall(r"`(ssh -p PORT root@HOST)` once", page)
    entry = {"host": "HOST", "port": "PORT", "user": "root"}
    told = {kind: doctor.ssh_failure("kf", text, entry)
            for kind, text in (("shim", "KeyError: 'LD_LIBRARY_PATH'"), ("host key", "Host key verification failed"))}
    assert f"add {set_path} to kf's entry in the roster" in told["shim"]
    assert f"run {ssh_once} once" in told["host key"] and "not salt-ssh -i" in told["host key"]


def test_the_salt_ssh_store_memory_setting_of_the_docs_is_what_the_guard_reads():
    # A roster entry's minion_opts become the target's opts under salt-ssh (the salt-ssh tests' roster moves
    # the memory this way, tests/ssh_fixtures.py); the docs give the same setting.
    for page in ("configuration.md", "guards.md"):
        (setting,) = re.findall(r"`(minion_opts: \{deploytoken: \{store_memory: [^`]+\}\})`",
                                " ".join((REPO / "docs" / page).read_text().split()))
        assert held.store_memory(yaml.safe_load(setting)["minion_opts"]) == "/srv/deploytoken/store.json", page
