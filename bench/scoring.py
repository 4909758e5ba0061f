#!/usr/bin/env python3
"""Our scoring runtime vs `mlflow models serve`, on the same model, side by side.

Starts both on this host from the deployed model's image (each limited to
--cpus CPUs, one replica, published on loopback), then sends single-transaction
requests at fixed rates and at saturation, and prints p50/p99 latency and
throughput for both and the ratio. Targets (docs/targets.md): p99 <= 5 ms at
300 req/s on one 2-core replica; >= 5x mlflow's throughput. Last line: JSON.

    .venv/bin/python bench/scoring.py [--settings FILE] [--rates 100,300] [--seconds 10]
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen import fixed_rate, percentile, saturate  # noqa: E402

from datalab import deploy, settings as settings_mod  # noqa: E402
from datalab.docker import Docker  # noqa: E402

OURS_PORT, MLFLOW_PORT = 18601, 18602


def wait_ready(url, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings")
    ap.add_argument("--rates", default="100,300")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--cpus", default="2")
    args = ap.parse_args()
    settings = settings_mod.load(args.settings)
    deployment = deploy.current(settings)
    if not deployment:
        raise SystemExit("no model deployed: datalab deploy MODEL@VERSION first")
    docker = Docker(settings)
    names = ("datalab-bench-ours", "datalab-bench-mlflow")
    docker.run("rm", "-f", *names, check=False)
    common = ["run", "-d", "--cpus", args.cpus, "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    docker.run(*common, "--name", names[0], "-p", f"127.0.0.1:{OURS_PORT}:8080", deployment["image"])
    docker.run(*common, "--name", names[1], "-p", f"127.0.0.1:{MLFLOW_PORT}:8080", deployment["image"],
               "mlflow", "models", "serve", "-m", "/model", "--env-manager", "local", "-h", "0.0.0.0", "-p", "8080")
    try:
        wait_ready(f"http://127.0.0.1:{OURS_PORT}/readyz")
        wait_ready(f"http://127.0.0.1:{MLFLOW_PORT}/ping")
        example = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{OURS_PORT}/v1/schema").read())["example"]
        targets = {
            "ours": (f"http://127.0.0.1:{OURS_PORT}/v1/score", json.dumps(example).encode()),
            "mlflow models serve": (f"http://127.0.0.1:{MLFLOW_PORT}/invocations",
                                    json.dumps({"dataframe_records": [example]}).encode()),
        }
        results = {}
        for name, (url, body) in targets.items():
            asyncio.run(fixed_rate(url, body, 50, 2))  # warm up
            for rate in [float(r) for r in args.rates.split(",")]:
                latencies, failures = asyncio.run(fixed_rate(url, body, rate, args.seconds))
                results[f"{name} @ {rate:g}/s"] = {
                    "p50_ms": 1000 * percentile(latencies, .5), "p99_ms": 1000 * percentile(latencies, .99),
                    "throughput": len(latencies) / args.seconds, "failed": failures}
                print(f"  {name} at {rate:g} req/s done", flush=True)
            throughput, latencies, failures = asyncio.run(saturate(url, body, args.seconds))
            results[f"{name} @ saturation"] = {
                "p50_ms": 1000 * percentile(latencies, .5), "p99_ms": 1000 * percentile(latencies, .99),
                "throughput": throughput, "failed": failures}
            print(f"  {name} at saturation done", flush=True)
    finally:
        docker.run("rm", "-f", *names, check=False)
    print(f"\nmodel {deployment['model']} v{deployment['version']}, one replica each, {args.cpus} CPUs each")
    print(f"{'server @ load':36} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'failed':>7}")
    for key, r in results.items():
        print(f"{key:36} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['throughput']:9.1f} {r['failed']:7}")
    ratio = results["ours @ saturation"]["throughput"] / max(results["mlflow models serve @ saturation"]["throughput"], 1e-9)
    p99_300 = results.get("ours @ 300/s", {}).get("p99_ms")
    print(f"throughput ratio ours / mlflow: {ratio:.1f}x (target >= 5x); ours p99 at 300 req/s: "
          f"{p99_300 if p99_300 is None else round(p99_300, 2)} ms (target <= 5 ms)")
    print(json.dumps({"model": deployment["model"], "version": deployment["version"], "results": results,
                      "throughput_ratio": ratio}))


if __name__ == "__main__":
    main()
