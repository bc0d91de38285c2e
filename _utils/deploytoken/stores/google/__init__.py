"""The Google store: the "Deploy token" Doc (``doc``, ``line``), the "Deploy history" Sheet (``history``),
their client (``client``), local files (``files``) and the store that joins them (``store``)."""
