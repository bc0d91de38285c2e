"""
deploytoken: the deploy token, its guard and the Kingfisher busy checks, as plain Python beneath Salt's
modules (``_runners/``, ``_modules/``, ``_states/``, ``_pillar/``, ``_output/``), which only translate.

- ``model``, ``settings``, ``commands``, ``consent``, ``hints``, ``report``: the token, its vocabulary,
  what a person asks of it and the sentences they read;
- ``stores/``: where the token lives, one module (or folder) per backend;
- ``guard/``: the pillar the master signs, overrides, and the guard's decision on a server;
- ``kingfisher/``: whether the Kingfisher server is busy, one module per source;
- ``chat/``: chat messages, reminders, who is waiting;
- ``procedure/``: Setup, the deploy repositories, ``doctor``;
- ``loader``: where Salt finds the modules of an installed package.

Every module imports what it uses by its full name (``from deploytoken.stores import sqlite``), so a
process holds one copy of each, whether the package was installed or synced from a file root.
"""

__version__ = "0.9.0"
