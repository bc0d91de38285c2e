"""
Commands printed in the runner's messages, made to be pasted as they are: a person who ran
``salt-run -c ~/salt deploytoken.acquire`` is told ``salt-run -c /home/alice/salt deploytoken.release
...``, since the same command without ``-c`` would ask another configuration (or none). The
sentences of the core say plain ``salt-run``; the runner passes what it returns and reports
through ``pasteable`` with the ``prefix`` of its own call, the one place the prefix is built.
"""

import os
import re
import shlex

DEFAULT = "salt-run"
# A command of ours inside a sentence; "salt-run -c ..." already names its folder.
SALT_RUN = re.compile(r"(?<![\w./-])salt-run (?=(?:deploytoken|saltutil)\.)")
# Where the runner's answers hold sentences (user data such as a reason is shown inside them, never rewritten
# on its own).
MESSAGE_KEYS = ("message", "error", "comment")


def program(typed, on_path):
    """How to call salt-run again: ``salt-run`` when the one on PATH (``on_path``, what ``shutil.which`` found,
    or None) is the one running (``typed``, its ``argv[0]``), else ``typed`` as it was typed, such as
    ``.venv/bin/salt-run`` (a bare ``salt-run`` would not be found, or would be another Salt)."""
    if not typed or os.path.basename(typed) != DEFAULT:
        return DEFAULT
    if on_path and os.path.realpath(on_path) == os.path.realpath(typed):
        return DEFAULT
    return shlex.quote(typed)


def prefix(conf_file, default_dir, run=DEFAULT):
    """``run`` (``program``), with ``-c FOLDER`` when the configuration file ``conf_file`` is not in
    ``default_dir``."""
    folder = os.path.dirname(os.path.abspath(conf_file)) if conf_file else default_dir
    if os.path.realpath(folder) == os.path.realpath(default_dir):
        return run
    return f"{run} -c {shlex.quote(folder)}"


def sentence(text, prefix):
    """``text`` with each ``salt-run deploytoken.`` / ``saltutil.`` command given ``prefix``."""
    if prefix == DEFAULT or not isinstance(text, str):
        return text
    return SALT_RUN.sub(lambda match: prefix + " ", text)


def pasteable(data, prefix):
    """``data`` (a runner's answer) with the commands in its messages given ``prefix``."""
    if prefix == DEFAULT:
        return data
    if isinstance(data, dict):
        return {
            key: sentence(value, prefix) if isinstance(value, str) and (
                key in MESSAGE_KEYS or str(key).endswith("_command")) else pasteable(value, prefix)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [pasteable(item, prefix) for item in data]
    return data
