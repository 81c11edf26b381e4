"""One real uvicorn server on 127.0.0.1 (a free port) per test module, serving the session's digits model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from helpers import serving

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

    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY + "\n")
    config = ServeConfig(models=[f"digits={tiny_model}"], runtime="eager", device="cpu", instances=2,
                         max_wait_ms=200, max_body_mb=0.5, api_key_file=str(key_file)).validate()
    with serving(config, KEY) as (url, models):
        yield Served(url, models, {"Authorization": f"Bearer {KEY}"})
