"""The team's chat: messages through a webhook (``notify``), reminders (``remind``), the reactor's side
(``events``) and who is waiting, to be named first (``waiting``)."""
