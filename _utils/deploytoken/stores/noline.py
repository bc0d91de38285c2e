"""
What a token store without a waiting line does while someone waits for the token: it has no line, and
waiting is sleeping until the next try. The PostgreSQL store keeps a real line and wakes on a release.
"""

import time


class NoWaitingLine:
    def enqueue(self, who):
        """Join the line of waiters; returns the ticket (None: there is no line)."""
        return None

    def ahead(self, ticket):
        """How many waiters are before ``ticket``: 0, every waiter may try at once."""
        return 0

    def dequeue(self, ticket):
        """Leave the line."""

    def waiting(self):
        """The waiters in arrival order: none are known."""
        return []

    def wait(self, seconds):
        """Return once the token may have changed hands: here, after ``seconds``."""
        time.sleep(seconds)
