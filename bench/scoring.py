#!/usr/bin/env python3
"""Our scoring runtime vs `mlflow models serve`, on the same model, side by side;
and our runtime on raw transactions with the feature store in the path.

Starts, on this host, from the deployed model's image (each limited to --cpus
CPUs, one replica, published on loopback):
  ours                 the model taking its 15 features in the request
  ours on tf.function  the same, on the model's compiled graph instead of the
                       numpy forward pass (SCORING_ENGINE=graph)
  ours raw             the same weights taking raw transactions, computing the
                       features online against a feature store (the stack's
                       featurestore image, a password, on a network of the
                       bench's own) - when the model declares fraudlab's feature set
  mlflow models serve  the model taking its 15 features
then sends single-transaction requests at fixed rates and at saturation, and
prints p50/p99 latency and throughput side by side, and, for our runtime, where
each row's time went inside the server (p50/p99 of each stage: parse, features,
queue, model, respond, from its scoring_stage_seconds histograms). Raw requests are each a new
transaction (a new id; customers and terminals drawn from 10,000 each).
Targets (docs/targets.md): p99 <= 5 ms at 300 req/s on one 2-core replica,
features or raw; raw p99 <= 1.5x ours; >= 5x mlflow's throughput. Last line: JSON.

    .venv/bin/python bench/scoring.py [--settings FILE] [--rates 100,300] [--seconds 10]
"""

import argparse
import asyncio
import itertools
import json
import random
import secrets
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen import fixed_rate, percentile, saturate  # noqa: E402

from datalab import deploy, images, settings as settings_mod  # noqa: E402
from datalab.docker import Docker  # noqa: E402
from datalab_scoring.metrics import STAGE_BUCKETS, STAGES  # noqa: E402
from datalab_scoring.model import FEATURE_SET_KEY  # noqa: E402

OURS_PORT, MLFLOW_PORT, RAW_PORT, GRAPH_PORT = 18601, 18602, 18603, 18604
NETWORK, STORE = "datalab-bench", "datalab-bench-store"
SECRET = "/run/secrets/featurestore_password"


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


def model_files(docker, image, folder):
    """The image's /model copied to `folder`, and the feature set its MLmodel declares (or None)."""
    name = f"datalab-bench-model-{secrets.token_hex(4)}"
    docker.run("create", "--name", name, image)
    try:
        docker.run("cp", f"{name}:/model", str(folder))
    finally:
        docker.run("rm", "-f", name, check=False)
    mlmodel = yaml.safe_load((folder / "model" / "MLmodel").read_text())
    return folder / "model", (mlmodel.get("metadata") or {}).get(FEATURE_SET_KEY)


def without_feature_set(model_dir):
    """The same model declaring no feature set: it takes the 15 features in the request."""
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    mlmodel.get("metadata", {}).pop(FEATURE_SET_KEY, None)
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def raw_transactions():
    """A body maker: one new raw transaction per request."""
    ids, rng = itertools.count(), random.Random(7)
    run = secrets.token_hex(3)

    def body():
        return json.dumps({
            "transaction_id": f"bench-{run}-{next(ids)}", "customer_id": rng.randrange(10_000),
            "terminal_id": rng.randrange(10_000), "amount": round(rng.lognormvariate(3.5, 1.0), 2),
            "datetime": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode()
    return body


def stage_buckets(metrics_url):
    """{stage: {upper bound: cumulative count}} of the server's scoring_stage_seconds."""
    found = {}
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "scoring_stage_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    found.setdefault(sample.labels["stage"], {})[float(sample.labels["le"])] = sample.value
    return found


def stage_figures(before, after):
    """{stage: {"p50_ms", "p99_ms", "n"}} of the requests between two scrapes: the upper
    bound of the bucket the quantile falls in (so "<= x ms"); None past the last bound."""
    figures = {}
    for stage, buckets in after.items():
        counts = {le: n - before.get(stage, {}).get(le, 0) for le, n in buckets.items()}
        total = counts.get(float("inf"), 0)
        if not total:
            continue

        def quantile(q):
            le = next(le for le in sorted(counts) if counts[le] >= q * total)
            return None if le == float("inf") else le
        figures[stage] = {key: None if (v := quantile(q)) is None else 1000 * v
                          for key, q in (("p50_ms", .5), ("p99_ms", .99))} | {"n": int(total)}
    return figures


def ms(value):
    return f"> {1000 * STAGE_BUCKETS[-1]:g}" if value is None else f"{value:.2f}"


def measure(name, url, body, rates, seconds, results, metrics_url=None):
    asyncio.run(fixed_rate(url, body, 50, 2))  # warm up

    def row(key, run):
        before = stage_buckets(metrics_url) if metrics_url else {}
        cpu, wall = time.process_time(), time.perf_counter()
        results[key] = run()
        # the load generator shares the cores with the server: its own share, in cores
        results[key]["loadgen_cores"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
        if metrics_url:
            results[key]["stages"] = stage_figures(before, stage_buckets(metrics_url))
        print(f"  {key} done", flush=True)

    for rate in rates:
        def fixed(rate=rate):
            latencies, failures = asyncio.run(fixed_rate(url, body, rate, seconds))
            return {"p50_ms": 1000 * percentile(latencies, .5), "p99_ms": 1000 * percentile(latencies, .99),
                    "throughput": len(latencies) / seconds, "failed": failures}
        row(f"{name} @ {rate:g}/s", fixed)

    def saturation():
        throughput, latencies, failures = asyncio.run(saturate(url, body, seconds))
        return {"p50_ms": 1000 * percentile(latencies, .5), "p99_ms": 1000 * percentile(latencies, .99),
                "throughput": throughput, "failed": failures}
    row(f"{name} @ saturation", saturation)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings")
    ap.add_argument("--rates", default="100,300")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--cpus", default="2")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    settings = settings_mod.load(args.settings)
    deployment = deploy.current(settings)
    if not deployment:
        raise SystemExit("no model deployed: datalab deploy MODEL@VERSION first")
    docker = Docker(settings)
    names = ("datalab-bench-ours", "datalab-bench-mlflow", "datalab-bench-raw", STORE, "datalab-bench-graph")
    docker.run("rm", "-f", *names, check=False)
    docker.run("network", "rm", NETWORK, check=False)
    common = ["run", "-d", "--cpus", args.cpus, "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    image = deployment["image"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="datalab-bench-") as work:
        work = Path(work)
        work.chmod(0o755)
        model_dir, feature_set = model_files(docker, image, work)
        features_only = ["--mount", f"type=bind,src={model_dir},dst=/model,readonly"] if feature_set else []
        if feature_set:
            without_feature_set(model_dir)
        try:
            docker.run(*common, "--name", names[0], "-p", f"127.0.0.1:{OURS_PORT}:8080", *features_only, image)
            # the same runtime on the model's compiled graph, not the numpy pass (datalab_scoring/forward.py)
            docker.run(*common, "--name", names[4], "-p", f"127.0.0.1:{GRAPH_PORT}:8080", "-e", "SCORING_ENGINE=graph",
                       *features_only, image)
            docker.run(*common, "--name", names[1], "-p", f"127.0.0.1:{MLFLOW_PORT}:8080", *features_only, image,
                       "mlflow", "models", "serve", "-m", "/model", "--env-manager", "local", "-h", "0.0.0.0",
                       "-p", "8080")
            if feature_set:
                password = work / "password"
                password.write_text(secrets.token_hex(16))
                password.chmod(0o444)  # the store (uid 1002) and scoring (uid 1000) read it; a throwaway
                secret = ["--mount", f"type=bind,src={password},dst={SECRET},readonly"]
                docker.run("network", "create", NETWORK)
                docker.run("run", "-d", "--name", STORE, "--network", NETWORK, "--cap-drop", "ALL",
                           "--security-opt", "no-new-privileges", *secret,
                           images.current_ref(docker, "featurestore"))
                docker.run(*common, "--name", names[2], "--network", NETWORK, "-p", f"127.0.0.1:{RAW_PORT}:8080",
                           "-e", f"SCORING_FEATURE_STORE_URL=redis://{STORE}:6379/0", *secret, image)
            wait_ready(f"http://127.0.0.1:{OURS_PORT}/readyz")
            wait_ready(f"http://127.0.0.1:{MLFLOW_PORT}/ping")
            example = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{OURS_PORT}/v1/schema").read())["example"]
            measure("ours", f"http://127.0.0.1:{OURS_PORT}/v1/score", json.dumps(example).encode(), rates,
                    args.seconds, results, f"http://127.0.0.1:{OURS_PORT}/metrics")
            wait_ready(f"http://127.0.0.1:{GRAPH_PORT}/readyz")
            measure("ours on tf.function", f"http://127.0.0.1:{GRAPH_PORT}/v1/score", json.dumps(example).encode(),
                    rates, args.seconds, results, f"http://127.0.0.1:{GRAPH_PORT}/metrics")
            if feature_set:
                wait_ready(f"http://127.0.0.1:{RAW_PORT}/readyz")
                measure("ours raw", f"http://127.0.0.1:{RAW_PORT}/v1/score", raw_transactions(), rates,
                        args.seconds, results, f"http://127.0.0.1:{RAW_PORT}/metrics")
            measure("mlflow models serve", f"http://127.0.0.1:{MLFLOW_PORT}/invocations",
                    json.dumps({"dataframe_records": [example]}).encode(), rates, args.seconds, results)
        finally:
            docker.run("rm", "-f", *names, check=False)
            docker.run("network", "rm", NETWORK, check=False)
    print(f"\nmodel {deployment['model']} v{deployment['version']}, one replica each, {args.cpus} CPUs each"
          + (f"; raw: feature set {feature_set}, store on this host" if feature_set else
             "; no raw mode: the model declares no feature set"))
    print(f"{'server @ load':36} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'failed':>7} {'load generator':>15}")
    for key, r in results.items():
        print(f"{key:36} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['throughput']:9.1f} {r['failed']:7} "
              f"{r['loadgen_cores']:9.2f} cores")
    print("\nwhere our runtime's time went, by stage inside the server (p50 / p99 ms, bucket upper bounds):")
    print(f"{'server @ load':36} " + " ".join(f"{stage:>15}" for stage in STAGES))
    for key, r in results.items():
        if r.get("stages"):
            print(f"{key:36} " + " ".join(
                f"{ms(s['p50_ms']):>6} / {ms(s['p99_ms']):<6}" if (s := r["stages"].get(stage)) else f"{'-':>15}"
                for stage in STAGES))
    ratio = results["ours @ saturation"]["throughput"] / max(results["mlflow models serve @ saturation"]["throughput"], 1e-9)
    p99_300 = results.get("ours @ 300/s", {}).get("p99_ms")
    raw_300 = results.get("ours raw @ 300/s", {}).get("p99_ms")
    print(f"throughput ratio ours / mlflow: {ratio:.1f}x (target >= 5x); ours p99 at 300 req/s: "
          f"{p99_300 if p99_300 is None else round(p99_300, 2)} ms (target <= 5 ms)")
    if raw_300 is not None and p99_300:
        print(f"raw p99 at 300 req/s: {raw_300:.2f} ms, {raw_300 / p99_300:.2f}x ours (targets <= 5 ms, <= 1.5x)")
    print(json.dumps({"model": deployment["model"], "version": deployment["version"], "feature_set": feature_set,
                      "results": results, "throughput_ratio": ratio,
                      "raw_p99_ratio_at_300": raw_300 / p99_300 if raw_300 is not None and p99_300 else None,
                      "targets": {"p99_ms_at_300": 5, "raw_p99_ratio_at_300": 1.5, "throughput_ratio": 5}}))


if __name__ == "__main__":
    main()
