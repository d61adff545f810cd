"""Local stand-ins for Apple's push service and Google's Wallet API.

`ApnsStandIn` is a real HTTP/2 server over TLS (hypercorn, ALPN h2) on
127.0.0.1 with a throwaway certificate: what our client sends is framed,
encrypted and negotiated exactly as it would be with api.push.apple.com.
It records every request and answers 200 unless a token was told otherwise.

`GoogleStandIn` speaks enough of the Wallet REST API (and the OAuth token
endpoint) to follow what we send: classes, objects, PATCHes, addMessage.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from hypercorn.asyncio import serve
from hypercorn.config import Config

from .servers import free_port


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str
    query: str = ""
    # (host, port) of the client: the same port means the same TCP connection.
    client: tuple | None = None

    def json(self):
        return json.loads(self.body or b"null")


class AsgiServer:
    """Run an ASGI callable with hypercorn in a background thread."""

    def __init__(self, app, *, certfile: str | None = None, keyfile: str | None = None):
        self.app = app
        self.port = free_port()
        self.tls = certfile is not None
        self.config = Config()
        self.config.bind = [f"127.0.0.1:{self.port}"]
        self.config.certfile = certfile
        self.config.keyfile = keyfile
        self.config.accesslog = None
        self.config.errorlog = None
        self.config.graceful_timeout = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.requests: list[Recorded] = []

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self):
        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._stop = asyncio.Event()
            self._ready.set()
            self._loop.run_until_complete(
                serve(self._asgi, self.config, shutdown_trigger=self._stop.wait)
            )
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self._ready.wait(5)
        self._wait_listening()
        return self

    def _wait_listening(self):
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("stand-in did not start")

    def stop(self):
        if self._loop and self._stop and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    async def _asgi(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        recorded = Recorded(
            method=scope["method"],
            path=scope["path"],
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=body,
            http_version=scope["http_version"],
            query=scope.get("query_string", b"").decode(),
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        self.requests.append(recorded)
        status, payload = self.app(recorded)
        data = b"" if payload is None else json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json")] if data else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


class ApnsStandIn(AsgiServer):
    """Answers POST /3/device/<token> like APNs: 200, or what a token was scripted to get."""

    def __init__(self, certfile: str, keyfile: str):
        super().__init__(self.handle, certfile=certfile, keyfile=keyfile)
        # token -> list of (status, reason) to answer in turn; then 200.
        self.script: dict[str, list[tuple[int, str | None]]] = defaultdict(list)

    def answer(self, token: str, *responses: tuple[int, str | None]) -> None:
        self.script[token].extend(responses)

    def handle(self, request: Recorded):
        token = request.path.rsplit("/", 1)[-1]
        if self.script.get(token):
            status, reason = self.script[token].pop(0)
            if status == 410:
                return status, {"reason": reason or "Unregistered",
                                "timestamp": int(time.time() * 1000)}
            return status, {"reason": reason} if reason else None
        return 200, None

    def pushes(self, token: str | None = None) -> list[Recorded]:
        return [r for r in self.requests
                if r.path.startswith("/3/device/") and (token is None or r.path.endswith(token))]


@dataclass
class GoogleState:
    classes: dict[str, dict] = field(default_factory=dict)
    objects: dict[str, dict] = field(default_factory=dict)
    messages: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    tokens_issued: int = 0


class GoogleStandIn(AsgiServer):
    """Wallet REST API under /walletobjects/v1 and an OAuth token endpoint at /token."""

    NOTIFY_LIMIT = 3

    def __init__(self):
        super().__init__(self.handle)
        self.state = GoogleState()

    @property
    def api_url(self) -> str:
        return f"{self.url}/walletobjects/v1"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def handle(self, request: Recorded):
        if request.path == "/token":
            self.state.tokens_issued += 1
            return 200, {"access_token": f"token-{self.state.tokens_issued}",
                         "expires_in": 3600, "token_type": "Bearer"}
        if not request.headers.get("authorization", "").startswith("Bearer token-"):
            return 401, {"error": {"code": 401}}
        path = request.path.removeprefix("/walletobjects/v1/")
        parts = path.split("/")
        kind = parts[0]
        store = self.state.classes if kind == "loyaltyClass" else self.state.objects
        if request.method == "POST" and len(parts) == 1:
            body = request.json()
            if body["id"] in store:
                return 409, {"error": {"code": 409, "message": "exists"}}
            store[body["id"]] = body
            return 200, body
        if request.method == "PATCH" and len(parts) == 2:
            if parts[1] not in store:
                return 404, {"error": {"code": 404}}
            store[parts[1]].update(request.json())
            return 200, store[parts[1]]
        if request.method == "POST" and len(parts) == 3 and parts[2] == "addMessage":
            if parts[1] not in self.state.objects:
                return 404, {"error": {"code": 404}}
            message = request.json()["message"]
            notified = [m for m in self.state.messages[parts[1]]
                        if m["messageType"] == "TEXT_AND_NOTIFY"]
            if message["messageType"] == "TEXT_AND_NOTIFY" and len(notified) >= self.NOTIFY_LIMIT:
                return 429, {"error": {"code": 429, "message": "QuotaExceededException"}}
            self.state.messages[parts[1]].append(message)
            return 200, {"resource": self.state.objects[parts[1]]}
        return 400, {"error": {"code": 400, "message": f"unexpected {request.method} {path}"}}

    def calls(self, method: str, prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method
                and r.path.removeprefix("/walletobjects/v1/").startswith(prefix)]
