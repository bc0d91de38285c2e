"""The guard: the pillar the master signs (``pillar``, ``seal``), overrides, and the decision on a server (``held``)."""
