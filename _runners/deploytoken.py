"""
Take, give back and inspect the global deploy token from the master.

Exit status: 0 when done, 1 when refused (someone else holds the token, you do not hold it),
2 when an argument, the configuration or the token store is wrong. Nothing is changed unless the
exit status is 0.

Without ``--out``, salt-run prints each answer short, for a person (``_output/deploytoken.py``); any
``--out`` (``json``, ``yaml``, ...) prints the full data.

Configuration (master config, all optional):

.. code-block:: yaml

    deploytoken:
      backend: sqlite          # or google
      sqlite: {path: /var/cache/salt/master/deploytoken.sqlite}
      people: {alice: "Alice Smith"}
"""

import dataclasses
import inspect
import logging
import os
import re
import shutil
import sys
from typing import TYPE_CHECKING

import salt.client
import salt.client.ssh.client
import salt.pillar
import salt.roster
import salt.syspaths
import salt.utils.event
import salt.utils.minions
from salt.exceptions import SaltException

from deploytoken import commands, hints, model
from deploytoken import report as report_page
from deploytoken import settings, stores
from deploytoken.chat import events
from deploytoken.chat import remind as reminders
from deploytoken.chat import waiting
from deploytoken.guard import overrides
from deploytoken.guard import pillar as token_pillar
from deploytoken.guard import seal
from deploytoken.procedure import doctor as checks
from deploytoken.procedure import repos as repositories
from deploytoken.procedure import setup as procedure
from deploytoken.stores import migrate as moving

if TYPE_CHECKING:
    __opts__: dict
    __user__: str
    __jid_event__: object

log = logging.getLogger(__name__)

__virtualname__ = "deploytoken"

BAD_INPUT = 2
# How Salt's command line spells a keyword argument; a value with a line break fails to match and
# arrives as a positional argument instead.
KEYWORD_LOOK = re.compile(r"[^\d\W][\w.-]*=")


def __virtual__():
    return __virtualname__


def _strict(func):
    """Refuse arguments ``func`` does not take, with exit status 2.

    Salt hands a runner every keyword it was given and, when the call fails, prints "Passed invalid
    arguments" with exit status 0, so ``acquire resaon=x && deploy`` would deploy without the token.
    The function Salt sees therefore takes anything (Salt inspects ``__wrapped__``, so it is not set),
    and the arguments are bound here against ``func``'s own signature.
    """
    signature = inspect.signature(func)
    valid = list(signature.parameters)

    def checked(*args, **kwargs):
        kwargs = {key: value for key, value in kwargs.items() if not key.startswith("__pub_")}  # Salt's own
        problem = _argument_problem(func.__name__, valid, args, kwargs) or _typed_problem(func.__name__)
        if problem is None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:  # e.g. an argument given both by position and by name
                problem = f"deploytoken.{func.__name__}: {exc}."
        answer = {"error": problem, "retcode": BAD_INPUT} if problem is not None else func(*args, **kwargs)
        return _for_person(func.__name__, hints.pasteable(answer, _prefix()))

    checked.__name__, checked.__qualname__, checked.__doc__ = func.__name__, func.__qualname__, func.__doc__
    return checked


def _for_person(function, answer):
    """Under salt-run's own command line for ``function``, ``answer`` with our outputter: without ``--out``
    a person reads the short answer (``_output/deploytoken.py``), while any ``--out`` prints the full data
    and the exit status is still the answer's ``retcode`` (salt/cli/run.py reads it from ``data``).
    Called otherwise (the reactor, an orchestration, another function), the answer is returned as it is."""
    if __opts__.get("fun") != f"deploytoken.{function}":
        return answer
    return {"data": answer, "outputter": "deploytoken"}


def _argument_problem(function, valid, args, kwargs):
    """One sentence about an unknown or extra argument, or None."""
    takes = f"it takes {', '.join(valid)}" if valid else "it takes no arguments"
    unknown = [key for key in kwargs if key not in valid]
    if unknown:
        return f"deploytoken.{function} has no argument {', '.join(unknown)}: {takes}."
    for arg in args:
        if isinstance(arg, str) and KEYWORD_LOOK.match(arg):
            return (
                f"deploytoken.{function} got {arg!r}, which is name=value with a line break in the value: "
                "values must be single lines."
            )
    if len(args) > len(valid):
        extra = ", ".join(repr(arg) for arg in args[len(valid):])
        return f"deploytoken.{function} got more arguments than it takes ({extra}): {takes}, as name=value."
    return None


def _typed_problem(function):
    """One sentence about what salt-run's own parsing hides, or None: a name given twice (the last one
    would win silently) and a value ending in a line break (which Salt drops). Only salt-run's command
    line keeps what was typed, in ``__opts__["arg"]``, for the function it runs."""
    typed = __opts__.get("arg")
    if __opts__.get("fun") != f"deploytoken.{function}" or not isinstance(typed, list):
        return None
    seen = set()
    for arg in typed:
        match = KEYWORD_LOOK.match(arg) if isinstance(arg, str) else None
        if match is None:
            continue
        if "\n" in arg or "\r" in arg:
            return (
                f"deploytoken.{function} got {arg!r}, which is name=value with a line break in the value: "
                "values must be single lines."
            )
        key = match.group()[:-1]
        if key in seen:
            return f"deploytoken.{function} got {key} more than once: give each argument once."
        seen.add(key)
    return None


@_strict
def status():
    """
    Who holds the deploy token, since when, why, under which claim, and the commands to release it;
    with ``deploytoken: remind_after``, when the next reminder is due (``next_reminder``).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.status
        salt-run deploytoken.status --out=json
    """

    def show(config, store):
        ret = dict(commands.status(store), **overrides.status(store, __opts__["cachedir"]))
        if ret["held"]:
            ret["next_reminder"] = reminders.next_due(config, ret["since"])
        return ret

    ret = _run(show)
    # Without the ext_pillar, deploytoken.held on the minions cannot see the token and blocks every run.
    if "error" not in ret:
        pillars = __opts__.get("ext_pillar") or []
        ret["ext_pillar"] = any(isinstance(entry, dict) and "deploytoken" in entry for entry in pillars)
    return ret


@_strict
def acquire(reason="", wait=False, timeout=600, interval=10, name=None, force=False):
    """
    Take the deploy token. Refused (exit status 1) while someone else holds it, or while people wait
    for it in line (the refusal names the first); taking it again while you hold it changes nothing.
    Waiters are served in the order they joined the line.

    reason
        Why you deploy; shown to everyone who asks for the token.

    wait
        ``True`` to wait until the token is free, reporting progress on the runner's event stream.

    timeout
        With ``wait``: give up after this many seconds (default 600).

    interval
        With ``wait``: the longest sleep, in seconds, between two looks at the token (default 10). The
        embedded store (inotify on Linux) and PostgreSQL (``LISTEN``) wake a waiter as soon as the token
        changes; the Google store is read once per ``interval``.

    name
        Write this name in the token instead of yours (your login is recorded as the caller).

    force
        ``True`` to take a free token at once, ahead of the people waiting in line; needs ``reason``
        (shown to them in the token). It never takes a token someone holds (``release force=True`` does).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.acquire reason="upgrade postgres"
        salt-run deploytoken.acquire reason="upgrade postgres" wait=True timeout=1800
        salt-run deploytoken.acquire force=True reason="hotfix, agreed with Bob in chat"
    """
    return _run(
        lambda config, store: commands.acquire(
            store,
            _caller(config, store),
            config.people,
            reason=reason,
            name=name,
            wait=wait,
            timeout=timeout,
            interval=interval,
            force=force,
            progress=_waiter(config, store, name, timeout),
            notify=_fire,
        ),
        changes=True,
    )


@_strict
def release(note="", name=None, force=False, reason="", claim=None):
    """
    Give the deploy token back and add a row to the deploy history (one transaction). The answer says
    when (``released``) and how long it was held (``duration``, seconds).

    note
        What happened, e.g. "rebooted kingfisher-main"; kept in the history.

    name
        The name you took the token under, if you gave ``name=`` to acquire.

    force
        ``True`` to end someone else's claim; needs ``reason``. Recorded with who forced it.

    reason
        With ``force``: why the claim is ended.

    claim
        The claim id to end (see ``deploytoken.status``); refused if the token has changed hands since.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.release note="rebooted kingfisher-main"
        salt-run deploytoken.release force=True claim=3f9c0a1b2c3d4e5f reason="Alice is away, agreed in chat"
    """
    return _run(
        lambda config, store: commands.release(
            store,
            _caller(config, store),
            config.people,
            note=note,
            name=name,
            force=force,
            reason=reason,
            claim=claim,
            notify=_fire,
        ),
        changes=True,
    )


@_strict
def history(limit=10):
    """
    The latest rows of the deploy history, newest first. Each row's ``kind`` says what it is: ``holding``,
    ``forced`` (ended by someone else), ``override`` (``acquired`` its start, ``until`` its planned end,
    ``released`` its actual end, empty while it runs), ``override_cancelled``, ``setup_stopped`` (a setup
    stopped by a busy Kingfisher server).

    limit
        How many rows (default 10).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.history limit=20 --out=json
        salt-run deploytoken.history --out=table
    """
    return _run(lambda config, store: commands.history(store, limit))


@_strict
def report(since=None, path=None):
    """
    Write one self-contained HTML page of the token's life over a period: a timeline with one bar per
    holding (forced releases, overrides and setups stopped by a busy server marked), the median and
    longest holding, the time from a release to the next holder, each person's share, and the history
    rows. The page fetches nothing (inline CSS and SVG, no JavaScript); it holds every reason and note of
    the period, so it is readable by you only. Returns its path and the figures.

    since
        The start of the period: a duration back from now (``7d``, ``12h``; default ``30d``) or a UTC
        date or time (``2026-11-01``, ``2026-11-01T09:00:00Z``). The period ends now.

    path
        The file to write (default ``deploytoken-report.html`` in the current folder); an existing file is
        replaced only if it is an earlier report.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.report
        salt-run deploytoken.report since=7d path=/tmp/deploytoken-week.html
    """
    return _run(lambda config, store: report_page.write(store, since, path))


@_strict
def update_repos(repos=None):
    """
    Bring each deploy repository to its default branch and pull it with rebase. Nothing is stashed
    or discarded: uncommitted changes that block the switch, a rebase conflict (aborted, the
    repository left as it was), a detached HEAD, unpushed local commits, no remote or a remote that
    cannot be reached are each reported in one sentence. Exit status 1 if any repository has a problem.

    repos
        A list of absolute paths of git checkouts. Default: ``deploytoken: repos:`` from the master
        config, else the git checkouts among the master's file_roots and pillar_roots (a relative root:
        the checkout salt-run runs in).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.update_repos
        salt-run deploytoken.update_repos repos='["/srv/deploy", "/srv/deploy/pillar/private"]'
    """
    try:
        paths = _repo_paths(settings.from_opts(__opts__), repos)
        result = repositories.update_all(paths, progress=_progress)
    except SaltException as exc:
        return {"error": str(exc), "retcode": BAD_INPUT}
    # Each repository's own sentence was a progress report already: the answer sums them up.
    updated = model.counted(len(result["repos"]), "repository", "repositories")
    if result["ok"]:
        result["message"] = f"Updated {updated}, with no problem."
    else:
        result["message"] = f"Updated {updated}; {model.counted(len(result['problems']), 'has', 'have')} a problem:"
        result["retcode"] = 1
    return result


@_strict
def setup(targets=None, reason="", wait=False, consent=None, repos=None, tgt_type="glob", busy_args=None,
          timeout=600, interval=10, name=None, ssh=None):
    """
    The Setup of the deploy procedure in one command: update the deploy repositories (stops on any
    problem), ask ``targets`` whether Kingfisher is busy (stops when any is busy or does not answer,
    unless ``consent`` is given), then take the deploy token. Each step is reported on the runner's
    event stream; one summary is returned. Exit status 1 when stopped or refused, 2 on bad input.

    targets
        The Kingfisher minions to check with ``kingfisher.busy``, e.g. ``collect*``. Left out: no check.

    reason
        Why you deploy; written in the token and the history.

    wait
        ``True`` to wait for the token if someone else holds it (see ``deploytoken.acquire``).

    consent
        ``"<manager>: <why>"``: the data support manager who agreed to go ahead although Kingfisher
        is busy, and why. Recorded with the claim, so it shows in ``deploytoken.history``.

    repos
        The repositories to update, as for ``deploytoken.update_repos``.

    tgt_type
        How ``targets`` is matched (``glob`` by default, ``list``, ``compound``, ...).

    busy_args
        A mapping of arguments for ``kingfisher.busy``, e.g. ``'{"postgres": "always"}'``. Any other than
        ``postgres: always`` changes what the targets check (``users``, ``postgres: never``, a threshold,
        another Scrapyd), so it needs ``consent``, and is recorded with it in the claim's reason.

    timeout, interval
        With ``wait``, as for ``deploytoken.acquire``.

    name
        Write this name in the token instead of yours, as for ``deploytoken.acquire``.

    ssh
        ``True`` to ask ``targets`` from the salt-ssh roster (through Salt's SSH client) instead of a
        master's minions; default ``deploytoken:ssh`` (False).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.setup reason="upgrade postgres"
        salt-run deploytoken.setup targets='kingfisher*' ssh=True reason="upgrade postgres"
        salt-run deploytoken.setup targets='collect*' reason="upgrade postgres"
        salt-run deploytoken.setup targets='collect*' reason="new spider" consent="Dana Lee: crawl restarts fine"
    """
    return _run(
        lambda config, store: procedure.run(
            store,
            _caller(config, store),
            config.people,
            _repo_paths(config, repos),
            targets,
            tgt_type,
            reason,
            consent,
            busy_args,
            check_busy=_ssh_busy if _ssh(config, ssh) else _kingfisher_busy,
            progress=_progress,
            notify=_fire,
            name=name,
            wait=wait,
            timeout=timeout,
            interval=interval,
        ),
        changes=True,
    )


@_strict
def cleanup(note="", name=None):
    """
    The Cleanup of the deploy procedure: give the deploy token back with a note for the history
    (same as ``deploytoken.release``).

    note
        What happened, e.g. "rebooted kingfisher-main".

    name
        The name you took the token under, if you gave ``name=`` to setup.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.cleanup note="rebooted kingfisher-main"
    """
    return release(note=note, name=name)


def _repo_paths(config, repos):
    return repositories.default_paths(config, __opts__) if repos is None else repos


def _kingfisher_busy(targets, tgt_type, busy_args):
    """``kingfisher.busy`` on the matching minions: ``{minion: full return}``, empty if none match."""
    with salt.client.LocalClient(__opts__["conf_file"]) as client:
        # LocalClient prints to stdout when nothing matches, which would spoil --out=json.
        if not salt.utils.minions.CkMinions(client.opts).check_minions(targets, tgt_type)["minions"]:
            return {}
        return client.cmd(targets, "kingfisher.busy", kwarg=dict(busy_args), tgt_type=tgt_type, full_return=True,
                          timeout=__opts__.get("timeout", 5))


def _ssh(config, ssh):
    return config.ssh if ssh is None else model.check_flag(ssh, "ssh")


def _ssh_busy(targets, tgt_type, busy_args):
    """``kingfisher.busy`` on the matching roster targets through salt-ssh, in ``_kingfisher_busy``'s shape."""
    returns = _ssh_cmd(targets, tgt_type, "kingfisher.busy", dict(busy_args))
    return {target: {"ret": answer.get("return")} if isinstance(answer, dict) else answer
            for target, answer in returns.items()}


def _ssh_cmd(targets, tgt_type, fun, kwarg=None):
    """``fun`` on each matching roster target through salt-ssh, with that target's ``kingfisher:`` pillar.

    salt-ssh compiles the pillar only for the functions it wraps (state.apply, pillar.get, ...); a plain
    module call such as kingfisher.busy gets none. So this machine compiles each target's pillar, as salt-ssh
    does for state.apply, and hands the target its ``kingfisher:`` block as minion options, where
    ``config.get`` looks first. One salt-ssh call per target.
    """
    roster = salt.roster.Roster(__opts__, __opts__.get("roster", "flat")).targets(targets, tgt_type) or {}
    returns = {}
    for target in roster:
        settings = salt.pillar.get_pillar(__opts__, {}, target, saltenv="base").compile_pillar().get("kingfisher")
        opts = __opts__
        if isinstance(settings, dict):
            opts = dict(__opts__, ssh_minion_opts=dict(__opts__.get("ssh_minion_opts") or {}, kingfisher=settings))
        with salt.client.ssh.client.SSHClient(mopts=opts) as client:
            returns.update(client.cmd(target, fun, kwarg=kwarg or {}, tgt_type="list"))
    return returns


@_strict
def override(reason="", targets=None, minutes=None, cancel=False, id=None):
    """
    Let ``deploytoken.held`` pass on ``targets`` for ``minutes`` whoever holds the token, loudly: every
    guarded run there says ``OVERRIDE:``, the event ``deploytoken/override`` is fired, and the override is
    written to the token store's history (who, why, which targets, until when). Every master and operator
    sharing the store sees it in ``deploytoken.status`` and may cancel it; the guard honours it only on
    servers that obey that store. When the store cannot be reached, the override's row waits on this
    machine until ``deploytoken.flush``, and meanwhile works only for deployments run from here.

    reason
        Why, and who agreed; required, also to cancel.

    targets
        Minion ids or globs, separated by commas; default every minion.

    minutes
        How long the override lasts (default 60, at most 1440).

    cancel
        ``True`` to end the running overrides now (recorded in the history with who and why).

    id
        With ``cancel``: end only this override (its id is in ``deploytoken.status``).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.override reason="database down, agreed with Alice" targets='kingfisher*'
        salt-run deploytoken.override cancel=True reason="database back"
        salt-run deploytoken.override cancel=True id=override-0123456789abcdef reason="done"
    """
    return _run(
        lambda config, store: overrides.run(
            store, __opts__["cachedir"], _caller(config, store), config.people, reason=reason, targets=targets,
            minutes=minutes, cancel_all=cancel, notify=_fire, override_id=id,
        ),
        changes=True,
    )


@_strict
def migrate(to=None):
    """
    Copy the holder and the whole history from the store in use into the store ``to`` (configured in
    ``deploytoken:<to>:``), once: run it again and only what is missing is copied, every row being known by
    its claim id. Then switch ``deploytoken:backend`` to ``to`` in the master config.

    to
        The backend to copy into: ``postgres``, ``google`` or ``sqlite``.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.migrate to=postgres
    """
    if not isinstance(to, str) or not to:
        return {"error": "Say which store to copy into, e.g. salt-run deploytoken.migrate to=postgres.",
                "retcode": BAD_INPUT}

    def copy(config, store):
        target = stores.open_store(dataclasses.replace(config, backend=to))
        moved = moving.migrate(store, target)
        login = _caller(config, store)
        ended = overrides.end_copies(store, target, model.display_name(login, config.people), login)
        holder = f"the holder's claim {moved['holder']}" if moved["holder"] else "no holder (nobody holds the token)"
        running = (
            f" {len(ended)} running override(s) ({', '.join(record['id'] for record in ended)}) were copied as ended: "
            f"they keep running in {store.location} only, for the servers that obey it; once they obey {to}, make "
            "any still needed again with salt-run deploytoken.override." if ended else "")
        return dict(moved, source=store.location, target=target.location, overrides_ended=[
            record["id"] for record in ended], message=(
            f"Copied {moved['history_rows']} history row(s) and {holder} from {store.location} to "
            f"{target.location}.{running} Now set deploytoken:backend to {to} in the master config."))

    return _run(copy)


@_strict
def flush():
    """
    Write to the history the rows still spooled on this machine (an override's rows while the store was
    down; the Google backend also keeps a row locally when the Sheet could not be reached). A row whose
    claim id is already in the history is not written again. Exit status 1 while rows remain.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.flush
    """
    return _run(lambda config, store: commands.flush(
        store, overrides.deliver(__opts__["cachedir"], store)
    ))


@_strict
def doctor(targets="*", tgt_type="glob", ssh=None):
    """
    Check this operator's (or this master's) set-up and say, one line each, what is right and what to
    fix: the config files (one ``deploytoken:`` block, the ext_pillar on), in a clone of the deploy
    repository that it runs from the top folder, not under sudo, with every file of ``.salt/`` yours, the
    chat's webhook file (there, yours, mode 0600, a URL in it), the token store (readable, and shared by
    the team when deploying with salt-ssh), you in ``deploytoken:people`` with the key you log in with,
    and for each server: it answers (a salt-ssh failure is told as its fix), its sshd says which key
    logged in (``ExposeAuthInfo``), the busy check can read each Kingfisher source, and it obeys no other
    token store. Exit status 0 only when every line is ``ok``.

    targets
        The servers to check (default every one): roster targets with salt-ssh, else minions.

    tgt_type
        How ``targets`` is matched (``glob`` by default, ``list``, ...).

    ssh
        ``True`` to check the salt-ssh roster's servers instead of a master's minions; default
        ``deploytoken:ssh`` (False).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.doctor
        salt-run deploytoken.doctor targets='kingfisher*' ssh=True
    """
    try:  # a mistyped argument is bad input (exit status 2), not a finding about the set-up
        procedure.check_tgt_type(tgt_type)
        targets = procedure.check_targets(targets) or "*"
        if ssh is not None:
            ssh = model.check_flag(ssh, "ssh")
    except SaltException as exc:
        return {"error": str(exc), "retcode": BAD_INPUT}
    conf_file = __opts__.get("conf_file")
    files = checks.config_files(conf_file)
    block_file = checks.block_file(files, conf_file)
    findings = checks.deploytoken_blocks(files)
    findings.append(checks.ext_pillar(__opts__.get("ext_pillar"), block_file))
    findings += _clone_findings(conf_file)
    try:
        config = settings.from_opts(__opts__)
        ssh = _ssh(config, ssh)
        emails = checks.people_have_emails(config)
    except SaltException as exc:
        findings.append(checks.finding("problem", str(exc)))
        return _doctor_report(findings)
    findings.append(checks.chat(config.notify, __opts__.get("user")))
    store = identity = error = None
    try:
        store = stores.open_store(config)
        identity = store.identity
        store.read()
    except SaltException as exc:
        error = str(exc)
    findings += checks.store(config, store.location if store else None, identity, error,
                             ssh or _has_roster())
    login = _caller(config, store) if store and not error else model.login_of(__user__)
    findings.append(checks.person(login, config, block_file, ssh=ssh, emails=emails))
    entries = {}
    if ssh:
        home = checks.home_of_this_process()
        sudo = os.geteuid() == 0 and login != "root"  # ssh then reads root's ~/.ssh, not the person's
        entries = salt.roster.Roster(__opts__, __opts__.get("roster", "flat")).targets(targets, tgt_type) or {}
        for priv in sorted({str(entry.get("priv") or __opts__.get("ssh_priv") or "") for entry in entries.values()}):
            keys = checks.key_files(priv, home)
            findings.append(checks.login_keys(login, config, keys, home, sudo))
    try:
        answers = (_ssh_facts(targets, tgt_type) if entries else {}) if ssh else _minion_facts(targets, tgt_type)
    except (SaltException, OSError) as exc:
        answers = None
        findings.append(checks.finding("problem", f"The servers could not be asked: {exc}"))
    if answers == {}:
        where = "in the salt-ssh roster" if ssh else "among this master's accepted minions"
        findings.append(checks.finding("problem", f"No server matches {targets!r} {where}."))
    for name, facts in sorted((answers or {}).items()):
        findings += checks.target(name, facts, login, config, identity, ssh, entry=entries.get(name))
    return _doctor_report(findings)


def _clone_findings(conf_file):
    """In a clone of the team's deploy repository: run from its top folder, as yourself, with Salt's files
    in its ``.salt/`` all yours."""
    top = checks.clone_top(conf_file)
    if not top:
        return []
    cwd = os.getcwd()
    found = [checks.working_folder(top, cwd)]
    if str(__user__).startswith("sudo_"):
        found.append(checks.not_under_sudo(model.login_of(__user__)))
    elif os.geteuid() != 0:
        root_dir = os.path.abspath(__opts__.get("root_dir") or "/")
        if root_dir != "/":
            inside = os.path.commonpath([root_dir, cwd]) == cwd
            found.append(checks.salt_files_owner(root_dir, os.geteuid(), os.path.relpath(root_dir, cwd) if inside
                                                 else root_dir))
    return found


def _has_roster():
    try:
        return bool(salt.roster.get_roster_file(__opts__))
    except OSError:  # Salt's way of saying there is none
        return False


def _doctor_report(findings):
    from deploytoken import hints

    ret = checks.report(findings)
    ret["findings"] = [hints.sentence(line, _prefix()) for line in ret["findings"]]
    return ret


def _ssh_facts(targets, tgt_type):
    """``deploytoken.facts`` of the matching roster targets: ``{target: facts, or what came back instead}``."""
    return {target: _answer(answer) for target, answer in _ssh_cmd(targets, tgt_type, "deploytoken.facts").items()}


def _answer(answer):
    if isinstance(answer, dict) and "return" in answer:
        return answer["return"]
    if isinstance(answer, dict):  # salt-ssh could not run the function: what ssh or the shim said
        return answer.get("stderr") or answer.get("stdout") or answer
    return answer


def _minion_facts(targets, tgt_type):
    """``deploytoken.facts`` of the matching minions; a minion that did not answer has None."""
    with salt.client.LocalClient(__opts__["conf_file"]) as client:
        expected = salt.utils.minions.CkMinions(client.opts).check_minions(targets, tgt_type)["minions"]
        if not expected:
            return {}
        got = client.cmd(targets, "deploytoken.facts", tgt_type=tgt_type, timeout=__opts__.get("timeout", 5))
    return {minion: got.get(minion) for minion in expected}


# ---- Salt plumbing ----------------------------------------------------------------------------


def _run(action, changes=False):
    """Open the configured store and run ``action``; our errors become one sentence and exit 2.

    ``changes``: the action may change the holder, so the ext_pillar's read cache is dropped and the
    next state run sees the new holder at once.
    """
    try:
        config = settings.from_opts(__opts__)
        store = stores.open_store(config)
        return action(config, store)
    except SaltException as exc:
        return {"error": str(exc), "retcode": BAD_INPUT}
    finally:
        if changes:
            token_pillar.forget(__opts__)


def _caller(config, store):
    """The person calling: their login (``sudo`` honoured), or, when the store works with the person's own
    Google account and ``deploytoken: people:`` lists its email, the login of that account."""
    login = model.login_of(__user__)
    email = store.account_email
    return config.emails.get(email.casefold(), login) if email else login


def _prefix():
    """How this call was made: ``salt-run``, or ``salt-run -c FOLDER`` outside Salt's default folder."""
    typed = sys.argv[0] if sys.argv else ""
    return hints.prefix(__opts__.get("conf_file"), salt.syspaths.CONFIG_DIR,
                        hints.program(typed, shutil.which(hints.DEFAULT)))


def _progress(message):
    """Tell the person what is happening. The runner's event stream always gets it; salt-run's own
    output only with its default outputter, so that ``--out=json`` prints one document (the result),
    and the person still sees the progress on stderr."""
    message = hints.sentence(message, _prefix())
    log.info("deploytoken: %s", message)
    try:
        jid_event = __jid_event__
    except NameError:  # called outside a runner job (e.g. from another module)
        return
    if not __opts__.get("output"):
        # One plain line per report, printed by our outputter.
        jid_event.fire_event({"message": message, "outputter": "deploytoken"}, "progress")
        return
    jid_event.event.fire_event({"message": message}, salt.utils.event.tagify("progress", base=jid_event.base))
    print(message, file=sys.stderr)


def _fire(tag, data):
    # Sealed with the master's key: a minion may put any deploytoken/* event on the bus, and the chat
    # (see announce) must tell the runner's from those.
    data = seal.seal(data, token_pillar.master_key(__opts__), seal.event_purpose(tag))
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as event:
        event.fire_event(data, tag)


# ---- chat notifications and reminders ---------------------------------------------------------


@_strict
def remind():
    """
    Post the reminder that is due for a token held longer than ``deploytoken: remind_after``, once per
    ``remind_every``: running it often (a Salt schedule on the master, or cron) posts each reminder once.
    A reminder that could not be posted is tried again by the next run; the token is never changed.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.remind
    """
    return _run(lambda config, store: reminders.remind(config, store))


@_strict
def notify_me(name=None):
    """
    Be named in the chat message when the deploy token is released (as with ``acquire wait=True``).
    Exit status 1, with nothing noted, when no chat is configured (no ``deploytoken: notify:``): no
    message would ever name you.

    name
        Note this name instead of yours.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.notify_me
    """
    return _run(lambda config, store: waiting.ask(store, config, _caller(config, store), name))


@_strict
def announce(tag, data=None):
    """
    Post a ``deploytoken/*`` event to the chat of ``deploytoken: notify:``; the reactor calls this.
    Only events this master's runner fired (sealed with the master's key) are posted. Never fails: a
    post that could not be made is said in ``message``, and nothing about the token changes.

    tag
        The event's tag, e.g. ``deploytoken/released``.

    data
        The event's data.

    CLI Example:

    .. code-block:: yaml

        # reactor/deploytoken.sls
        deploytoken chat:
          runner.deploytoken.announce:
            - args:
              - tag: {{ tag }}
              - data: {{ data | json }}
    """
    try:
        config = settings.from_opts(__opts__)
        return events.announce(config, tag, data, token_pillar.master_key(__opts__))
    except SaltException as exc:
        return {"posted": False, "message": str(exc)}


def _waiter(config, store, name, timeout):
    """``progress`` for acquire: its first report means the caller waits, so the released message names
    them. It is called back from the core, where Salt's ``__user__`` may not be set: bind the caller now."""
    caller = _caller(config, store)
    noted = []

    def progress(message):
        if not noted:
            noted.append(True)
            try:
                waiting.add(config.cachedir, *commands.who(caller, name, config.people), seconds=timeout)
            except SaltException as exc:  # the wait goes on; only the name in the chat message is lost
                log.warning("deploytoken: %s", exc)
        _progress(message)

    return progress
