"""
Pending upgrades of the PostgreSQL packages, from the package cache, without listing every upgrade
of the system.

``pkg.list_upgrades`` asks apt to plan a whole ``dist-upgrade`` (seconds on any server); the question
here is only whether a ``postgresql*`` package would change. On a Debian-family system ``dpkg-query``
names the installed packages that match and ``apt-cache policy`` gives each one's installed and
candidate versions: argument lists, no shell, a clean environment, the system's own folders.

The answer depends only on what dpkg has installed, the package lists and apt's configuration, so it
is kept (``cache_path``) together with the state of those files and reused, with its age, until one
of them changes or ``MAX_AGE`` has passed.
"""

import json
import os
import re
import shutil
import subprocess
import time

from deploytoken import files
from deploytoken.kingfisher.errors import SourceError

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
TIMEOUT = 60
MAX_AGE = 3600
# What the candidate versions depend on: a change to any of these (an apt update, an install, a pin)
# changes a file's or a folder entry's size or time.
INPUTS = ("/var/lib/dpkg/status", "/var/lib/apt/lists", "/etc/apt/preferences", "/etc/apt/preferences.d",
          "/etc/apt/sources.list", "/etc/apt/sources.list.d", "/etc/apt/apt.conf.d")
# Debian package names (policy 5.6.1), with dpkg's :arch suffix for multi-arch packages.
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?")
# dpkg's Status-Abbrev: the second letter is the package's state; "n" not installed, "c" config files only.
NOT_INSTALLED = "nc"
CANNOT = "Pending package upgrades cannot be listed:"


def tools():
    """``(dpkg-query, apt-cache)`` of a Debian-family system, or None (then ask Salt's pkg module)."""
    found = tuple(shutil.which(name, path=SYSTEM_PATH) for name in ("dpkg-query", "apt-cache"))
    return found if all(found) else None


def _run(command, ok=(0,)):
    name = os.path.basename(command[0])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd="/",
                              stdin=subprocess.DEVNULL, env={"PATH": SYSTEM_PATH, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise SourceError(f"{CANNOT} {name} did not answer within {TIMEOUT} seconds.") from None
    except OSError as exc:
        raise SourceError(f"{CANNOT} {command[0]} cannot be run: {exc.strerror}.") from None
    if done.returncode not in ok:
        lines = done.stderr.strip().splitlines()
        detail = lines[0].rstrip(".") if lines else f"exit status {done.returncode}"
        raise SourceError(f"{CANNOT} {name} failed: {detail}.")
    return done.stdout


def installed(dpkg_query, pattern):
    """The installed packages whose names match ``pattern`` (a dpkg glob such as ``postgresql*``)."""
    # Exit status 1 with nothing listed: no package matches.
    out = _run([dpkg_query, "--show", "--showformat=${db:Status-Abbrev}\t${binary:Package}\n", "--", pattern],
               ok=(0, 1))
    names = []
    for line in out.splitlines():
        status, _, name = line.partition("\t")
        if len(status) >= 2 and status[1] not in NOT_INSTALLED and PACKAGE_NAME.fullmatch(name):
            names.append(name)
    return names


def parse_policy(text):
    """``{name: candidate}`` of the packages in ``apt-cache policy`` output whose candidate is not the
    installed version (an upgrade, or a pinned downgrade: either way the package would change)."""
    changes, name, versions = {}, None, {}
    for line in text.splitlines() + [""]:
        if line and not line[0].isspace() and line.endswith(":"):
            name, versions = line[:-1], {}
        elif name and line.strip().startswith(("Installed:", "Candidate:")):
            key, _, value = line.strip().partition(":")
            versions[key] = value.strip()
            if len(versions) == 2:
                if "(none)" not in versions.values() and versions["Installed"] != versions["Candidate"]:
                    changes[name] = versions["Candidate"]
                name = None
    return changes


def _inputs_state(paths):
    """The size and times of every input file, and of every entry of the input folders."""
    state = []
    for path in paths:
        try:
            entries = [path] + sorted(os.path.join(path, name) for name in os.listdir(path))
        except NotADirectoryError:
            entries = [path]
        except FileNotFoundError:
            state.append([path, None])
            continue
        for entry in entries:
            try:
                info = os.lstat(entry)
            except FileNotFoundError:
                continue
            state.append([entry, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino])
    return state


def _load(cache_path, inputs, now):
    try:
        with open(cache_path, encoding="utf-8") as handle:
            kept = json.load(handle)
        fresh = kept["inputs"] == inputs and 0 <= now - kept["checked"] < MAX_AGE
        upgrades = kept["upgrades"]
        if fresh and isinstance(upgrades, dict) and all(isinstance(value, str) for value in upgrades.values()):
            return kept
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no answer kept, or a damaged one: ask again
    return None


def pending(found_tools, pattern="postgresql*", cache_path=None, now=time.time, inputs=INPUTS):
    """
    ``{"upgrades": {name: version}, "checked", "age", "how"}`` for the installed packages matching
    ``pattern``; ``found_tools`` is ``tools()``. ``checked`` is when the package cache was asked (UTC),
    ``age`` how many seconds ago; a kept answer is reused only while ``inputs`` (paths) are unchanged.
    """
    dpkg_query, apt_cache = found_tools
    inputs = _inputs_state(inputs)
    kept = _load(cache_path, inputs, now()) if cache_path else None
    if kept is None:
        names = installed(dpkg_query, pattern)
        upgrades = parse_policy(_run([apt_cache, "-q", "policy", "--", *names])) if names else {}
        kept = {"inputs": inputs, "checked": now(), "upgrades": upgrades}
        if cache_path:
            try:
                files.private_dir(os.path.dirname(cache_path))
                files.write_json(cache_path, kept)
            except (OSError, files.ForeignFolder):
                pass  # the answer stands; the next check asks the package cache again
    return {"upgrades": kept["upgrades"], "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(kept["checked"])),
            "age": round(now() - kept["checked"], 1), "how": f"dpkg-query and apt-cache policy for {pattern}"}
