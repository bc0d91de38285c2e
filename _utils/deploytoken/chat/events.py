"""
What the master does with a ``deploytoken/*`` event from its bus (the reactor calls the runner's
``announce``): check that the runner sent it, name the people waiting, and post it to the chat.
"""

import logging
import os

from deploytoken import model
from deploytoken.chat import notify, waiting
from deploytoken.guard import seal

log = logging.getLogger(__name__)

# Added by Salt's event bus after the runner sealed the event.
EVENT_STAMP = "_stamp"


def announce(settings, tag, data, master_key):
    """Post the message for one event from the master bus (the reactor calls this through the runner).

    Anyone whose minion may send events could fire ``deploytoken/released`` with any text, so only
    events the runner sealed with the master's key (``master_key``, the private key's path; the public
    key lies beside it) are posted. Without a master key (salt-ssh) nothing can be checked or posted.
    """
    if master_key is None:
        return {"posted": False, "message": "There is no master key to check events with: nothing is posted."}
    fields = {key: value for key, value in (data if isinstance(data, dict) else {}).items() if key != EVENT_STAMP}
    if not seal.intact(fields, os.path.splitext(master_key)[0] + ".pub", seal.event_purpose(tag)):
        sentence = f"The event {tag} was not sealed by this master's runner; it was not posted."
        log.warning("deploytoken: %s", sentence)
        return {"posted": False, "message": sentence}
    fields = {key: value for key, value in fields.items() if key not in seal.SEAL_KEYS}
    event = tag.removeprefix("deploytoken/")
    waiters = []
    if event in ("released", "forced"):
        try:
            waiters = waiting.take(settings.cachedir, fields.get("login"))
        except model.StoreError as exc:  # the message still goes out, without the names
            log.warning("deploytoken: %s", exc)
    text = notify.message(tag, fields, waiters)
    if text is None:
        return {"posted": False, "message": f"Nothing is posted for the event {tag}."}
    if settings.notify is None:
        return {"posted": False, "text": text, "message": "No deploytoken:notify block: the message was not posted."}
    return dict(notify.post(settings.notify, text), text=text)
