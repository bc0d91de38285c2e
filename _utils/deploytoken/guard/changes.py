"""
Which Salt functions change a server, and so need the deploy token, and which only read it.

The procedure's rule is that whoever holds the token is the only person who changes any server, so the
executor (``_executors/deploytoken.py``) asks this table before every function a server runs. One table,
``READS``, names what only reads a server, module by module; everything else counts as a change,
including every function of a module the table does not know (fail closed: a new module's writer must
never pass because nobody listed it). A state run in test mode changes nothing, so it reads.

A team opens or closes functions in the configuration of the server (the minion config, or under
salt-ssh ``ssh_minion_opts`` / the roster's ``minion_opts``), never in pillar, which a command line
can set::

    deploytoken:
      reads: [cmd.run]            # anyone may run it: the team reads logs with it
      changes: [test.sleep]       # only the holder: wins over reads and over the table

Patterns are shell-style (``pkg.list_*``) and match the whole function name.
"""

import dataclasses
import fnmatch
import functools

# Module by module, the functions that only read a server. A module's "*" opens all of it.
READS = {
    "test": ("*",),
    "sys": ("*",),
    # pillar.ext is left out: it asks the master to run an external pillar of the caller's choosing.
    "pillar": ("items", "get", "item", "raw", "ls", "keys", "obfuscate", "data", "fetch", "file_exists",
               "filter_by"),
    "config": ("*",),
    "kingfisher": ("*",),
    "match": ("*",),
    "status": ("*",),
    "defaults": ("get", "merge", "deepcopy", "update"),
    "deploytoken": ("facts",),
    "grains": ("get", "item", "items", "ls", "filter_by", "fetch", "equals", "has_value"),
    "state": (
        "show_*", "sls_exists", "id_exists", "running", "list_disabled", "get_pauses", "check_request", "test",
    ),
    "saltutil": (
        "find_job", "find_cached_job", "running", "is_running", "refresh_*", "list_extmods",
    ),
    "pkg": (
        "list_*", "version", "latest_version", "available_version", "info_installed", "info_available",
        "upgrade_available", "version_cmp", "get_selections", "owner", "file_list", "file_dict", "get_repo",
        "show", "normalize_name", "parse_arch",
    ),
    "lowpkg": ("list_pkgs", "file_list", "file_dict", "info", "bin_pkg_info"),
    "file": (
        "file_exists", "directory_exists", "stats", "lstat", "statvfs", "access", "find", "search", "grep",
        "contains", "contains_regex", "contains_glob", "readdir", "readlink", "read", "seek_read", "is_link",
        "is_blkdev", "is_chrdev", "is_fifo", "is_hardlink", "diskusage", "check_hash", "get_hash", "get_sum",
        "get_mode", "get_user", "get_group", "get_uid", "get_gid", "get_selinux_context", "get_attributes",
        "list_backups", "list_backups_dir", "source_list", "extract_hash", "basename", "dirname", "join",
        "normpath", "path_exists_glob", "get_diff",
    ),
    "git": (
        "revision", "current_branch", "status", "rev_parse", "describe", "list_branches", "list_tags",
        "list_worktrees", "ls_remote", "is_worktree", "config_get", "config_get_regexp", "diff", "version",
        "remotes", "remote_get", "merge_base",
    ),
    "service": (
        "status", "available", "missing", "get_all", "get_enabled", "get_disabled", "enabled", "disabled",
        "show", "execs", "get_running", "get_static",
    ),
    "systemd_service": ("status", "available", "missing", "get_all", "get_enabled", "get_disabled", "enabled",
                        "disabled", "show", "execs", "get_running", "get_static"),
    "user": ("info", "list_users", "getent", "list_groups", "primary_group", "get_loginclass"),
    "group": ("info", "getent", "list_groups"),
    "cron": ("list_tab", "ls", "raw_cron"),
    "mount": ("active", "fstab", "is_mounted", "vfstab", "automaster", "filesystems"),
    "disk": ("usage", "inodeusage", "percent", "blkid", "dump", "iostat", "hdparms", "smart_attributes"),
    "archive": ("list", "is_encrypted"),
    "cp": ("list_*", "hash_file", "is_cached", "envs", "stat_file"),
    "network": (
        "interfaces", "interface", "interface_ip", "ip_addrs", "ip_addrs6", "hw_addr", "netstat", "active_tcp",
        "ping", "traceroute", "dig", "routes", "default_route", "get_hostname", "get_fqdn", "subnets",
        "subnets6", "ip_in_subnet", "in_subnet", "arp", "connect", "get_route", "ipaddrs", "is_loopback",
        "is_private", "calc_net", "convert_cidr",
    ),
    "ps": (
        "top", "pgrep", "get_pid_list", "proc_info", "psaux", "num_cpus", "cpu_percent", "cpu_times",
        "virtual_memory", "swap_memory", "disk_partitions", "disk_partition_usage", "disk_usage", "disk_io_counters",
        "total_physical_memory", "boot_time", "network_io_counters", "get_users", "lsof", "netstat", "ss", "status",
    ),
    "system": ("get_*",),
    "timezone": ("get_*", "zone_compare"),
    "locale": ("get_locale", "list_avail", "avail"),
    "environ": ("get", "has_value", "item", "items"),
    "hosts": ("list_hosts", "get_ip", "get_alias", "has_pair"),
    "sysctl": ("show", "get"),
    "kmod": ("lsmod", "available", "is_loaded", "check_available"),
    "mine": ("get", "valid"),
    "data": ("get", "has_key", "items", "keys", "values"),
}
# Modules every function of which changes a server. With the modules of READS, whose other functions are
# changes too, they are the modules the table knows; a function of any other module is refused as unknown,
# with how to open it.
WRITERS = ("cmd", "pip", "virtualenv", "postgres", "supervisord", "ssh", "shadow", "alternatives", "debconf",
           "iptables", "at", "npm", "gem", "docker", "rabbitmq", "nginx", "apache", "selinux", "firewalld", "ufw")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The team's own additions: ``reads`` opens functions, ``changes`` closes them (and wins)."""

    reads: tuple = ()
    changes: tuple = ()

    @classmethod
    def from_opts(cls, opts):
        """From the server's own configuration (``deploytoken:reads`` and ``deploytoken:changes``); a
        malformed list is a ValueError naming the key, so the executor refuses everything until it is fixed."""
        config = opts.get("deploytoken") if isinstance(opts, dict) else None
        config = config if isinstance(config, dict) else {}
        return cls(reads=_patterns(config.get("reads"), "reads"), changes=_patterns(config.get("changes"), "changes"))


def _patterns(value, key):
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ValueError(f"deploytoken:{key} in this server's configuration must be a list of function names "
                         f"or patterns, like [cmd.run, 'pkg.list_*'], not {value!r}.")
    return tuple(item.strip() for item in value)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``change``: whether ``fun`` needs the token; ``why``: a phrase for the refusal sentence."""

    change: bool
    why: str


def kind(fun, settings=Settings(), test=False):
    """Whether calling ``fun`` changes this server (a ``Verdict``). ``test``: the call runs in test mode."""
    if not isinstance(fun, str) or "." not in fun:
        return Verdict(True, f"{fun!r} is not a function name Salt knows")
    if _matches(fun, settings.changes):
        return Verdict(True, f"{fun} is listed under deploytoken:changes in this server's configuration")
    if _matches(fun, settings.reads):
        return Verdict(False, f"{fun} is listed under deploytoken:reads")
    module, _, name = fun.partition(".")
    if module == "state" and test:
        return Verdict(False, "a state run in test mode changes nothing")
    return _builtin(module, name)


@functools.lru_cache(maxsize=1024)
def _builtin(module, name):
    if module in WRITERS:
        return Verdict(True, f"{module}.{name} changes the server")
    patterns = READS.get(module)
    if patterns is None:
        return Verdict(True, f"{module}.{name} is not in deploytoken's table of functions, so it counts as a change "
                       "(if it only reads, open it with deploytoken:reads in the server's configuration)")
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
        return Verdict(False, f"{module}.{name} only reads")
    return Verdict(True, f"{module}.{name} changes the server")


def _matches(fun, patterns):
    return any(fnmatch.fnmatchcase(fun, pattern) for pattern in patterns)


def test_mode(kwargs, opts):
    """Whether a state function called with ``kwargs`` runs in test mode: ``test=True`` given, or the
    server's own ``test: True`` with no ``test=False``."""
    test = kwargs.get("test") if isinstance(kwargs, dict) else None
    if test is None:
        return opts.get("test") is True
    return test is True or (isinstance(test, str) and test.strip().lower() == "true")
