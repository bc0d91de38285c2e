"""
Where Salt finds this package's modules once it is installed: the ``salt.loader`` entry point.

The wheel carries the repository's ``_modules/``, ``_states/``, ``_runners/``, ``_pillar/``, ``_output/``,
``_executors/`` and ``_roster/`` as ``deploytoken/shells/<kind>``; from a checkout (``pip install -e .``)
they are the checkout's own folders. Salt's thin for salt-ssh takes the whole package folder with this
entry point, so from a wheel the same folders travel to the targets; from an editable checkout the folder
is ``_utils/deploytoken`` alone, and the targets get no modules.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {"modules": "_modules", "states": "_states", "runners": "_runners", "pillar": "_pillar", "output": "_output",
         "executors": "_executors", "roster": "_roster"}


def salt_dirs():
    """``{kind: [folder]}`` for each kind of Salt module this package has."""
    found = {}
    for kind, folder in KINDS.items():
        for path in (os.path.join(HERE, "shells", kind), os.path.join(HERE, "..", "..", folder)):
            if os.path.isdir(path):
                found[kind] = [os.path.normpath(path)]
                break
    return found
