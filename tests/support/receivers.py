"""Real local servers that notifications are sent to in tests: an SMTP server (aiosmtpd), a JSON webhook
receiver (http.server) and a port that accepts connections but never answers."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """What the SMTP server received: one (envelope recipients, parsed message) per mail."""

    port: int
    mails: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    def html(self, index: int = 0) -> str:
        body = self.mails[index][1].get_body(("html", "plain"))
        assert body is not None, "the mail has no text part"
        return str(body.get_content())


class _Handler:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.mailbox.mails.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """A plain (no TLS, no login) SMTP server on a free localhost port."""
    from aiosmtpd.controller import Controller

    mailbox = Mailbox(port=free_port())
    controller = Controller(_Handler(mailbox), hostname="127.0.0.1", port=mailbox.port)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()


@dataclass
class Webhook:
    """What the webhook receiver got: the JSON body of every POST, and the path it was posted to."""

    port: int
    posts: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"


@contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    """An HTTP server on a free localhost port that records JSON POSTs and answers 200."""
    received: list[tuple[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append((self.path, json.loads(self.rfile.read(length) or b"null")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Webhook(port=server.server_address[1], posts=received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def silent_port() -> Iterator[int]:
    """A localhost port whose connections are accepted by the kernel but never answered, like a server
    that hangs (a blackholed address behaves the same for a client: it waits until its timeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])
