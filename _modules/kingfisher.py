"""
Is the Kingfisher data-collection server busy? Scrapyd jobs, tmux sessions, long PostgreSQL
queries, and whether the next deployment would restart PostgreSQL.

Configuration (minion config or pillar, read with ``config.get``; all optional):

.. code-block:: yaml

    kingfisher:
      scrapyd: {url: "http://localhost:6800", username: kingfisher, password: ...}
      postgres: {threshold: 3600, socket_dir: /var/run/postgresql, port: 5432, user: postgres,
                 runas: postgres, state_test: False}
      tmux: {users: auto}

A server without one of them turns it off (``scrapyd: false``, ``postgres: false``, ``tmux:
false``): it is then reported ``skipped``, never busy. Every function also takes these settings as
arguments, which win over the configuration. Prefer configuration for the Scrapyd password: Salt
logs a job's arguments. Each source is an entry of the registry in ``_utils/deploytoken/kingfisher/sources.py``;
``kingfisher.report`` reads any of them by name.

Errors of the core are Salt's own exception types (``CommandExecutionError``: a bad argument or
setting, or a source that cannot be read), so they pass through unchanged as one sentence.
"""

import contextvars
import functools
import os
import re
from typing import TYPE_CHECKING

import salt.utils.args
from salt.exceptions import CommandExecutionError, SaltException

from deploytoken import model
from deploytoken.guard import held
from deploytoken.kingfisher import busy as busy_check
from deploytoken.kingfisher import packages as package_cache
from deploytoken.kingfisher import sources
from deploytoken.kingfisher.errors import InputError

if TYPE_CHECKING:
    __opts__: dict
    __salt__: dict
    __context__: dict

__virtualname__ = "kingfisher"
# busy's answer, short for a person (_output/kingfisher.py) unless --out asks for the whole report.
__outputter__ = {"busy": "kingfisher"}

# Settings of the busy check itself, not of one source.
DEFAULTS = {"postgres:state_test": False, "busy:postgres": "auto"}


def __virtual__():
    return __virtualname__


def _setting(key, given=None):
    """An explicit argument, else ``kingfisher:<key>`` from config/pillar, else the default."""
    if given is not None:
        return given
    return __salt__["config.get"](f"kingfisher:{key}", DEFAULTS[key])


def _typed(function):
    """The words given after ``kingfisher.<function>``, or None when unknown: salt-call (and salt-ssh, which
    passes them on to salt-call on the target) keeps them in its options; a job published with its words
    as given (salt-api, Salt's LocalClient) has them in the minion's proc file for this process. The salt
    command itself folds ``users=a users=b`` into one keyword before it publishes: no minion sees the first."""
    if __opts__.get("fun") == f"kingfisher.{function}":
        return __opts__.get("arg") if isinstance(__opts__.get("arg"), list) else None
    try:
        job = held.find_job(os.path.join(__opts__["cachedir"], "proc"), os.getpid())
    except model.DeploytokenError:
        return None  # several jobs in this process (multiprocessing: False): which one is ours is unknown
    if not job or job.get("fun") != f"kingfisher.{function}" or not isinstance(job.get("arg"), list):
        return None
    return job["arg"]


# The settings that are numbers, and the spelling Salt's YAML reading turns into another number.
NUMBERS = ("port", "threshold")
LEADING_ZERO = re.compile(r"0[0-9]+")


def _refuse_repeated(function):
    """
    CommandExecutionError when a keyword was typed twice: Salt keeps the last value silently, so
    ``users=alice users=bob`` would check bob alone and could answer "not busy" while alice works; and when a
    number was typed with a leading 0 (``port=055434``), which Salt reads as another number.
    """
    seen = set()
    for arg in _typed(function) or ():
        key, value = salt.utils.args.parse_kwarg(arg) if isinstance(arg, str) else (None, None)
        if key in seen:
            raise CommandExecutionError(
                f"kingfisher.{function} got {key}= more than once, and Salt would keep only the last: give each "
                f"argument once (users=alice,bob for several users).")
        if key in NUMBERS and isinstance(value, str) and LEADING_ZERO.fullmatch(value.strip()):
            # Salt reads the word as YAML before we see it: 055434 arrives as 55434, another port.
            raise CommandExecutionError(
                f"kingfisher.{function} got {key}={value}, a number with a leading 0, which Salt may read as "
                f"another number: give it as {value.strip().lstrip('0') or '0'}.")
        if key:
            seen.add(key)


def _settings(source, given):
    """Source ``source``'s settings, parsed once: arguments, else config or pillar, else defaults."""
    return sources.settings(source, given, __salt__["config.get"])


def _read(source, given):
    return sources.read(source, _settings(source, given))


def report(source, **settings):
    """
    What one Kingfisher source finds, by its name in the registry (``scrapyd``, ``tmux``,
    ``postgres``, or one added since). Its settings come from ``kingfisher:<source>:<setting>`` in
    config or pillar, or from keyword arguments, which win.

    source
        The source's name.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.report tmux
        salt 'collect*' kingfisher.report postgres threshold=600
    """
    _refuse_repeated("report")
    return _read(source, {key: value for key, value in settings.items() if not key.startswith("__")})


def scrapyd_jobs(url=None, username=None, password=None):
    """
    Running and pending Scrapyd jobs of every project (Scrapyd 1.2 to 1.6), and crawl processes
    (``scrapyd.runner crawl``) running on this minion that Scrapyd does not list. Errors (Scrapyd
    down, wrong credentials, an answer that is not Scrapyd's) are reported as one sentence.

    url
        Scrapyd's address; default ``kingfisher:scrapyd:url`` or ``http://localhost:6800``.

    username
        Basic auth user; default ``kingfisher:scrapyd:username``.

    password
        Basic auth password; default ``kingfisher:scrapyd:password``. Never logged nor returned.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.scrapyd_jobs
        salt 'collect*' kingfisher.scrapyd_jobs url=http://localhost:6800 --out=json
    """
    _refuse_repeated("scrapyd_jobs")
    return _read("scrapyd", {"url": url, "username": username, "password": password})


def tmux_sessions(users=None):
    """
    Every live tmux server of root and of the users with a home in /home (and any other live tmux
    socket), found without ``su`` and without creating anything: per session the owner, name,
    created, attached clients, last activity, and per pane what runs in it, read from /proc (its
    command line, how long it has run, whether in the background, stopped or outside the pane's
    session) and whether it is idle: only an interactive shell waiting at its prompt is. Stale
    sockets (no server behind them), servers that cannot be read, and live servers whose socket was
    deleted (``unreachable``) are listed apart. Users without a server are absent; a user named
    that has no account here is an error.
    A socket tmux itself would not trust (a symbolic link, a directory that is not its owner's or
    that others can enter) is a warning and is never connected to.

    users
        ``auto`` (default, ``kingfisher:tmux:users``) or a comma-separated list of user names
        whose servers alone are reported.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.tmux_sessions
        salt 'collect*' kingfisher.tmux_sessions users=alice,bob
    """
    _refuse_repeated("tmux_sessions")
    return _read("tmux", {"users": users})


def long_queries(threshold=None, socket_dir=None, port=None, user=None, runas=None):
    """
    What a PostgreSQL restart would interrupt: client transactions open for longer than
    ``threshold`` seconds (a long query, a transaction of short statements, a session idle in
    transaction) and replication connections (``pg_basebackup``, a standby) of any age: pid, usename,
    client_addr, application_name, duration (the transaction's age), query_duration, state, kind,
    the leading comment (``/* ... */`` or ``-- ...``) and the start of the (last) query. Parallel
    workers are not counted twice. A role that cannot see other
    sessions' queries is an error, never "no long query". Without psycopg (a salt-ssh target's own
    Python) the server's ``psql`` is asked instead, run as ``runas``; ``client`` says which one read.

    threshold
        Seconds; default ``kingfisher:postgres:threshold`` or 3600.

    socket_dir
        The server's unix socket directory; default ``/var/run/postgresql``.

    port
        The server's port (also names its socket); default 5432.

    user
        The PostgreSQL role to connect as; default ``postgres``.

    runas
        The system user to connect as when running as root (peer authentication); default
        ``postgres``. An empty value connects as the minion's own user.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.long_queries
        salt 'collect*' kingfisher.long_queries threshold=600 port=5433
    """
    _refuse_repeated("long_queries")
    return _read("postgres", {"threshold": threshold, "socket_dir": socket_dir, "port": port, "user": user,
                              "runas": runas})


def postgres_restart_pending(state_test=None):
    """
    Whether the next deployment would restart PostgreSQL, and why: pending ``postgresql*``
    package upgrades (from the package cache, without refreshing it), and, with ``state_test``,
    a ``state.apply test=True`` (slow) reporting a postgresql service "set to be restarted".

    On a Debian-family system only the installed ``postgresql*`` packages are asked about
    (``dpkg-query`` and ``apt-cache policy``), and the answer is kept in the minion's cachedir until
    the package lists, dpkg's status or apt's configuration change (at most an hour); ``packages``
    says when it was found (``checked``, ``age`` in seconds) and how. Elsewhere ``pkg.list_upgrades``
    is asked.

    state_test
        ``True``: also test the highstate; an sls name (or comma-separated names): test those;
        default ``kingfisher:postgres:state_test`` or False.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.postgres_restart_pending
        salt 'collect*' kingfisher.postgres_restart_pending state_test=True
        salt 'collect*' kingfisher.postgres_restart_pending state_test=postgres,kingfisher
    """
    packages = _postgres_upgrades()
    state_return = None
    state_test = _check_state_test(_setting("postgres:state_test", state_test))
    if state_test:
        # True tests the highstate; a string names the sls files to test (comma-separated).
        mods = [state_test] if isinstance(state_test, str) else []
        state_return = __salt__["state.apply"](*mods, test=True)
        if not isinstance(state_return, dict):
            # A list of strings: the highstate could not even be compiled (no top file, a render error).
            errors = "; ".join(str(error) for error in state_return or ["no result"])
            raise CommandExecutionError(f"state.apply test=True could not run: {errors}")
    found = busy_check.restart_reasons(packages.pop("upgrades"), state_return)
    found["packages"] = packages
    return found


def _check_state_test(value):
    """``state_test`` as given: True, False, or sls names separated by commas; anything else is refused before a
    (slow) test run of the whole highstate starts."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    names = value.split(",") if isinstance(value, str) else None
    if not names or not all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*", name.strip()) for name in names):
        raise InputError(f"state_test must be True, False or sls names separated by commas, e.g. "
                         f"state_test=postgres,kingfisher; got {value!r}.")
    return ",".join(name.strip() for name in names)


def _postgres_upgrades():
    """``{"upgrades", "how", ...}``: the pending upgrades of the ``postgresql*`` packages."""
    tools = package_cache.tools()
    if tools is not None:
        cache = os.path.join(__opts__["cachedir"], "kingfisher", "postgres_upgrades.json")
        return package_cache.pending(tools, "postgresql*", cache)
    try:
        upgrades = __salt__["pkg.list_upgrades"](refresh=False) if "pkg.list_upgrades" in __salt__ else {}
    except SaltException as exc:
        raise CommandExecutionError(f"Pending package upgrades cannot be listed: {exc}") from None
    return {"upgrades": upgrades, "how": "pkg.list_upgrades"}


def _refuse_switches(extra):
    """One sentence for an argument ``busy`` does not take, rather than Salt's generic "not valid": a
    source's switch (``scrapyd=false``) says where a source is turned off."""
    switches = sorted(key for key in extra if key in sources.names())
    if switches:
        name = switches[0]
        raise CommandExecutionError(
            f"kingfisher.busy takes no {name}= argument: a source is turned off in the server's config or pillar "
            f"(kingfisher: {{{name}: false}}), never for one call, so that no deployment skips a check that "
            "would stop it.")
    busy_check.check_arguments(extra)


def busy(postgres=None, url=None, username=None, password=None, users=None, threshold=None, socket_dir=None,
         port=None, user=None, runas=None, **kwargs):
    """
    Is the server busy? ``busy: true/false``, one sentence per reason naming the owner where known
    (spider and job, tmux session and user, PostgreSQL usename and query comment), and each
    source's detail under ``sources``. A source that cannot be read (Scrapyd down, a tmux error,
    PostgreSQL down) is reported as ``unknown`` and counts as busy. The sources are read side by
    side, together with the restart question of ``postgres=auto``.

    Exit status: 1 when busy (or an argument is wrong), 0 when not, so scripts can gate on it:
    ``salt 'collect*' kingfisher.busy && deploy``.

    postgres
        ``auto`` (default, ``kingfisher:busy:postgres``): check long queries only when
        ``postgres_restart_pending`` says the deployment would restart PostgreSQL; ``always``;
        ``never``.

    url, username, password
        Scrapyd, as for ``kingfisher.scrapyd_jobs``.

    users
        tmux users, as for ``kingfisher.tmux_sessions``.

    threshold, socket_dir, port, user, runas
        PostgreSQL, as for ``kingfisher.long_queries``.

    A source is turned off only in the server's config or pillar (``kingfisher: {scrapyd: false}``), never
    by an argument: ``scrapyd=false`` is refused, so that no deployment (``deploytoken.setup
    busy_args=``) skips a check that would stop it.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.busy
        salt 'collect*' kingfisher.busy postgres=always threshold=600 --out=json
    """
    _refuse_repeated("busy")
    _refuse_switches({key: value for key, value in kwargs.items() if not key.startswith("__")})
    mode = busy_check.check_mode(_setting("busy:postgres", postgres))
    given = {
        "scrapyd": {"url": url, "username": username, "password": password},
        "tmux": {"users": users},
        "postgres": {"threshold": threshold, "socket_dir": socket_dir, "port": port, "user": user, "runas": runas},
    }
    # Every source of the registry; one added since takes its settings from config or pillar alone.
    settings = {name: _settings(name, given.get(name, {})) for name in sources.names()}
    restart = None
    if mode == "auto" and settings.get("postgres") is not None:
        # Asked from a reader thread: Salt's dunders resolve through the context of this job.
        restart = functools.partial(contextvars.copy_context().run, postgres_restart_pending)
    found = busy_check.busy(settings, postgres_mode=mode, restart=restart)
    if found["busy"]:
        # The minion takes the job's exit status from here; a top-level "result" key is not wanted.
        __context__["retcode"] = 1
    return found
