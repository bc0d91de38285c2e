"""
Errors of the core raised through the runner, a state and the ext_pillar, each checked to be caught as
that class: the test probe ``tests/probes/caughtprobe.py`` runs in the very process the error passes
through (salt-run, the minion's job, the master's worker or a pillar compile) and reports what it saw.

Used the same way whether deploytoken came from an installed package or a file root: merge
``MASTER_PROBES`` into the master config and ``MINION_PROBES`` into the minion config (Salt loads the probe
from its folder; no file root, no sync), put ``PROBE_SLS`` in a file root, then check each answer with
``caught``. The cases:

- runner, InputError: ``salt-run caughtprobe.through deploytoken.history limit=0 --out=json``
  (``RUNNER_INPUT``), an answer with ``retcode`` 2;
- runner, StoreError: the same through ``deploytoken.status`` with the store made unreadable
  (``unreadable_store``);
- state, InputError: ``salt MINION state.apply <PROBE_SLS> --out=json``, a Kingfisher guard naming a source
  that does not exist (result False); a guarded run while the store is unreadable is blocked with the
  StoreError's sentence, which the ext_pillar caught on the master;
- ext_pillar, StoreError: ``salt MINION pillar.items --out=json`` with the store unreadable: its
  ``deploytoken:error`` and, from the master's worker, ``caughtprobe:``;
- ext_pillar, InputError: ``salt-run -c <conf with BAD_SETTINGS> pillar.show_pillar MINION --out=json``.
"""

import contextlib
import os
import pathlib

PROBES = str(pathlib.Path(__file__).resolve().parent / "probes")

MASTER_PROBES = {
    "runner_dirs": [PROBES],
    "pillar_dirs": [PROBES],
    "ext_pillar": [{"caughtprobe": "watch"}, {"deploytoken": {}}, {"caughtprobe": "report"}],
}
MINION_PROBES = {"states_dirs": [PROBES]}

INPUT_ERROR = "deploytoken.model.InputError"
STORE_ERROR = "deploytoken.model.StoreError"
KINGFISHER_INPUT_ERROR = "deploytoken.kingfisher.errors.InputError"

RUNNER_INPUT = ("caughtprobe.through", "deploytoken.history", "limit=0")
RUNNER_INPUT_SENTENCE = "The limit must be a whole number"
NO_SUCH_SOURCE = "There is no Kingfisher source 'nosuch'"
# A master config whose deploytoken: settings the core refuses (merge it over the master's own).
BAD_SETTINGS = {"pillar_cache": -1}
BAD_SETTINGS_SENTENCE = "The deploytoken:pillar_cache must be a number of seconds"

PROBE_SLS = """\
watch the core's errors:
  caughtprobe.watch:
    - order: 1

no crawl of a source that does not exist:
  kingfisher.not_interrupted:
    - source: nosuch
    - order: 2

report the core's errors:
  caughtprobe.report:
    - order: 3
"""


def caught(report, cls, sentence):
    """Assert that ``report`` (the probe's) saw exactly one error of the core, of class ``cls`` (its full
    name) as the core's own module defines it, whose message contains ``sentence``, and that the process
    holds no file of ours as two modules. Returns the message."""
    raised = report["raised"]
    assert [error["class"] for error in raised] == [cls], report
    assert raised[0]["canonical"], f"{cls} raised here is not the class deploytoken imports: {report}"
    assert sentence in raised[0]["message"], report
    assert report["copies"] == {}, f"files of ours loaded twice in process {report['pid']}: {report['copies']}"
    return raised[0]["message"]


def state_report(states):
    """The probe's report from the return of ``PROBE_SLS`` (one minion's state dict)."""
    return next(ret["changes"]["report"] for key, ret in states.items() if key.startswith("caughtprobe_|-report"))


def state_comment(states, module):
    """The comment of the one state of ``module`` (e.g. ``kingfisher``) in a state return."""
    (found,) = [ret for key, ret in states.items() if key.startswith(f"{module}_|-")]
    return found["result"], found["comment"]


@contextlib.contextmanager
def unreadable_store(path, cachedir):
    """The SQLite store at ``path`` made unreadable (a folder in its place; the ext_pillar's read cache in
    ``cachedir`` dropped) for the block, then put back as it was."""
    path = pathlib.Path(path)
    saved = path.with_name(path.name + ".aside")
    cache = pathlib.Path(cachedir) / "deploytoken-pillar.json"
    if path.exists():
        os.rename(path, saved)
    path.mkdir()
    cache.unlink(missing_ok=True)
    try:
        yield
    finally:
        path.rmdir()
        if saved.exists():
            os.rename(saved, path)
        cache.unlink(missing_ok=True)
