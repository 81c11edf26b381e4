"""HTTP transport: connection limits and deadlines, the body limit, compressed request bodies, the API key, and
running uvicorn on a socket.

uvicorn handles SIGTERM and SIGINT gracefully: it stops accepting, lets requests in flight finish (at most
GRACE_SECONDS), then runs the app's shutdown, which stops the batchers.

Against slow or hoarding clients (slowloris): a request's headers and body must arrive within `request_timeout`
seconds of the connection opening or of the previous response (else 408 and the connection is closed); a body
earns one more second per MIN_RATE bytes received (as Apache's mod_reqtimeout), and time the server itself is not
reading (its budget of bodies in memory is full) does not count. One client address holds at most `per_client`
connections and the server `max_connections`; past either, the connection that has waited longest for a request
that has not begun (an idle one, or one still sending its headers) is closed to make room, so a new client, a health
check among them, gets in (without one, the new connection gets 503). uvicorn's own
`limit_concurrency` would instead answer every new request 503, health checks included, while slow connections
hold the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import socket
import time
import zlib

from ..errors import BadInput, Unsupported, UserError

GRACE_SECONDS = 30
MIN_RATE = 64 << 10  # bytes a second: a body arriving at least this fast earns the time it needs


class TooLarge(UserError):
    """A request body over the limit."""

    http_status = 413


class Unauthorized(UserError):
    """A missing or wrong API key."""

    http_status = 401


class BodyLimit:
    """ASGI middleware: a body over max_bytes gets 413, before it is read where its length is declared, else as
    soon as the bytes received pass the limit (chunked bodies)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = declared_length(dict(scope["headers"]).get(b"content-length"))
        if declared is not None and declared > self.max_bytes:
            body = json.dumps({"error": self._message()}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise TooLarge(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is over {self.max_bytes:,} bytes (--max-body-mb)"


class Busy(UserError):
    """The server is at a bound of its own (bodies in memory): the caller should retry shortly."""

    http_status = 503


class ByteBudget:
    """Bytes of request bodies held in memory at once, server-wide. A request waits for room before its body is
    read (its bytes wait unread in the kernel meanwhile), so many large bodies at once cannot exhaust memory; one
    that finds none within `wait` seconds gets Busy."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self._freed = asyncio.Condition()

    async def acquire(self, size: int, wait: float) -> int:
        """Room for `size` bytes (at most the capacity), waiting up to `wait` seconds; returns what to release."""
        size = min(size, self.capacity)
        async with self._freed:
            try:
                await asyncio.wait_for(self._freed.wait_for(lambda: self.used + size <= self.capacity), wait)
            except asyncio.TimeoutError as e:  # not the builtin TimeoutError before Python 3.11
                raise Busy(f"the server holds {self.used / 1e6:.0f} MB of other requests' bodies; retry "
                           "shortly") from e
            self.used += size
        return size

    async def release(self, size: int) -> None:
        async with self._freed:
            self.used -= size
            self._freed.notify_all()


def declared_length(value: bytes | str | None, digits: int = 15) -> int | None:
    """A length header's value: ASCII digits only (str.isdigit accepts '²' and other scripts' digits, which int()
    then refuses), at most `digits` of them; None where absent or malformed."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return int(value) if value is not None and re.fullmatch(f"[0-9]{{1,{digits}}}", value) else None


def decode_body(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """A request body without its Content-Encoding (gzip or deflate, as tritonclient sends), at most max_bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise Unsupported(f"Content-Encoding {encoding} is not supported; use gzip, deflate or none")
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)  # deflate in HTTP is the zlib format
    try:
        data = inflater.decompress(body, max_bytes + 1)  # bounded: a small bomb cannot expand past the limit
    except zlib.error as e:
        raise BadInput(f"the {encoding} request body is corrupt ({e})") from e
    if len(data) > max_bytes:
        raise TooLarge(f"the request body expands to over {max_bytes:,} bytes (--max-body-mb)")
    if not inflater.eof or inflater.unused_data:
        raise BadInput(f"the {encoding} request body is truncated or has trailing bytes")
    return data


def check_key(expected: str | None, authorization: str | None) -> None:
    """Refuse a request whose 'Authorization: Bearer KEY' is missing or wrong (compared in constant time)."""
    if expected is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("this server needs an API key: send 'Authorization: Bearer KEY'")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket: an address in use is one clear error before the models load, and a client that connects
    once the server says it is ready waits in the backlog instead of being refused while uvicorn starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it a keep-alive client
    # waits ~40 ms per response (Nagle's algorithm against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --host or --port") \
            from e
    return sock


class ConnectionGuard:
    """What uvicorn's HTTP/1.1 protocol gains (`guarded_protocol` mixes it in): a deadline on each request's arrival
    and caps on connections (see the module docstring); the class attributes are each server's limits."""

    request_timeout = 10.0
    per_client = 64
    max_connections = 1024
    by_host: dict = {}  # client address -> its open connections; each server's protocol class has its own

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.deadline, self.awaited, self.since = None, None, time.monotonic()
        self._await_request()
        self.host = self.client[0] if self.client else None
        mine = self.by_host.setdefault(self.host, set())
        if sum(not c.transport.is_closing() for c in mine) >= self.per_client:  # those closing are gone already
            self._make_room(mine)
        elif len(self.connections) > self.max_connections:
            self._make_room(c for c in self.connections if c is not self)
        mine.add(self)

    def _make_room(self, candidates) -> None:
        """Close the connection among `candidates` that has waited longest for a request that has not begun (idle,
        or still sending its headers); none: refuse this one. A body under way is left to its own deadline."""
        waiting = [c for c in candidates if getattr(c, "deadline", None) is not None and c.cycle is c.awaited
                   and not c.transport.is_closing()]
        if waiting:
            min(waiting, key=lambda c: c.since).transport.close()
        else:
            self._refuse(503, "too many connections are being served; retry shortly", b"retry-after: 1\r\n")

    def _await_request(self) -> None:
        """Start the clock on the next request (on a new connection, or after a response)."""
        self._cancel_deadline()
        self.awaited, self.since, self.earned = self.cycle, time.monotonic(), 0.0
        self.deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.deadline is not None and self.cycle is not self.awaited:  # the body of a request under way
            self.earned += len(data) / MIN_RATE
        self._check_arrived()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_request()
        super().on_response_complete()  # may start a pipelined request that has already arrived
        self._check_arrived()

    def _check_arrived(self) -> None:
        """A new request whose body has fully arrived is the app's now, no longer the client's to send."""
        if self.deadline is not None and self.cycle is not self.awaited and not self.cycle.more_body:
            self._cancel_deadline()

    def connection_lost(self, exc) -> None:
        self._cancel_deadline()
        mine = self.by_host.get(self.host, set())
        mine.discard(self)
        if not mine:
            self.by_host.pop(self.host, None)
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        now = time.monotonic()
        if self.flow.read_paused:  # the server is not reading this body (no room for it yet): the clock restarts
            self.since = now
        due = self.since + self.request_timeout + self.earned
        if now < due:  # the body earned more time by arriving at MIN_RATE or faster
            self.deadline = self.loop.call_later(due - now, self._too_slow)
            return
        if self.cycle is self.awaited or not self.cycle.response_started:
            self._refuse(408, f"the request did not arrive within {self.request_timeout:g} s (--request-timeout)")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answer without the app, then close: the request has not arrived, or cannot be taken."""
        body = json.dumps({"error": message}).encode()
        reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nconnection: close\r\n%s"
                             b"content-length: %d\r\n\r\n%s" % (status, reason, extra, len(body), body))
        self.transport.close()


def guarded_protocol(request_timeout: float, per_client: int, max_connections: int) -> type:
    """uvicorn's HTTP/1.1 protocol class with the connection guard and one server's limits."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return type("GuardedProtocol", (ConnectionGuard, H11Protocol), {
        "request_timeout": request_timeout, "per_client": per_client, "max_connections": max_connections,
        "by_host": {}})


def make_server(app, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                max_connections: int = 1024, request_timeout: float = 10.0, per_client: int = 64):
    """A uvicorn server for app; `.run(sockets=[sock])` serves until SIGTERM or SIGINT, then shuts down gracefully."""
    import uvicorn

    config = uvicorn.Config(app, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_config=None,
                            access_log=False, timeout_graceful_shutdown=GRACE_SECONDS,
                            http=guarded_protocol(request_timeout, per_client, max_connections))
    return uvicorn.Server(config)
