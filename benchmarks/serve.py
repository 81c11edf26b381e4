"""Serving throughput, latency and overhead of `gpuvision serve`, against the bare runtime, on 127.0.0.1.

    python benchmarks/serve.py MODEL_DIR                        # 60 s at 32 clients; 10 s per endpoint alone
    python benchmarks/serve.py MODEL_DIR --seconds 60 --concurrency 32 --runtime auto --low-load-seconds 10
    python benchmarks/serve.py MODEL_DIR --only-monitor-overhead --overhead-rounds 4 --segment-seconds 20

In order, with one server process (`gpuvision serve NAME=MODEL_DIR --port 0`, defaults otherwise) and this
process as the client:
1. low load: one client, one image a request, for each endpoint (KServe v2 binary and JSON UINT8, the upload
   API with a PNG), alternating three timings so that load from other work on the machine hits them alike: the
   bare model call at batch 1 and the endpoint's decoding (both in this process, while the server idles), and a
   request to the server. Overhead = median end-to-end - median bare call - median decoding. The server's own
   mean time per request and per model call (its statistics) show where the rest goes. Batch-1 serving
   throughput is the binary endpoint's images/s here.
2. load: `--concurrency` clients in a closed loop on the binary endpoint for `--seconds` after a short warm-up:
   images/s, p50/p99 latency, errors, the mean batch the server formed (from its Triton statistics), and the
   server's RSS sampled through the run.
3. the bare runtime (the backend and precision the server chose, opened here) at batch 1, at the mean batch of
   step 2 and at 64: images/s from the median call.
4. monitoring overhead: three servers of the same model on the runtime step 1's server chose, side by side:
   monitoring on (the default), off (`--no-monitor`), and on with `--monitor-dir` (the window written to a file).
   `--concurrency` clients drive one at a time, in `--overhead-rounds` rounds of one `--segment-seconds` segment
   per server (after 0.5 s that opens its connections), the order rotated each round (ABC, BCA, ...) so that load
   from other work on the machine falls on all three alike. Images/s per server over all its segments, with a
   95% bootstrap interval of each ratio over the rounds; target (issue 20): monitoring on >= 0.95 x off. Beside
   it, in this process, alternated: the monitor's time per batch of 16 one-image requests against the model's.
Targets (issue 11): 0 errors; served images/s >= 0.8 x bare at the mean batch; served images/s >= 0.8 x (bare
b64 / bare b1) x batch-1 serving; overhead at low load <= 1.5 x the bare batch-1 call. Every loop is bounded in
time and count. Images are seeded random pixels in the model's input size (PNG-encoded for the upload API).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import benchlib
import numpy as np
import torch

from gpuvision.artifact import ModelDir
from gpuvision.data.input_spec import normalise
from gpuvision.runtime import Model, open_runtime
from gpuvision.runtime.timing import time_calls
from gpuvision.serve import kserve_v2, upload

sys.path.insert(0, str(benchlib.REPO / "tests"))
from helpers import read_line  # noqa: E402  (tests/helpers.py: the tests' server helpers)

MAX_REQUESTS = 2_000_000  # a bound on any loop, beside its time
TIMEOUT = 30.0  # seconds a request may take before it counts as an error


class Connection:
    """A keep-alive HTTP/1.1 connection. By hand, not httpx or aiohttp: the client shares the cores with the server,
    and this costs a small fraction of their CPU time per request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(head[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def closed_loop(host: str, port: int, raw: bytes, images: int, clients: int, seconds: float,
                      on_tick=None) -> dict:
    """`clients` clients each sending `raw` and waiting for its answer, again and again, for `seconds`."""
    deadline = time.perf_counter() + seconds
    latencies, errors = [], Counter()

    async def client():
        connection = await Connection.open(host, port)
        while time.perf_counter() < deadline and len(latencies) + errors.total() < MAX_REQUESTS:
            started = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(connection.send(raw), TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                errors[type(e).__name__] += 1
                connection.close()
                connection = await Connection.open(host, port)
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors[str(status)] += 1
        connection.close()

    async def ticker():
        while on_tick is not None and time.perf_counter() < deadline:
            on_tick()
            await asyncio.sleep(min(5.0, max(0.0, deadline - time.perf_counter())))

    started = time.perf_counter()
    await asyncio.gather(ticker(), *(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3 if latencies else np.zeros(1)
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies),
            "errors": dict(errors), "images_per_s": round(len(latencies) * images / elapsed, 2),
            "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3),
                           "mean": round(float(ms.mean()), 3)}}


async def low_load(host: str, port: int, raw: bytes, decode, runtime, one: np.ndarray, seconds: float) -> dict:
    """One client, alternating the bare model call, the endpoint's decoding (both here) and a request to the
    server, so that the three are measured under the same load from other work on the machine."""
    x = torch.from_numpy(np.ascontiguousarray(one.transpose(0, 3, 1, 2)))
    connection = await Connection.open(host, port)
    bare, decoding, served, errors = [], [], [], 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(served) + errors < MAX_REQUESTS:
        started = time.perf_counter()
        runtime.logits(x)
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        decode()
        decoding.append(time.perf_counter() - started)
        started = time.perf_counter()
        status, _ = await asyncio.wait_for(connection.send(raw), TIMEOUT)
        if status == 200:
            served.append(time.perf_counter() - started)
        else:
            errors += 1
    connection.close()
    ms = {k: np.array(v) * 1e3 for k, v in (("bare", bare), ("decode", decoding), ("served", served))}
    p50 = {k: float(np.median(v)) for k, v in ms.items()}
    overhead = p50["served"] - p50["bare"] - p50["decode"]
    return {"requests": len(served), "errors": errors, "images_per_s": round(len(served) / sum(served), 2),
            "latency_ms": {"p50": round(p50["served"], 3), "p99": round(float(np.percentile(ms["served"], 99)), 3)},
            "bare_b1_ms": round(p50["bare"], 3), "decode_ms": round(p50["decode"], 3),
            "overhead_ms": round(overhead, 3), "overhead_x_bare_b1": round(overhead / p50["bare"], 3)}


def start_server(model_dir: str, name: str, runtime: str, extra: tuple[str, ...] = ()
                 ) -> tuple[subprocess.Popen, dict]:
    src = str(benchlib.REPO / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "gpuvision", "serve", f"{name}={model_dir}", "--port", "0", "--device", "cpu",
               "--runtime", runtime, "--json", *extra]
    benchlib.log(" ".join(command))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = read_line(process.stdout, 600)  # --runtime auto exports and measures first
    if not line:
        process.kill()
        raise SystemExit("the server did not report ready within 600 s")
    return process, json.loads(line)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def bare_images_per_s(runtime, pixels: np.ndarray, batch: int, repeats: int) -> dict:
    x = torch.from_numpy(np.ascontiguousarray(pixels[:batch].transpose(0, 3, 1, 2)))
    times = time_calls(lambda t: runtime.logits(t), x, repeats, runtime.device)
    ms = float(np.median(times) * 1e3)
    return {"batch": batch, "ms": round(ms, 3), "images_per_s": round(batch * 1e3 / ms, 2)}


def requests_for(name: str, pixels: np.ndarray) -> dict[str, tuple[bytes, object]]:
    """Per endpoint: the raw HTTP request for one image, and its decoding (the server's work before the model)."""
    one = pixels[:1]
    tensor = {"name": "input", "datatype": "UINT8", "shape": list(one.shape)}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": one.nbytes}}]}).encode()
    binary = header + one.tobytes()
    plain = json.dumps({"inputs": [{**tensor, "data": one.flatten().tolist()}]}).encode()
    image = png(one[0])
    infer = f"/v2/models/{name}/infer"
    return {
        "kserve-binary": (http_request(infer, binary, {kserve_v2.HEADER_LENGTH: str(len(header)),
                                                       "Content-Type": "application/octet-stream"}),
                          lambda spec, model: kserve_v2.decode_request(binary, str(len(header)), spec, 64)),
        "kserve-json": (http_request(infer, plain, {"Content-Type": "application/json"}),
                        lambda spec, model: kserve_v2.decode_request(plain, None, spec, 64)),
        "upload-png": (http_request(f"/models/{name}/predict", image, {"Content-Type": "image/png"}),
                       lambda spec, model: upload.decode_images([("x.png", image)], spec)[1]),
    }


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def monitor_overhead(args, backend: str, raw: bytes, name: str) -> dict:
    """Step 4: images/s at --concurrency with monitoring on, off, and on with --monitor-dir, interleaved."""
    import tempfile

    arms = {"on": (), "off": ("--no-monitor",)}
    with tempfile.TemporaryDirectory(prefix="gpuvision-monitor-bench-") as directory:
        arms["on+dir"] = ("--monitor-dir", directory)
        servers = {arm: start_server(args.model_dir, name, backend, extra) for arm, extra in arms.items()}
        segments = {arm: [] for arm in arms}
        try:
            order = list(arms)
            for r in range(args.overhead_rounds):
                for arm in order[r % len(order):] + order[: r % len(order)]:
                    host, port = servers[arm][1]["url"].removeprefix("http://").split(":")
                    benchlib.log(f"monitor overhead: round {r + 1}, {arm}, {args.segment_seconds} s")
                    asyncio.run(closed_loop(host, int(port), raw, 1, args.concurrency, 0.5))
                    load = asyncio.run(closed_loop(host, int(port), raw, 1, args.concurrency, args.segment_seconds))
                    segments[arm].append({"round": r + 1, "load_average_1min": round(os.getloadavg()[0], 2),
                                          **{k: load[k] for k in ("seconds", "requests", "errors", "images_per_s")},
                                          "p50_ms": load["latency_ms"]["p50"], "p99_ms": load["latency_ms"]["p99"]})
        finally:
            for process, _ in servers.values():
                stop(process)
    totals = {arm: round(sum(s["requests"] for s in v) / sum(s["seconds"] for s in v), 2)
              for arm, v in segments.items()}
    ratio = round(totals["on"] / totals["off"], 3)
    return {"runtime": backend, "clients": args.concurrency, "segments": segments, "images_per_s": totals,
            "on_vs_off": ratio, "on_dir_vs_off": round(totals["on+dir"] / totals["off"], 3),
            "interval_95": {arm: ratio_interval(segments[arm], segments["off"]) for arm in ("on", "on+dir")},
            "target": {"value": ratio, "target": 0.95, "met": ratio >= 0.95}}


def observer_cost(runtime, model_dir: ModelDir, pixels: np.ndarray, batch: int, repeats: int) -> dict:
    """The monitor's time per batch against the model's, both in this process, alternated: a batch of `batch`
    one-image requests (as the load sends), median of `repeats` each."""
    from gpuvision.serve.batcher import Batch
    from gpuvision.serve.monitor import Monitor

    m = model_dir.manifest
    monitor = Monitor("bench", model_dir.version, m.classes, m.input.mean, m.input.std, m.reference, 100_000)
    requests = [torch.from_numpy(np.ascontiguousarray(pixels[i : i + 1])).permute(0, 3, 1, 2) for i in range(batch)]
    inputs = [normalise(p, runtime.spec) for p in requests]
    x = torch.cat(inputs)
    model_s, observer_s = [], []
    for i in range(repeats):
        started = time.perf_counter()
        logits = runtime.logits_normalised(x)
        model_s.append(time.perf_counter() - started)
        outputs = list(torch.split(logits, 1))
        started = time.perf_counter()
        monitor(Batch(inputs, requests, outputs, [[f"{i}-{j}"] for j in range(batch)], [0.0] * batch, 0.0))
        observer_s.append(time.perf_counter() - started)
    model_ms, observer_ms = float(np.median(model_s) * 1e3), float(np.median(observer_s) * 1e3)
    return {"batch": batch, "repeats": repeats, "model_ms": round(model_ms, 3), "observer_ms": round(observer_ms, 3),
            "observer_x_model": round(observer_ms / model_ms, 4)}


def ratio_interval(arm: list[dict], base: list[dict], draws: int = 2000) -> list[float]:
    """A 95% bootstrap interval of images/s(arm) / images/s(base), resampling rounds (seeded): how far the
    machine's changing load leaves the ratio uncertain."""
    a, b = (np.array([s["images_per_s"] for s in x]) for x in (arm, base))
    rounds = np.random.default_rng(0).integers(0, len(a), (draws, len(a)))
    ratios = a[rounds].mean(1) / b[rounds].mean(1)
    return [round(float(q), 3) for q in np.percentile(ratios, [2.5, 97.5])]


def run(args) -> dict:
    name = "bench"
    process, info = start_server(args.model_dir, name, args.runtime)
    url = info["url"]
    host, port = url.removeprefix("http://").split(":")
    port = int(port)
    result = {**benchlib.header("serve", "cpu"), "model_dir": args.model_dir, "server": info}
    try:
        meta = get_json(f"{url}/v2/models/{name}")
        params = meta["parameters"]
        result["runtime"] = {k: params[k] for k in ("backend", "precision", "runtime_choice", "runtime_timings_ms")}
        model_dir = ModelDir.open(args.model_dir)
        runtime = open_runtime(model_dir, "cpu", params["backend"], params["precision"])
        model = Model(model_dir, runtime)
        spec = runtime.spec
        pixels = np.random.default_rng(0).integers(0, 256, (64, *spec.size, spec.channels), dtype=np.uint8)
        requests = requests_for(name, pixels)
        if args.only_monitor_overhead:
            stop(process)
            result["monitor_overhead"] = monitor_overhead(args, params["backend"], requests["kserve-binary"][0], name)
            result["monitor_overhead"]["observer_cost"] = observer_cost(runtime, model_dir, pixels, 16, args.repeats)
            return result

        stats_url = f"{url}/v2/models/{name}/stats"
        low = {}
        for endpoint, (raw, decode) in requests.items():
            benchlib.log(f"low load: {endpoint}, {args.low_load_seconds} s")
            before = get_json(stats_url)["model_stats"][0]["inference_stats"]
            low[endpoint] = asyncio.run(low_load(host, port, raw, lambda decode=decode: decode(spec, model),
                                                 runtime, pixels[:1], args.low_load_seconds))
            after = get_json(stats_url)["model_stats"][0]["inference_stats"]
            low[endpoint]["server_ms"] = {k: round((after[k]["ns"] - before[k]["ns"]) / 1e6 / max(
                1, after[k]["count"] - before[k]["count"]), 3) for k in ("success", "compute_infer")}
        result["low_load"] = low

        raw = requests["kserve-binary"][0]
        benchlib.log(f"warm-up at {args.concurrency} clients, {args.warmup_seconds} s")
        asyncio.run(closed_loop(host, port, raw, 1, args.concurrency, args.warmup_seconds))
        before, rss = get_json(stats_url)["model_stats"][0], []
        benchlib.log(f"load: {args.concurrency} clients, {args.seconds} s")
        load = asyncio.run(closed_loop(host, port, raw, 1, args.concurrency, args.seconds,
                                       on_tick=lambda: rss.append(round(rss_mb(process.pid), 1))))
        after = get_json(stats_url)["model_stats"][0]
        rss.append(round(rss_mb(process.pid), 1))
        inferences = after["inference_count"] - before["inference_count"]
        executions = max(1, after["execution_count"] - before["execution_count"])
        load.update(mean_batch=round(inferences / executions, 2), rss_mb_samples=rss)
        result["load"] = load
    finally:
        if process.poll() is None:
            stop(process)

    mean_batch = max(1, round(load["mean_batch"]))
    bare_mean = bare_images_per_s(runtime, pixels, mean_batch, args.repeats)
    bare_b1 = bare_images_per_s(runtime, pixels, 1, args.repeats)
    bare_b64 = bare_images_per_s(runtime, pixels, 64, max(3, args.repeats // 5))
    result["bare"] = {"b1": bare_b1, "mean_batch": bare_mean, "b64": bare_b64}
    serving_b1 = low["kserve-binary"]["images_per_s"]
    scaled = bare_b64["images_per_s"] / bare_b1["images_per_s"] * serving_b1
    result["targets"] = {
        "errors_at_load": {"value": sum(load["errors"].values()), "target": 0,
                           "met": not load["errors"]},
        "vs_bare_at_mean_batch": {"value": round(load["images_per_s"] / bare_mean["images_per_s"], 3),
                                  "target": 0.8, "met": load["images_per_s"] >= 0.8 * bare_mean["images_per_s"]},
        "vs_batch1_serving_scaled": {"value": round(load["images_per_s"] / scaled, 3), "target": 0.8,
                                     "met": load["images_per_s"] >= 0.8 * scaled},
        "overhead_x_bare_b1": {endpoint: {"value": v["overhead_x_bare_b1"], "target": 1.5,
                                          "met": v["overhead_x_bare_b1"] <= 1.5} for endpoint, v in low.items()},
    }
    if args.overhead_rounds > 0:
        result["monitor_overhead"] = monitor_overhead(args, result["runtime"]["backend"], raw, name)
        result["monitor_overhead"]["observer_cost"] = observer_cost(runtime, model_dir, pixels, 16, args.repeats)
    return result


def overhead_table(overhead: dict) -> str:
    rows = [[arm, overhead["images_per_s"][arm], len(segments), sum(s["requests"] for s in segments),
             " / ".join(str(s["images_per_s"]) for s in segments), sum(sum(s["errors"].values()) for s in segments),
             " / ".join(str(s["load_average_1min"]) for s in segments)]
            for arm, segments in overhead["segments"].items()]
    table = benchlib.markdown_table(["monitoring", "images/s", "segments", "requests", "images/s per segment",
                                     "errors", "load average per segment"], rows)
    interval, cost = overhead["interval_95"], overhead["observer_cost"]
    return (f"{table}\n\non / off: {overhead['on_vs_off']} (95% interval {interval['on']}; target >= 0.95); on with "
            f"--monitor-dir / off: {overhead['on_dir_vs_off']} ({interval['on+dir']})\nthe monitor's time per batch of "
            f"{cost['batch']} one-image requests: {cost['observer_ms']} ms against the model's {cost['model_ms']} ms "
            f"({cost['observer_x_model']} x)")


def tables(result: dict) -> str:
    if "low_load" not in result:
        return f"runtime: {result['runtime']}\n\n{overhead_table(result['monitor_overhead'])}"
    low, load, bare = result["low_load"], result["load"], result["bare"]
    rows = [[e, v["requests"], v["latency_ms"]["p50"], v["latency_ms"]["p99"], v["bare_b1_ms"], v["decode_ms"],
             v["overhead_ms"], v["overhead_x_bare_b1"], v["server_ms"]["success"], v["server_ms"]["compute_infer"],
             v["images_per_s"]] for e, v in low.items()]
    first = benchlib.markdown_table(["endpoint (1 client)", "requests", "p50 ms", "p99 ms", "bare b1 ms",
                                     "decode ms", "overhead ms", "overhead / bare", "server: request ms",
                                     "server: model ms", "images/s"], rows)
    t = result["targets"]
    second = benchlib.markdown_table(
        ["load", "images/s", "p50 ms", "p99 ms", "errors", "mean batch", "bare at mean batch", "bare b1", "bare b64",
         "x bare at mean", "x scaled b1 serving", "RSS MB first / last"],
        [[f"{load['clients']} clients, {load['seconds']} s", load["images_per_s"], load["latency_ms"]["p50"],
          load["latency_ms"]["p99"], sum(load["errors"].values()), load["mean_batch"],
          f"{bare['mean_batch']['images_per_s']} (b{bare['mean_batch']['batch']})", bare["b1"]["images_per_s"],
          bare["b64"]["images_per_s"], t["vs_bare_at_mean_batch"]["value"], t["vs_batch1_serving_scaled"]["value"],
          f"{load['rss_mb_samples'][0]} / {load['rss_mb_samples'][-1]}"]])
    extra = f"\n\n{overhead_table(result['monitor_overhead'])}" if "monitor_overhead" in result else ""
    return f"runtime: {result['runtime']}\n\n{first}\n\n{second}{extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--low-load-seconds", type=float, default=10.0, help="per endpoint, one client")
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--runtime", default="auto", help="the server's --runtime")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per bare figure")
    parser.add_argument("--overhead-rounds", type=int, default=2, help="step 4's rounds (0: skip it)")
    parser.add_argument("--segment-seconds", type=float, default=20.0, help="step 4: load per server and round")
    parser.add_argument("--only-monitor-overhead", action="store_true", help="run step 4 only")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args()
    result = run(args)
    path = benchlib.write_result(result, benchlib.result_path(result, args.out))
    print(tables(result))
    benchlib.log(f"results: {path}")


if __name__ == "__main__":
    main()
