"""Serving model directories over HTTP: `gpuvision serve MODEL [MODEL...]`.

A request flows through LitServe's hooks, each in the module of its concern:

    decode_request   kserve_v2.decode_request (KServe v2 JSON or binary) | upload.decode_images (image files)
    batch            batcher.batch: concurrent requests of one model as one batch (batcher.Batcher)
    predict          the model's Runtime (repository.py chose it and warmed every batch bucket up)
    unbatch          batcher.unbatch: each request its rows
    encode_response  kserve_v2.encode_response | upload.encode_response

app.py holds the routes, transport.py the HTTP edges (body limit, compression, API key, uvicorn), metrics.py the
statistics. Needs the `serve` extra: pip install 'gpuvision[serve]'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..config import Access, ServeConfig
from ..errors import BadInput, NotFound, Unsupported, require

log = logging.getLogger(__name__)


def read_key(path: str) -> str:
    """The API key in a file (surrounding whitespace ignored); a warning if other users may read the file."""
    file = Path(path)
    require(file.is_file(), f"--api-key-file {path}: no such file", NotFound)
    if file.stat().st_mode & 0o077:
        log.warning("--api-key-file %s is readable by other users of this machine; `chmod 600 %s`", path, path)
    key = file.read_text(errors="replace").strip()
    require(len(key) >= 16, f"--api-key-file {path}: the key must be at least 16 characters", BadInput)
    return key


def server_url(host: str, port: int, tls: bool) -> str:
    """The URL clients reach the server at; an IPv6 address in brackets (RFC 3986: http://[::1]:8000)."""
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


def serve(config: ServeConfig, on_ready: Callable[[dict], None] | None = None, access: Access | None = None
          ) -> None:
    """Serve the models the config names until SIGTERM or SIGINT (the `gpuvision serve` command).

    on_ready gets {url, models: [{name, version, runtime, choice}]} once the models are warm, as serving starts."""
    try:
        from .app import build_app
        from .repository import open_models
        from .transport import listen, make_server
    except ModuleNotFoundError as e:
        raise Unsupported(f"gpuvision serve needs {e.name}: pip install 'gpuvision[serve]'") from e
    key = read_key(config.api_key_file) if config.api_key_file else None
    for flag, path in (("--ssl-certfile", config.ssl_certfile), ("--ssl-keyfile", config.ssl_keyfile)):
        require(path is None or Path(path).is_file(), f"{flag} {path}: no such file", NotFound)
    with listen(config.host, config.port) as sock:  # first: a taken port fails before the models load
        models = open_models(config, access)
        app = build_app(models, config, key)
        url = server_url(config.host, sock.getsockname()[1], bool(config.ssl_certfile))
        log.info("serving %s on %s (OpenAPI at /openapi.json; SIGTERM or Ctrl-C stops)",
                 ", ".join(m.name for m in models), url)
        if on_ready is not None:
            on_ready({"url": url, "models": [{"name": m.name, "version": m.version, "runtime": m.runtime.name,
                                              "choice": m.choice} for m in models]})
        # Connections are bounded as queued requests are (transport.py: past the bound, the slowest gives way).
        make_server(app, config.ssl_certfile, config.ssl_keyfile, 2 * config.max_queue + 64, config.request_timeout,
                    config.max_client_connections).run(sockets=[sock])


__all__ = ["read_key", "serve", "server_url"]
