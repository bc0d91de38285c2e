"""
The decision behind the ``deploytoken.held`` state, on the minion (or salt-ssh target).

The state finds who runs the job (``find_job()`` and ``login_of_job()`` from the minion's proc files,
or the salt-ssh operator named in the pillar), takes the token data to decide on (``token_data()``:
the job's own pillar when the master compiled it for this very job, else a fresh compile), and
``decide()`` says pass or block from it, with the sentence people read. Plain Python, and deliberately
light: it loads no token store and no Google client, since it runs in every state run on every minion.
"""

import json
import logging
import os

import salt.payload
import salt.utils.args

from deploytoken import files, model, sshkey
from deploytoken.guard import seal

ACQUIRE = "salt-run deploytoken.acquire reason='...'"
OVERRIDE = "salt-run deploytoken.override reason='...' targets='...'"
# The file in which a server remembers the token store its last deployment obeyed.
STORE_MEMORY = "/var/lib/deploytoken/store.json"

# The minion option in which salt-ssh carries the token data the operator's machine made for this run
# (the ``deploytoken`` roster puts it there), for the calls that are not state runs.
SSH_TOKEN_OPTION = "deploytoken_token"

# The jobs whose pillar Salt compiles on the master for the job itself as it starts (no initial pillar
# but salt-call's own, compiled as it started), and the arguments of theirs that cannot put anything into
# that pillar. Any other function (state.single, low, high, template, template_str, sls_id, request,
# run_request, pkg, orchestrate...) or argument (pillar, pillar_enc, pillarenv, localconfig...) sends the
# guard to the master for a fresh compile.
OWN_PILLAR_FUNS = ("state.apply", "state.sls", "state.highstate", "state.top")
OWN_PILLAR_KWARGS = ("test", "saltenv", "exclude", "queue", "concurrent")
# How long after its compile a job's own token data is still taken as it is, and how far the master's
# clock (and ``issued``'s whole seconds) may be from the minion's for that purpose: beyond either, the
# guard asks the master again, which costs time and nothing else.
OWN_PILLAR_AGE = 5
CLOCK_SLACK = 2

log = logging.getLogger(__name__)


def job_login(proc_dir, pid, jid=None):
    """The login of the person running the job of process ``pid`` (job ``jid`` when known), from the
    minion's proc files (``find_job`` and ``login_of_job``)."""
    return login_of_job(find_job(proc_dir, pid, jid))


def find_job(proc_dir, pid, jid=None):
    """The job of process ``pid`` (job ``jid`` when known) as the minion's proc file records it, with
    ``written``: when the minion wrote that file, as the job started. None when there is none.

    A minion with ``multiprocessing: False`` runs every job in a thread of its own process: there only the
    jid tells them apart, and without it the guard refuses to pick one.
    """
    try:
        names = [str(jid)] if jid else os.listdir(proc_dir)
    except OSError:
        return None
    found = [job for job in map(_load_job, (os.path.join(proc_dir, name) for name in names))
             if job.get("pid") == pid]
    if len(found) > 1:
        raise model.DeploytokenError(
            f"{len(found)} jobs run in this minion's process (multiprocessing: False) and this one's jid is "
            "unknown, so the guard cannot tell who runs it: set multiprocessing: True in the minion config.")
    return found[0] if found else None


def login_of_job(job):
    """The login of the person running ``job``: ``salt`` writes the publisher (``sudo_bob`` is bob);
    ``salt-call`` runs as the person at the terminal. A scheduled job has no person: None, and the
    guard blocks it."""
    if job is None:
        return None
    if job.get("user"):
        return model.login_of(job["user"])
    if job.get("tgt") == "salt-call":
        return model.local_login()
    return None


def _load_job(path):
    try:
        with open(path, "rb") as handle:
            written = os.fstat(handle.fileno()).st_mtime
            job = salt.payload.load(handle)  # which closes the file
    except Exception:  # a job that just ended, or a file being written: not ours either way
        return {}
    return dict(job, written=written) if isinstance(job, dict) else {}


def operator_login(pillar):
    """Under salt-ssh: the login of the operator the pillar names (None with a master)."""
    operator = pillar.get("operator") if isinstance(pillar, dict) else None
    if isinstance(operator, dict) and isinstance(operator.get("login"), str) and operator["login"]:
        return operator["login"]
    return None


def store_memory(opts):
    """Where this server remembers the store it obeys: ``deploytoken:store_memory`` in the minion config
    (or the salt-ssh roster's ``minion_opts``), else STORE_MEMORY."""
    return (opts.get("deploytoken") or {}).get("store_memory") or STORE_MEMORY


def remembered_store(path):
    """The store this server's last deployment obeyed (``{"id", "name", ...}``), or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # A damaged memory must not let a second store in: it names a store no pillar carries.
        return {"id": None, "name": f"an unreadable record ({path})"}
    return found if isinstance(found, dict) else {"id": None, "name": f"an unreadable record ({path})"}


def remember_store(path, store, who, now=None):
    """Note that this server now obeys ``store``, in a file only root can read."""
    files.private_dir(os.path.dirname(path))
    files.write_json(path, dict(store, since=model.isoformat(now or model.utcnow()), by=who))


def person(login, people):
    """``Alice Smith (alice)``, or just the login when it has no display name."""
    shown = model.display_name(login, people)
    return shown if shown == login else f"{shown} ({login})"


def decide(pillar, login, minion, test=False, now=None, ssh_auth=None, remembered=None, memory=STORE_MEMORY,
           master_key=None):
    """Pass or block a deployment by ``login`` on ``minion``, from the ``deploytoken`` pillar.

    The data must be as the ext_pillar wrote it (signed with the master's key when ``master_key``, the
    master's public key file, is given; else its digest), made for this minion moments ago. Under
    salt-ssh (the pillar names an operator) the operator is the person, and where sshd exposes the key
    that logged in (``ssh_auth``: fingerprints) that key must be the operator's. ``remembered`` is the
    store this server obeyed last (None: none yet).

    Returns ``{"result", "comment", "override", "remember"}``: ``override`` is the override that let
    the run through, ``remember`` the store to note once the run passes. In test mode a block is
    ``result: None``.
    """
    pillar = pillar if isinstance(pillar, dict) else {}
    people = pillar.get("people") or {}
    now = now or model.utcnow()
    blocked = None if test else False
    operator = operator_login(pillar)
    if operator:
        login = operator
    who = person(login, people) if login else "an unknown person"

    if not pillar or "held" not in pillar:
        return _ret(blocked, "The deploy token cannot be checked: this minion's pillar has no deploytoken data. "
                    "Add ext_pillar: [{deploytoken: {}}] to the master config, restart the master, and run "
                    "salt-run saltutil.sync_all.")
    if isinstance(pillar.get("override"), str):
        return _ret(blocked, "The pillar key deploytoken:override is no longer obeyed, so nothing may deploy: "
                    f"remove it, and ask for an override with {OVERRIDE}, which the history keeps.")
    problem = _trust_problem(pillar, minion, now, master_key)
    if problem:
        return _ret(blocked, problem)
    if operator and ssh_auth is not None:
        problem = _key_problem(pillar, operator, who, minion, ssh_auth)
        if problem:
            return _ret(blocked, problem)
    store = pillar.get("store") if isinstance(pillar.get("store"), dict) else None
    if store and remembered and remembered.get("id") != store.get("id"):
        return _ret(blocked, (
            f"{minion} obeys the deploy token of {remembered.get('name')}, but this run's token comes from "
            f"{store.get('name')}: two stores would each hand out their own token, so nobody may deploy this "
            f"way. Deploy with the store the team shares (deploytoken:backend google or postgres on every "
            f"operator's machine), or, if the team moved to {store.get('name')} on purpose, remove {memory} "
            f"on {minion} first."
        ))
    override = pillar.get("override")
    if isinstance(override, dict) and (model.parse_time(override.get("until")) or now) > now:
        problem = _override_store_problem(override, remembered or store, minion)
        if problem:
            return _ret(blocked, problem)
        verb = "would pass" if test else "PASSED"
        return dict(_ret(True, (
            f"OVERRIDE: the deploy token guard {verb} for {who} on {minion} without checking the token "
            f"({_holder_text(pillar, now)}): override {override.get('id')} by {override.get('by')} in "
            f"{(override.get('store') or {}).get('name')} until "
            f"{_clock(override.get('until'))}, because: {override.get('reason')!r}. "
            "End it with salt-run deploytoken.override cancel=True reason='...'."
        )), override=override)
    if pillar.get("error"):
        return _ret(blocked, f"The deploy token cannot be read, so nobody may deploy: {pillar['error']} "
                    "Check with salt-run deploytoken.status.")
    if not login:
        return _ret(blocked, "The deploy token guard cannot tell who runs this job (a scheduled job or an "
                    "unknown publisher), so it may not deploy. Run it with salt, salt-call or salt-ssh as the "
                    "holder of the token.")
    if not pillar.get("held"):
        return _ret(blocked, f"Nobody holds the deploy token, so {who} may not deploy on {minion}. Take it "
                    f"first with: {ACQUIRE}")
    holding = model.Holding(holder=pillar.get("holder") or "", login=pillar.get("login"))
    if model.same_person(holding, login, model.display_name(login, people)):
        passed = _ret(True, f"{who} holds the deploy token, since {model.since_text(pillar.get('since'), now)} "
                      f"(claim {pillar.get('claim')}).")
        if store and not test and (remembered or {}).get("id") != store.get("id"):
            passed["remember"] = store
        return passed
    return _ret(blocked, f"Deploy token is held by {_holder_text(pillar, now)}, so {who} may not deploy on "
                f"{minion}. Wait with salt-run deploytoken.acquire wait=True, or ask {pillar.get('holder')} "
                "to run salt-run deploytoken.release.")


def judge(opts, grains, pillar, job, test=False, environ=None):
    """The guard's whole check for the job ``job`` on this server: find the token data (``token_data``),
    the person and the key that logged in, then ``decide``; note the store once a run passes. What the
    ``deploytoken.held`` state and the executor both ask. DeploytokenError or OSError when the check
    itself cannot be made."""
    memory = store_memory(opts)
    data, master_key = token_data(opts, grains, pillar, job)
    ssh = operator_login(data) is not None
    decision = decide(
        data,
        None if ssh else login_of_job(job),
        opts["id"],
        test=test,
        ssh_auth=ssh_auth_keys(environ if environ is not None else os.environ) if ssh else None,
        remembered=remembered_store(memory),
        memory=memory,
        master_key=master_key,
    )
    if decision["remember"]:
        remember_store(memory, decision["remember"], decision["comment"])
    return decision


def consent(pillar, minion, now=None, master_key=None):
    """The data support manager's consent recorded with the claim that holds the token (``salt-run
    deploytoken.setup consent=``), from token data the guard believes; None otherwise."""
    pillar = pillar if isinstance(pillar, dict) else {}
    if not pillar.get("held") or _trust_problem(pillar, minion, now or model.utcnow(), master_key):
        return None
    return pillar.get("consent") if isinstance(pillar.get("consent"), str) else None


def master_key(opts):
    """The master's public key this minion keeps, or None (a salt-ssh target has none)."""
    path = os.path.join(opts.get("pki_dir") or "", "minion_master.pub")
    return path if os.path.isfile(path) else None


def token_data(opts, grains, pillar, job=None, now=None):
    """``(data, master_key)``: the ``deploytoken`` token data to decide on and the master's public key
    to check it with.

    A minion takes the data from the job's own ``pillar`` only when the master compiled it for this very
    job moments ago (``own_pillar_problem``); otherwise it asks its master for a fresh compile of its
    pillar, so that neither a ``pillar=`` of the job nor a saved snapshot counts. A salt-ssh target (no
    master key) has the data its operator's machine compiled for this very run, in ``pillar``."""
    path = _master_key(opts, pillar)
    if path is None:
        # A salt-ssh target: the state run's pillar, else what the operator's roster put into this run's
        # minion options (a function call that is not a state run carries no pillar to the target).
        return (pillar or {}).get("deploytoken") or opts.get(SSH_TOKEN_OPTION), None
    own = (pillar or {}).get("deploytoken")
    problem = own_pillar_problem(opts, job, own, now)
    if problem is None:
        log.info("deploytoken.held: the token data comes from job %s's own pillar, compiled by the master for it",
                 job.get("jid"))
        return own, path
    log.info("deploytoken.held: asking the master for a fresh pillar: %s", problem)
    return _fresh_pillar(opts, grains).get("deploytoken"), path


def master_pillar(opts, grains, pillar, job=None):
    """``(pillar, given)``: this minion's pillar as the master compiles it, without anything a command line
    adds, and why the job's own ``pillar`` was not taken as that (None: it was).

    The job's own pillar is the master's when the job is one the master compiles a pillar for as it starts,
    with no argument that could add to it (``pillar_args_problem``); otherwise the master is asked for a fresh
    compile. Under salt-ssh the operator's machine compiled the job's pillar: it is taken as it is."""
    if _master_key(opts, pillar) is None:
        return dict(pillar or {}), None
    problem = pillar_args_problem(opts, job)
    if problem is None:
        return dict(pillar or {}), None
    log.info("kingfisher guard: asking the master for its own pillar: %s", problem)
    return _fresh_pillar(opts, grains), problem


def _master_key(opts, pillar):
    """The master's public key file, None under salt-ssh (whose target has no master); DeploytokenError
    where neither holds (a minion config without the master's key, e.g. salt-call -c elsewhere) or where
    there is no master to ask (``salt-call --local``)."""
    path = os.path.join(opts.get("pki_dir") or "", "minion_master.pub")
    if not os.path.isfile(path):
        if _salt_ssh_run(opts, pillar):
            return None
        raise model.DeploytokenError(
            f"this minion has no master's public key ({path}), so the token data cannot be checked (salt-call "
            "--local, or -c with another configuration?); run it through the master, or with salt-call and the "
            "minion's own configuration.")
    if opts.get("file_client") == "local":
        raise model.DeploytokenError(
            "this run has no master to ask who holds the deploy token (salt-call --local?); run it through the "
            "master, or with salt-call without --local.")
    return path


def _salt_ssh_run(opts, pillar):
    """Whether this run came through salt-ssh: there the state run reaches the target as ``state.pkg`` (the
    operator's machine compiled it) and the token data names the operator, and any other function carries
    the token data the ``deploytoken`` roster made for it, naming the operator."""
    if opts.get("__cli") == "salt-ssh":
        return True
    # The job's pillar is Salt's loader-context wrapper of a dict, not a dict itself.
    data = (pillar or {}).get("deploytoken")
    if opts.get("fun") == "state.pkg" and operator_login(data) is not None:
        return True
    # Any other function: the token data the deploytoken roster put into this run's minion options.
    return operator_login(opts.get(SSH_TOKEN_OPTION)) is not None


def _fresh_pillar(opts, grains):
    # Imported here: a salt-ssh target never needs it.
    import salt.pillar

    fresh = salt.pillar.get_pillar(opts, dict(grains), opts["id"], saltenv=opts.get("saltenv"),
                                   pillarenv=opts.get("pillarenv")).compile_pillar()
    return fresh if isinstance(fresh, dict) else {}


def pillar_args_problem(opts, job):
    """Why the job's pillar might hold more than the master compiled for it (None: it cannot): the job
    is not one whose pillar the master compiles for it as it starts (``OWN_PILLAR_FUNS``), or it was given
    an argument other than ``OWN_PILLAR_KWARGS`` (a ``pillar=``, ``pillarenv=``...)."""
    if not isinstance(job, dict) or not job:
        return "this job's proc file was not found"
    if job.get("tgt") == "salt-call":
        # salt-call writes no arguments into its proc file: its own command line, which its parser keeps in
        # the opts, says.
        if opts.get("fun") != job.get("fun"):
            return "this salt-call's command line is unknown"
        fun, args = opts.get("fun"), opts.get("arg")
    else:
        fun, args = job.get("fun"), job.get("arg")
    if not isinstance(fun, str) or fun not in OWN_PILLAR_FUNS:
        return f"{fun} is not one of {', '.join(OWN_PILLAR_FUNS)}"
    return _arguments_problem(args)


def own_pillar_problem(opts, job, data, now=None):
    """Why the token data in the job's own pillar may not be taken as it is (None: it may).

    It may when the job is one whose pillar the master compiled for the job itself as it started
    (``OWN_PILLAR_FUNS``, from the minion's daemon or from salt-call) with no argument that could put
    anything into that pillar (only ``OWN_PILLAR_KWARGS``), and the data was issued after the job started
    and moments ago (``OWN_PILLAR_AGE``). A saved snapshot given back with ``pillar=`` fails the first,
    one put there any other way the second; the signature, the minion and the store are checked afterwards
    by ``decide`` whichever way the data came.
    """
    problem = pillar_args_problem(opts, job)
    if problem:
        return problem
    # salt-call compiled its pillar as it started; a daemon's job as the minion wrote its proc file.
    started = _process_start() if job.get("tgt") == "salt-call" else job.get("written")
    issued = model.parse_time((data or {}).get("issued") if isinstance(data, dict) else None)
    if issued is None or not isinstance(started, (int, float)):
        return "the job's start or the token data's time of issue is unknown"
    moment, now = issued.timestamp(), (now or model.utcnow()).timestamp()
    if not started - CLOCK_SLACK <= moment <= now + CLOCK_SLACK:
        return f"the token data was issued at {model.isoformat(issued)}, not while this job ran"
    if now - moment > OWN_PILLAR_AGE:
        return f"the token data was issued more than {OWN_PILLAR_AGE} s ago"
    return None


def _arguments_problem(args):
    """Why the job's arguments might carry pillar data (None: they cannot)."""
    if not isinstance(args, (list, tuple)):
        return "the job's arguments are unknown"
    for arg in args:
        if isinstance(arg, dict) and arg.get("__kwarg__") is True:
            names = [name for name in arg if name != "__kwarg__"]
        elif isinstance(arg, str):
            name = salt.utils.args.parse_kwarg(arg)[0]
            names = [name] if name else []
        else:
            return "the job has an argument that is neither a word nor a keyword"
        others = [name for name in names if name not in OWN_PILLAR_KWARGS]
        if others:
            return f"the job was given {', '.join(f'{name}=' for name in sorted(map(str, others)))}"
    return None


def _process_start():
    """When this process started (salt-call compiles its pillar as it starts), or None."""
    try:
        import psutil  # a dependency of Salt's, imported only where salt-call needs it

        return psutil.Process(os.getpid()).create_time()
    except Exception:
        return None


def _trust_problem(pillar, minion, now, master_key):
    """Why the token data cannot be believed (changed, unsigned, for another minion, too old), or None."""
    if master_key and not pillar.get("signature"):
        return ("The deploy token data in this run's pillar is not signed by the master, so nothing may deploy: "
                "update deploytoken on the master (salt-run saltutil.sync_all) and check that it can read its "
                "key master.pem.")
    if not seal.intact(pillar, master_key):
        return ("The deploy token data in this run's pillar was changed after the master wrote it (a pillar= on "
                "the command line?), so nothing may deploy.")
    issued = model.parse_time(pillar.get("issued"))
    max_age = pillar.get("max_age")
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)):
        max_age = None
    if pillar.get("minion") != minion:
        return (f"The deploy token data in this run's pillar was made for {pillar.get('minion')!r}, not for "
                f"{minion}, so nothing may deploy: run the deployment against {minion} itself.")
    if issued is None or max_age is None or not -max_age <= (now - issued).total_seconds() <= max_age:
        return (f"The deploy token data in this run's pillar was issued at {pillar.get('issued')}, not within "
                f"{model.human_duration(max_age)} of now ({model.isoformat(now)} on {minion}), so nothing may "
                "deploy: run it again, and check that the clocks of both machines are right (and that the "
                "master's pillar_cache is off).")
    return None


def _override_store_problem(override, obeyed, minion):
    """Why ``override`` cannot let a run through on a server that obeys ``obeyed`` (None: no store yet)."""
    made_in = override.get("store") or {}
    if not made_in.get("id"):
        return (f"Override {override.get('id')} names no token store (it was made by an earlier version), so it "
                f"lets nothing through: ask for a new one with {OVERRIDE}.")
    if obeyed and obeyed.get("id") != made_in["id"]:
        return (f"Override {override.get('id')} was made in {made_in.get('name')}, but {minion} obeys the deploy "
                f"token of {obeyed.get('name')}, so it lets nothing through: ask for the override in the store the "
                "team shares.")
    return None


def _key_problem(pillar, login, who, minion, ssh_auth):
    """Why the key that logged in to the target is not the salt-ssh operator's, or None."""
    owners = pillar.get("ssh_keys") or {}
    if not ssh_auth:
        return (f"sshd on {minion} exposes the key that logged in, but none was found for this login, so "
                f"{who} may not deploy: log in with your own SSH key.")
    others = [f"{key} ({owners[key]})" for key in ssh_auth if key in owners and owners[key] != login]
    if others:
        return (f"{who} runs salt-ssh, but the SSH key that logged in to {minion} belongs to someone else: "
                f"{', '.join(others)}, so {who} may not deploy: log in with your own key.")
    if not any(owners.get(key) == login for key in ssh_auth):
        return (f"The SSH key that logged in to {minion} ({', '.join(ssh_auth)}) is not listed for {who} in "
                f"deploytoken:people, so {who} may not deploy: add it under deploytoken: people: {login}: "
                "ssh_keys, or log in with a key listed there.")
    return None


def ssh_auth_keys(environ):
    """Fingerprints of the keys sshd says logged in (``ExposeAuthInfo yes``), or None without it."""
    path = environ.get("SSH_USER_AUTH")
    return sshkey.logged_in_keys(path) if path else None


def _clock(text):
    moment = model.parse_time(text)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else str(text)


def _ret(result, comment):
    return {"result": result, "comment": comment, "override": None, "remember": None}


def _holder_text(pillar, now):
    if pillar.get("error"):
        return "the token could not be read"
    if not pillar.get("held"):
        return "nobody holds the token"
    holding = model.Holding(
        holder=pillar.get("holder") or "someone",
        login=pillar.get("login"),
        since=pillar.get("since"),
        reason=pillar.get("reason") or "",
    )
    return model.describe(holding, now)
