"""The team's procedure: Setup in one command (``setup``), the deploy repositories (``repos``), and
``doctor`` with what each server tells it (``facts``)."""
