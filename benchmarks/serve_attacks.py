"""`gpuvision serve` under the attacks of issue 22 (tests/attacks.py): health latency and peak RSS.

    python benchmarks/serve_attacks.py                  # slowloris 200 x 15 s, upload and JSON attacks
    python benchmarks/serve_attacks.py --connections 600 --seconds 40 --slowloris-only

One server process (`gpuvision serve`, eager on the CPU, one torch thread, defaults otherwise: --request-timeout
10, --max-client-connections 64) serving an untrained narrow fastnet for 8 x 8 grey images (`digits`) and one for
128 x 128 colour images (`big`, whose JSON requests may be as large as --max-body-mb). In order:
1. idle: health (/v2/health/live on a fresh connection) 20 times, after 5 to warm up;
2. slowloris: `--connections` connections from 127.0.0.2 sending their headers a byte at a time for `--seconds`,
   reopened when closed (a process of its own), while this process checks health and readiness every 0.2 s;
3. upload attack: 16 requests of 64 PNG pixel bombs (8192 x 8192, 2 MB a request) and 16 of four 16 Mpx PNGs, at
   once; 4. JSON attack: 32 JSON bodies at once for `big` (28 of 9.8 MB, 4 of the largest legal 6.3 MB).
For 3 and 4: the server's RSS before and its peak during (VmHWM, reset first), and health latency meanwhile. Health
checks that are not a 200 are counted, not fatal, so the script also measures a server without these defences
(`--src` of an older checkout, with --slowloris-only: the other attacks took gigabytes there).
Targets (issue 22): health within 1 s throughout; peak RSS within 1 GiB of idle.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import benchlib
import numpy as np

sys.path.insert(0, str(benchlib.REPO / "tests"))

from attacks import (  # noqa: E402  (tests/attacks.py, the corpus the tests run)
    health_during,
    json_attack,
    model_dir,
    peak_rss,
    slowloris,
    start_server,
    upload_attack,
)

MIB = 1 << 20


def latency(checks: list[tuple[int, float]]) -> dict:
    """Health checks: how many, how many were not a 200, and p50 / p99 / max latency."""
    ms = np.array([seconds for _, seconds in checks]) * 1e3
    return {"checks": len(ms), "not_200": sum(status != 200 for status, _ in checks),
            "p50_ms": round(float(np.median(ms)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def run(args) -> dict:
    result = benchlib.header("serve_attacks", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {"digits": model_dir(root / "digits", 8, 1), "big": model_dir(root / "big", 128, 3)}
        server = start_server(models, root, src=args.src)
        try:
            for _ in range(5):  # warm: the first connections and requests pay for imports on both sides
                server.get("/v2/health/live")
            result["idle"] = latency([server.get("/v2/health/live") for _ in range(20)])
            checks, closed = health_during(server, args.seconds + 120,
                                           lambda: slowloris(server, args.connections, args.seconds))
            result["slowloris"] = {"connections": args.connections, "seconds": args.seconds, **latency(checks),
                                   "closed_by_server": len(closed), "longest_open_s": round(max(closed, default=0), 2)}
            attacks = (("upload", lambda: upload_attack(server)), ("json", lambda: json_attack(server)))
            for name, attack in attacks if not args.slowloris_only else ():
                idle, peak, (checks, outcome) = peak_rss(server, lambda a=attack: health_during(server, 600, a))
                result[name] = {"rss_idle_mib": round(idle / MIB), "rss_peak_mib": round(peak / MIB),
                                "rss_over_idle_mib": round((peak - idle) / MIB), **latency(checks),
                                "outcome": outcome if isinstance(outcome, dict) else
                                {str(s): outcome.count(s) for s in sorted(set(outcome))}}
        finally:
            server.stop()
    return result


def table(result: dict) -> str:
    rows = ["| attack | health checks (not 200) | p50 / p99 / max ms | RSS idle -> peak (MiB) | outcome |",
            "|---|---|---|---|---|"]

    def health(r: dict) -> str:
        return f"{r['checks']} ({r['not_200']}) | {r['p50_ms']} / {r['p99_ms']} / {r['max_ms']}"

    rows.append(f"| none (idle) | {health(result['idle'])} | | |")
    s = result["slowloris"]
    closed = f"{s['closed_by_server']} closed by the server" + (f", each within {s['longest_open_s']} s"
                                                                 if s["closed_by_server"] else "")
    rows.append(f"| slowloris: {s['connections']} connections, {s['seconds']:g} s | {health(s)} | | {closed} |")
    for name, what in (("upload", "upload: 16 x 64 pixel bombs + 16 x 4 x 16 Mpx"),
                       ("json", "JSON: 32 bodies of 6-10 MB at once")):
        if name in result:
            r = result[name]
            rows.append(f"| {what} | {health(r)} | {r['rss_idle_mib']} -> {r['rss_peak_mib']} "
                        f"(+{r['rss_over_idle_mib']}) | {r['outcome']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--src", type=Path, default=benchlib.REPO / "src", help="the gpuvision source the server runs "
                        "(another checkout's src/ to compare)")
    parser.add_argument("--slowloris-only", action="store_true", help="skip the upload and JSON attacks (to run "
                        "against a server without their bounds, where they would take gigabytes)")
    args = parser.parse_args()
    result = run(args)
    path = benchlib.write_result(result, benchlib.result_path(result))
    print(table(result))
    print(f"\n{benchlib.describe_machine(result['machine'])}; load average {result['machine']['load_average']}; "
          f"commit {result['commit']}; {path}")


if __name__ == "__main__":
    main()
