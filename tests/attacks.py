"""The attack corpus for `gpuvision serve` (issue 22): a server process to attack, and attacks bounded in count and
time, each returning what it saw. tests/e2e/test_serve_attacks.py asserts on them; benchmarks/serve_attacks.py
reports them.

    server = start_server({"digits": dir}, root, "--request-timeout", "5")
    checks, closed_after = health_during(server, 60, lambda: slowloris(server))
    idle, peak, (checks, statuses) = peak_rss(server, lambda: health_during(server, 300,
                                                                            lambda: upload_attack(server)))

The slowloris attacker is a process of its own (its sockets and loops do not share this process's interpreter
with the health checks) and connects from 127.0.0.2, another loopback address than the checks' 127.0.0.1: a
per-client connection cap applies to it, not to them. Peak RSS is the server's VmHWM, reset before an attack.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def model_dir(root: Path, size: int, channels: int) -> Path:
    """An untrained narrow fastnet model directory for `size` x `size` inputs (nothing is trained)."""
    from gpuvision.artifact import Inference, Manifest, SplitRecord, save_weights, write_manifest
    from gpuvision.data.input_spec import InputSpec
    from gpuvision.models import create_model

    root.mkdir(parents=True)
    args = {"num_classes": 10, "in_channels": channels, "image_size": size, "widths": [8, 8, 8]}
    save_weights(root / "model.safetensors", create_model("fastnet", **args))
    (root / "split.json").write_text(json.dumps({"source_fingerprint": "-", "train": [], "val": [], "test": []}))
    manifest = Manifest(format="safetensors", weights="model.safetensors", architecture={"name": "fastnet",
                        "args": args}, classes=[str(i) for i in range(10)],
                        input=InputSpec((size, size), channels, (128.0,) * channels, (64.0,) * channels),
                        split=SplitRecord("split.json", "-", "-", {}), inference=Inference("eager", "fp32"))
    write_manifest(root, manifest, ["model.safetensors", "split.json"])
    return root


class Server:
    """A `gpuvision serve` process: requests on fresh connections, its RSS, its stderr log."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, float]:
        """Status and seconds of a GET."""
        started = time.perf_counter()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            return connection.getresponse().status, time.perf_counter() - started
        finally:
            connection.close()

    def post(self, path: str, body: bytes, headers: dict, timeout: float = 120) -> tuple[int, dict]:
        """Status and JSON answer; status 0 where the server closed the connection before the body was sent (its
        request timeout, when the body does not arrive in time)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            payload = response.read()
            return response.status, json.loads(payload) if payload.startswith(b"{") else {}
        except (ConnectionResetError, BrokenPipeError):
            return 0, {}
        finally:
            connection.close()

    def rss(self, field: str = "VmRSS") -> int:
        """Bytes of the server's resident memory now (VmRSS), or at its peak since the last reset (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) << 10
        raise AssertionError(f"no {field} for the server")

    def reset_peak(self) -> None:
        """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(30)


def start_server(models: dict[str, Path], root: Path, *flags: str, src: Path = SRC) -> Server:
    """`gpuvision serve NAME=DIR ...` on 127.0.0.1, any free port, eager on the CPU, one torch thread; once ready.
    `src`: the gpuvision to run (this checkout's, or another's to compare)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    log = root / "serve-stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe nobody reads, which could fill and stall the server
        process = subprocess.Popen([sys.executable, "-m", "gpuvision", "serve",
                                    *(f"{name}={path}" for name, path in models.items()), "--port", "0",
                                    "--device", "cpu", "--runtime", "eager", "--json", *flags],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    line = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(240)
    if not (line and line[0]):
        process.kill()
        raise RuntimeError(f"no ready line (exit {process.poll()}): {log.read_text()[-2000:]}")
    return Server(process, json.loads(line[0])["url"], log)


def health_during(server: Server, seconds: float, attack: Callable[[], object]
                  ) -> tuple[list[tuple[int, float]], object]:
    """Run attack() in a thread (its failure is the caller's) while checking health and readiness every 0.2 s;
    each check's (status, seconds), and what attack() returned."""
    with ThreadPoolExecutor(1) as pool:
        attacking = pool.submit(attack)
        checks, deadline = [], time.monotonic() + seconds
        while not attacking.done() and time.monotonic() < deadline:
            checks += [server.get(path) for path in ("/v2/health/live", "/v2/health/ready")]
            time.sleep(0.2)
        return checks, attacking.result(timeout=120)


def peak_rss(server: Server, run: Callable[[], object]) -> tuple[int, int, object]:
    """The server's RSS before run(), its peak during it, and what run() returned."""
    idle = server.rss()
    server.reset_peak()
    result = run()
    return idle, server.rss("VmHWM"), result


# ---------------------------------------------------------------- slow connections

SLOWLORIS = """
import json, socket, sys, time
host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
opened, closed_after = {}, []

def connect():
    sock = socket.create_connection((host, port), timeout=5, source_address=("127.0.0.2", 0))
    sock.sendall(b"GET /v2/health/live HTTP/1.1\\r\\nHost: x\\r\\n")
    sock.setblocking(False)
    opened[sock] = time.monotonic()
    return sock

sockets, end = [connect() for _ in range(count)], time.monotonic() + seconds
while time.monotonic() < end:
    for i, sock in enumerate(sockets):
        try:
            sock.recv(4096)  # an answer (408, 503) or the end: the server is done with it
        except BlockingIOError:
            try:
                sock.send(b"X")  # one more byte of a header line that never ends
                continue
            except OSError:
                pass
        except OSError:
            pass
        closed_after.append(time.monotonic() - opened.pop(sock))
        sock.close()
        sockets[i] = connect()
    time.sleep(0.5)
print(json.dumps(closed_after))
"""


def slowloris(server: Server, count: int = 200, seconds: float = 15) -> list[float]:
    """`count` connections from 127.0.0.2 sending their headers a byte at a time for `seconds`, each reopened when
    the server closes it; how long each closed one had been open."""
    proc = subprocess.run([sys.executable, "-c", SLOWLORIS, server.host, str(server.port), str(count), str(seconds)],
                          capture_output=True, text=True, timeout=seconds + 120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


# ---------------------------------------------------------------- uploads and JSON bodies


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def multipart(files: list[bytes]) -> tuple[bytes, dict]:
    boundary = "gpuvision-attack"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{i}.png\"\r\n"
             f"Content-Type: image/png\r\n\r\n".encode() + blob + b"\r\n" for i, blob in enumerate(files)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"}


def pixel_bomb() -> bytes:
    """A grey PNG of 8192 x 8192 (67 Mpx) in some 65 kB."""
    return png(np.zeros((8192, 8192), np.uint8))


def largest_accepted() -> bytes:
    """A grey PNG of 4096 x 4096 (16 Mpx): the most pixels one image may have for a small model."""
    return png(np.zeros((4096, 4096), np.uint8))


def upload_attack(server: Server, model: str = "digits", each: int = 16) -> list[int]:
    """`each` requests of 64 pixel bombs (2 MB each) and `each` of 4 images of the largest accepted size, all at
    once; their statuses, in that order."""
    bombs, accepted = multipart([pixel_bomb()] * 64), multipart([largest_accepted()] * 4)
    with ThreadPoolExecutor(2 * each) as pool:
        jobs = [pool.submit(server.post, f"/models/{model}/predict", *body) for body in [bombs] * each + [accepted]
                * each]
        return [job.result()[0] for job in jobs]


JSON_HEAD = b'{"inputs": [{"name": "input", "datatype": "UINT8", "shape": [64, 128, 128, 3], "data": ['


def json_attack(server: Server, model: str = "big", clients: int = 32, typed: int = 4) -> dict[str, int]:
    """`clients` JSON bodies at once for a 128 x 128 x 3 model: 9.8 MB each with far more values than the model
    takes, but for `typed` of 6.3 MB, the most it takes, whose last value is a string. How each was answered: 413
    (counted before parsing), 400 (typed, after parsing), 503 (no room in the server's budget of bodies, retry),
    or closed (not arrived within the request timeout)."""
    over = JSON_HEAD + b"0," * 4_900_000 + b"0]}]}"
    largest = JSON_HEAD + b"0," * (64 * 128 * 128 * 3 - 1) + b'"0"]}]}'
    bodies = [over] * ((clients - typed) // 2) + [largest] * typed
    bodies += [over] * (clients - len(bodies))
    with ThreadPoolExecutor(clients) as pool:
        jobs = [pool.submit(server.post, f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
                for body in bodies]
        results = [job.result() for job in jobs]
    return {"counted_413": sum(s == 413 and "more values" in a["error"] for s, a in results),
            "typed_400": sum(s == 400 and "only integers" in a["error"] for s, a in results),
            "busy_503": sum(s == 503 and "retry" in a["error"] for s, a in results),
            "closed": sum(s == 0 for s, _ in results), "bodies": len(results)}
