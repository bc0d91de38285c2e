"""
Moving the token from one store to another (``salt-run deploytoken.migrate to=...``): the holder and the
whole history, copied once. Run it again and it copies only what is missing, because every row is
known by its claim id.
"""

from deploytoken import model

# More rows than any team's history: "all of them" for stores that only know "the latest N".
ALL_ROWS = 10**9


def migrate(source, target):
    """Copy ``source``'s history (oldest first, so the order stays) and its holder into ``target``.

    Returns ``{"history_rows": rows added to target, "holder": the copied claim or None}``; StoreError if
    ``target`` is held under another claim (the history is copied all the same)."""
    if source.identity["id"] == target.identity["id"]:
        raise model.InputError(f"{source.location} is already the store in use: there is nothing to migrate.")
    rows = source.history(ALL_ROWS)
    added = sum(1 for row in reversed(rows) if target.append_history(row))
    holding = source.read()
    if holding is None:
        return {"history_rows": added, "holder": None}
    if holding.claim is None:
        raise model.StoreError(
            f"{holding.holder} holds the token in {source.location} without a claim id (the name was typed by "
            f"hand); {added} history row(s) were copied: ask them to release it and take it again with "
            "salt-run deploytoken.acquire, then migrate again."
        )
    current = target.acquire(holding)
    if current.claim != holding.claim:
        raise model.StoreError(
            f"{target.location} is already held by {current.holder} under claim {current.claim}; {added} "
            f"history row(s) were copied but not the holder ({holding.holder}, claim {holding.claim}): "
            "release it there, then migrate again."
        )
    return {"history_rows": added, "holder": holding.claim}
