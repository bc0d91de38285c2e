"""
The Google store's small local files in the master's cachedir: the noted claims, the history spool and
the read cache of the Doc, kept in a private folder and written atomically.
"""

import contextlib
import json
import os

from deploytoken import files, model


class LocalFiles:
    """The store's files in ``<cachedir>/deploytoken-google``, named after the Doc they belong to."""

    def __init__(self, cachedir, document_id):
        try:
            self.folder = files.private_dir(os.path.join(cachedir, "deploytoken-google"))
        except (files.ForeignFolder, OSError) as exc:
            raise model.StoreError(f"The Google store's local files cannot be kept safely: {exc}") from exc
        self.document_id = document_id

    def path(self, name):
        return os.path.join(self.folder, f"{self.document_id}.{name}")

    @contextlib.contextmanager
    def locked(self, name):
        with files.locked(self.path(name + ".lock")):
            yield

    def load_kept(self, name):
        """The spool and the noted claims keep what Google does not have yet: damaged means stop, never
        start afresh."""
        path = self.path(name)
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise model.StoreError(
                f"The file {path} is damaged ({exc}); it keeps deploy history rows or claims not yet written "
                "to Google, so it was left untouched: repair it, or move it aside once its rows are in the Sheet."
            ) from exc

    def save(self, name, data):
        files.write_json(self.path(name), data)
