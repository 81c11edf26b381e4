"""HTTP transport: the body limit, compressed request bodies, the API key, and running uvicorn on a socket.

uvicorn handles SIGTERM and SIGINT gracefully: it stops accepting, lets requests in flight finish (at most
GRACE_SECONDS), then runs the app's shutdown, which stops the batchers.
"""

from __future__ import annotations

import hmac
import json
import socket
import zlib

from ..errors import BadInput, Unsupported, UserError

GRACE_SECONDS = 30


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
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
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


def make_server(app, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                max_connections: int | None = None):
    """A uvicorn server for app; `.run(sockets=[sock])` serves until SIGTERM or SIGINT, then shuts down gracefully."""
    import uvicorn

    config = uvicorn.Config(app, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_config=None,
                            access_log=False, timeout_graceful_shutdown=GRACE_SECONDS,
                            limit_concurrency=max_connections)
    return uvicorn.Server(config)
