"""A loopback incoming webhook for the chat tests: a real HTTP server on 127.0.0.1 that records each
post and answers with the statuses a test queues (then 200)."""

import http.server
import json
import threading
import time


class Webhook:
    def __init__(self):
        self.posts = []
        self.answers = []
        self.lock = threading.Lock()
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with webhook.lock:
                    status, headers = webhook.answers.pop(0) if webhook.answers else (200, {})
                    webhook.posts.append({"path": self.path, "status": status, "body": json.loads(body or b"null"),
                                          "at": time.monotonic()})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0SECRET/B0SECRET/xoxsecretpath"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *statuses, headers=None):
        """Answer the next posts with these statuses (then 200 again)."""
        with self.lock:
            self.answers.extend((status, dict(headers or {})) for status in statuses)

    def texts(self):
        """The text of each post answered 200, in order (Slack's and Mattermost's body)."""
        with self.lock:
            return [post["body"]["text"] for post in self.posts if post["status"] == 200]

    def clear(self):
        with self.lock:
            self.posts.clear()
            self.answers.clear()

    def wait_for(self, count, timeout=30):
        """The texts once at least ``count`` posts were answered 200, or whatever came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.texts()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.texts()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def dead_port():
    """A loopback URL on which nothing listens (the webhook is down)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()
    return f"http://127.0.0.1:{port}/hooks/T0SECRET/down"
