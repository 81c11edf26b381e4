"""`gpuvision monitor URL`: a running server's models, production against test, as a table or JSON.

The client side of `GET /models` and `GET /models/{name}/monitor`, with the standard library only (no serve extra
needed to watch a server). Every failure is one UserError line: unreachable, refused key, unknown model.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from ..config import MonitorConfig
from ..errors import BadInput, NotFound, UserError
from . import read_key

MAX_RESPONSE = 64 << 20


def _get(config: MonitorConfig, path: str, key: str | None) -> dict:
    url = config.url.rstrip("/") + path
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=config.timeout) as response:  # http(s) only: validate() checked
            return json.loads(response.read(MAX_RESPONSE))
    except urllib.error.HTTPError as e:
        detail = _error_text(e)
        if e.code == 401:
            raise UserError(f"{config.url} needs an API key: give --api-key-file FILE ({detail})") from e
        raise (NotFound if e.code == 404 else UserError)(f"{url}: {e.code} {detail}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot reach {config.url} ({reason}); is `gpuvision serve` running there?") from e
    except ValueError as e:
        raise BadInput(f"{url} did not answer JSON; is it a gpuvision server?") from e


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read(1 << 16)).get("error", e.reason))
    except (ValueError, AttributeError):
        return str(e.reason)


def monitor_reports(config: MonitorConfig) -> list[dict]:
    """The monitor report of every model the server has (or of config.model)."""
    key = read_key(config.api_key_file) if config.api_key_file else None
    names = [config.model] if config.model else [m["name"] for m in _get(config, "/models", key)["models"]]
    return [_get(config, f"/models/{urllib.parse.quote(name, safe='')}/monitor", key) for name in names]


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(reports: list[dict]) -> str:
    """The reports as a text table, one row per model, with the notes below."""
    header = ["model", "version", "requests", "live acc (n)", "test acc", "p-value", "verdict", "psi conf",
              "psi bright", "psi class", "mean batch", "p50 ms", "p99 ms"]
    rows, notes = [], []
    for r in reports:
        a, d, s = r["accuracy"], r["drift"], r["serving"]
        rows.append([r["model"], r["version"], str(s["requests"]), f"{_num(a['live'])} ({a['labelled']})",
                     _num(a["test"]), "-" if a["p_value"] is None else f"{a['p_value']:.3g}", a["verdict"],
                     *(f"{_num(d[k]['psi'])} {d[k]['state']}" for k in ("confidence", "brightness", "classes")),
                     _num(s["mean_batch"], 2), _num(s["latency_ms"]["p50"], 1), _num(s["latency_ms"]["p99"], 1)])
        notes += [f"{r['model']}: {n}" for n in r["notes"]]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines + [f"note: {n}" for n in notes])
