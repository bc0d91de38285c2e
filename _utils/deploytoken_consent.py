"""
The data support manager's consent, ``"<manager>: <why>"`` on one line, as both the Setup and the
Kingfisher guards read it. Each caller words its own refusal, with an example of where it is written.
"""

import deploytoken_model as model


class Incomplete(ValueError):
    """The consent does not name both the manager and why; ``text`` is what was given, stripped."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text


def parse(consent):
    """
    ``"<manager>: <why>"`` with each part stripped, or None when no consent is given. Raises
    ``model.InputError`` for text that is not one printable line, ``Incomplete`` for a missing part.
    """
    if consent is None or consent == "":
        return None
    text = model.check_text(consent, "consent")
    manager, colon, why = text.partition(":")
    if not colon or not manager.strip() or not why.strip():
        raise Incomplete(text)
    return f"{manager.strip()}: {why.strip()}"
