"""
A test probe that Salt loads from this folder as a runner (master ``runner_dirs``), an ext_pillar
(master ``pillar_dirs``) and a state module (minion ``states_dirs``), beside deploytoken however that
came in (an installed package or a file root). It is no part of deploytoken.

While it watches, it records every error of deploytoken's core created in its process, and it reports
which class each one was, whether that class is the one the core's module defines under its own name,
which files of ours the process holds under more than one module name, and whether psycopg or Google's
client was imported. ``tests/caught_errors.py`` reads the reports.

- runner: ``salt-run caughtprobe.through deploytoken.history limit=0`` calls the runner function, answers
  ``{"answer": ..., "report": ...}``;
- ext_pillar: ``ext_pillar: [{caughtprobe: watch}, {deploytoken: {}}, {caughtprobe: report}]`` adds
  ``caughtprobe:`` (the report of this compile) to the pillar;
- states: ``caughtprobe.watch`` first, ``caughtprobe.report`` last; the report is in the latter's ``changes``.
"""

import importlib
import os
import sys

# The bases of the core's errors: every error of ours passes through one of their __init__.
BASES = (("deploytoken.model", "DeploytokenError"), ("deploytoken.kingfisher.errors", "KingfisherError"))
# Imported by a master on SQLite, they would show that a store or client module was loaded eagerly.
HEAVY = ("psycopg", "psycopg_binary", "googleapiclient")
OURS = ("deploytoken.py", "kingfisher.py")

_created = []


def _watch():
    """From now on, note every error of the core created in this process."""
    del _created[:]
    for module, name in BASES:
        base = getattr(importlib.import_module(module), name)
        if "_probe_original" in base.__dict__:
            continue
        own = base.__dict__.get("__init__")

        def noting(self, *args, _base=base, _own=own, **kwargs):
            if _own is not None:
                _own(self, *args, **kwargs)
            else:  # the next __init__ in the instance's own MRO (CommandExecutionError's for Kingfisher's)
                super(_base, self).__init__(*args, **kwargs)
            _created.append(self)

        base._probe_original = own
        base.__init__ = noting


def _canonical(cls):
    """Whether ``cls`` is the very class the module named in its ``__module__`` holds under that name."""
    module = sys.modules.get(cls.__module__)
    return module is not None and getattr(module, cls.__qualname__, None) is cls


def _copies():
    """Our files that this process holds as more than one module: ``{file: [module names]}``."""
    by_file = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        path = os.path.realpath(path)
        parts = path.split(os.sep)
        if "deploytoken" in parts[:-1] or parts[-1] in OURS:
            by_file.setdefault(path, []).append(name)
    return {path: sorted(names) for path, names in by_file.items() if len(names) > 1}


def _report():
    return {
        "pid": os.getpid(),
        "raised": [
            {"class": f"{type(error).__module__}.{type(error).__qualname__}", "canonical": _canonical(type(error)),
             "message": str(error)}
            for error in _created
        ],
        "copies": _copies(),
        "imported": sorted(name for name in sys.modules if name.split(".")[0] in HEAVY),
    }


def through(fun, *args, **kwargs):
    """Runner: call the runner function ``fun`` while watching; its answer and the report."""
    _watch()
    kwargs = {key: value for key, value in kwargs.items() if not key.startswith("__")}
    answer = __salt__[fun](*args, **kwargs)
    return {"answer": answer, "report": _report()}


def ext_pillar(minion_id, pillar, step):
    """ext_pillar: ``watch`` before deploytoken's, ``report`` after it."""
    if step == "watch":
        _watch()
        return {}
    return {"caughtprobe": _report()}


def watch(name):
    """State: start watching."""
    _watch()
    return {"name": name, "result": True, "changes": {}, "comment": "Watching the core's errors."}


def report(name):
    """State: the report, in ``changes``."""
    return {"name": name, "result": True, "changes": {"report": _report()}, "comment": "The core's errors."}
