"""The PostgreSQL store: its settings (``settings``), connections and their errors (``connection``), its tables
(``schema``), the line of waiters (``waiting_line``) and the store that joins them (``store``)."""
