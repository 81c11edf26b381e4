"""One real uvicorn server on 127.0.0.1 (a free port) per test module, serving the session's digits model."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

KEY = "test-key-0123456789abcdef"


@dataclass
class Served:
    url: str
    models: list
    headers: dict


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """The digits model as `digits`, eager, two executors, a 0.5 MB body limit, behind an API key."""
    pytest.importorskip("fastapi")
    from gpuvision.config import ServeConfig
    from gpuvision.serve.app import build_app
    from gpuvision.serve.repository import open_models
    from gpuvision.serve.transport import listen, make_server

    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY + "\n")
    config = ServeConfig(models=[f"digits={tiny_model}"], runtime="eager", device="cpu", instances=2,
                         max_wait_ms=200, max_body_mb=0.5, api_key_file=str(key_file)).validate()
    models = open_models(config)
    sock = listen("127.0.0.1", 0)
    server = make_server(build_app(models, config, KEY))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start within 30 s"
    yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", models, {"Authorization": f"Bearer {KEY}"})
    server.should_exit = True
    thread.join(timeout=30)
