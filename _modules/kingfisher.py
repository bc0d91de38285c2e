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

Every function also takes these settings as arguments, which win over the configuration. Prefer
configuration for the Scrapyd password: Salt logs a job's arguments.
"""

import logging
from typing import TYPE_CHECKING

from salt.exceptions import CommandExecutionError, SaltException, SaltInvocationError

if TYPE_CHECKING:
    __salt__: dict
    __utils__: dict
    __context__: dict

log = logging.getLogger(__name__)

__virtualname__ = "kingfisher"

DEFAULTS = {
    "scrapyd:url": "http://localhost:6800",
    "scrapyd:username": None,
    "scrapyd:password": None,
    "tmux:users": "auto",
    "postgres:threshold": 3600,
    "postgres:socket_dir": "/var/run/postgresql",
    "postgres:port": 5432,
    "postgres:user": "postgres",
    "postgres:runas": "postgres",
    "postgres:state_test": False,
    "busy:postgres": "auto",
}


def __virtual__():
    if "kingfisher_busy.busy" not in __utils__:
        return (False, "kingfisher: the _utils modules are not synced; run saltutil.sync_all")
    return __virtualname__


def _setting(key, given=None):
    """An explicit argument, else ``kingfisher:<key>`` from config/pillar, else the default."""
    if given is not None:
        return given
    return __salt__["config.get"](f"kingfisher:{key}", DEFAULTS[key])


def _scrapyd_args(url, username, password):
    return {
        "url": _setting("scrapyd:url", url),
        "username": _setting("scrapyd:username", username),
        "password": _setting("scrapyd:password", password),
    }


def _postgres_args(threshold, socket_dir, port, user, runas):
    return {
        "threshold": _setting("postgres:threshold", threshold),
        "socket_dir": _setting("postgres:socket_dir", socket_dir),
        "port": _setting("postgres:port", port),
        "user": _setting("postgres:user", user),
        "runas": _setting("postgres:runas", runas),
    }


def _call(function, *args, **kwargs):
    """Run a core function; our errors become Salt's, so the CLI prints one sentence, not a traceback."""
    try:
        return __utils__[function](*args, **kwargs)
    except SaltException as exc:
        if type(exc).__name__ == "InputError":
            raise SaltInvocationError(str(exc)) from None
        raise CommandExecutionError(str(exc)) from None


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
    args = _scrapyd_args(url, username, password)
    report = _call("kingfisher_scrapyd.jobs", **args)
    report["unlisted"] = __utils__["kingfisher_scrapyd.unlisted"]([job["pid"] for job in report["running"]])
    return report


def tmux_sessions(users=None):
    """
    Every live tmux server of root and of the users with a home in /home (and any other live tmux
    socket), found without ``su`` and without creating anything: per session the owner, name,
    created, attached clients, last activity, and per pane the foreground command, its command
    line, how long it has run, and whether it is an idle shell. Stale sockets (no server behind
    them) and servers that cannot be read are listed apart. Users without a server are absent.

    users
        ``auto`` (default, ``kingfisher:tmux:users``) or a comma-separated list of user names
        whose servers alone are reported.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.tmux_sessions
        salt 'collect*' kingfisher.tmux_sessions users=alice,bob
    """
    return _call("kingfisher_tmux.sessions", _setting("tmux:users", users))


def long_queries(threshold=None, socket_dir=None, port=None, user=None, runas=None):
    """
    Active client queries running for longer than ``threshold`` seconds: pid, usename,
    client_addr, application_name, duration, the leading comment (``/* ... */`` or ``-- ...``) and
    the start of the query. Parallel workers are not counted twice. A role that cannot see other
    sessions' queries is an error, never "no long query".

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
    return _call("kingfisher_postgres.long_queries", **_postgres_args(threshold, socket_dir, port, user, runas))


def postgres_restart_pending(state_test=None):
    """
    Whether the next deployment would restart PostgreSQL, and why: pending ``postgresql*``
    package upgrades (from the package cache, without refreshing it), and, with ``state_test``,
    a ``state.apply test=True`` (slow) reporting a postgresql service "set to be restarted".

    state_test
        ``True``: also test the highstate; an sls name (or comma-separated names): test those;
        default ``kingfisher:postgres:state_test`` or False.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.postgres_restart_pending
        salt 'collect*' kingfisher.postgres_restart_pending state_test=True
        salt 'collect*' kingfisher.postgres_restart_pending state_test=postgres,kingfisher
    """
    try:
        upgrades = __salt__["pkg.list_upgrades"](refresh=False) if "pkg.list_upgrades" in __salt__ else {}
    except SaltException as exc:
        raise CommandExecutionError(f"Pending package upgrades cannot be listed: {exc}") from None
    state_return = None
    state_test = _setting("postgres:state_test", state_test)
    if state_test:
        # True tests the highstate; a string names the sls files to test (comma-separated).
        mods = [state_test] if isinstance(state_test, str) else []
        state_return = __salt__["state.apply"](*mods, test=True)
        if not isinstance(state_return, dict):
            # A list of strings: the highstate could not even be compiled (no top file, a render error).
            errors = "; ".join(str(error) for error in state_return or ["no result"])
            raise CommandExecutionError(f"state.apply test=True could not run: {errors}")
    return __utils__["kingfisher_busy.restart_reasons"](upgrades, state_return)


def busy(postgres=None, url=None, username=None, password=None, users=None, threshold=None, socket_dir=None,
         port=None, user=None, runas=None):
    """
    Is the server busy? ``busy: true/false``, one sentence per reason naming the owner where known
    (spider and job, tmux session and user, PostgreSQL usename and query comment), and each
    source's detail under ``sources``. A source that cannot be read (Scrapyd down, a tmux error,
    PostgreSQL down) is reported as ``unknown`` and counts as busy.

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

    CLI Example:

    .. code-block:: bash

        salt 'collect*' kingfisher.busy
        salt 'collect*' kingfisher.busy postgres=always threshold=600 --out=json
    """
    mode = _setting("busy:postgres", postgres)
    scrapyd_args = _scrapyd_args(url, username, password)
    tmux_users = _setting("tmux:users", users)
    postgres_args = _postgres_args(threshold, socket_dir, port, user, runas)
    _call("kingfisher_busy.check_inputs", scrapyd_args, tmux_users, postgres_args, mode)
    restart = None
    if mode == "auto":
        try:
            restart = postgres_restart_pending()
        except CommandExecutionError as exc:
            log.warning("kingfisher.busy: %s; checking PostgreSQL anyway", exc)
    report = _call("kingfisher_busy.busy", scrapyd_args, tmux_users, postgres_args, postgres_mode=mode,
                   restart=restart)
    if restart is not None:
        report["sources"]["postgres"]["restart"] = restart
    if report["busy"]:
        # The minion takes the job's exit status from here; a top-level "result" key is not wanted.
        __context__["retcode"] = 1
    return report
