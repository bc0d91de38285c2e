"""
The decision behind the ``deploytoken.held`` state, on the minion (or salt-ssh target).

The state finds who runs the job (``job_login()`` from the minion's proc files, or the salt-ssh
operator named in the pillar), and ``decide()`` says pass or block from the ``deploytoken`` pillar,
with the sentence people read. Plain Python, and deliberately light: it loads no token store and no
Google client, since it runs in every state run on every minion.
"""

import json
import os

import salt.payload

import deploytoken_files as files
import deploytoken_model as model
import deploytoken_seal as seal
import deploytoken_sshkey as sshkey

ACQUIRE = "salt-run deploytoken.acquire reason='...'"
OVERRIDE = "salt-run deploytoken.override reason='...' targets='...'"
# The file in which a server remembers the token store its last deployment obeyed.
STORE_MEMORY = "/var/lib/deploytoken/store.json"


def job_login(proc_dir, pid, jid=None):
    """The login of the person running the job of process ``pid`` (job ``jid`` when known), from the
    minion's proc files.

    ``salt`` writes the publisher (``sudo_bob`` is bob); ``salt-call`` runs as the person at the
    terminal. A scheduled job has no person: None, and the guard blocks it. A minion with
    ``multiprocessing: False`` runs every job in a thread of its own process: there only the jid tells them apart,
    and without it the guard refuses to pick one.
    """
    job = _proc_entry(proc_dir, pid, jid)
    if job is None:
        return None
    if job.get("user"):
        return model.login_of(job["user"])
    if job.get("tgt") == "salt-call":
        return model.local_login()
    return None


def _proc_entry(proc_dir, pid, jid=None):
    try:
        names = [str(jid)] if jid else os.listdir(proc_dir)
    except OSError:
        return None
    found = [job for job in map(_load_job, (os.path.join(proc_dir, name) for name in names))
             if isinstance(job, dict) and job.get("pid") == pid]
    if len(found) > 1:
        raise model.DeploytokenError(
            f"{len(found)} jobs run in this minion's process (multiprocessing: False) and this one's jid is "
            "unknown, so the guard cannot tell who runs it: set multiprocessing: True in the minion config.")
    return found[0] if found else None


def _load_job(path):
    try:
        with open(path, "rb") as handle:
            return salt.payload.load(handle)
    except Exception:  # a job that just ended, or a file being written: not ours either way
        return None


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


def consent(pillar, minion, now=None, master_key=None):
    """The data support manager's consent recorded with the claim that holds the token (``salt-run
    deploytoken.setup consent=``), from token data the guard believes; None otherwise."""
    pillar = pillar if isinstance(pillar, dict) else {}
    if not pillar.get("held") or _trust_problem(pillar, minion, now or model.utcnow(), master_key):
        return None
    return pillar.get("consent") if isinstance(pillar.get("consent"), str) else None


def token_data(opts, grains, pillar):
    """``(data, master_key)``: the ``deploytoken`` token data to decide on and the master's public key
    to check it with. A minion asks its master for a fresh compile of its pillar (neither a ``pillar=`` of
    the job nor a saved snapshot counts); a salt-ssh target (no master key) has the data its operator's
    machine compiled for this very run, in ``pillar``."""
    path = os.path.join(opts.get("pki_dir") or "", "minion_master.pub")
    if not os.path.isfile(path):
        return (pillar or {}).get("deploytoken"), None
    if opts.get("file_client") == "local":
        raise model.DeploytokenError(
            "this run has no master to ask who holds the deploy token (salt-call --local?); run it through the "
            "master, or with salt-call without --local.")
    # Imported here: a salt-ssh target never needs it.
    import salt.pillar

    fresh = salt.pillar.get_pillar(opts, dict(grains), opts["id"], saltenv=opts.get("saltenv"),
                                   pillarenv=opts.get("pillarenv")).compile_pillar()
    return fresh.get("deploytoken"), path


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
