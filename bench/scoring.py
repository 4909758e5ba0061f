#!/usr/bin/env python3
"""Our scoring runtime vs Seldon's MLServer and `mlflow models serve`, on the same
model, side by side; and our runtime on raw transactions with the feature store
in the path, and through the lab's edge.

Starts, on this host, from the deployed model's image (each limited to --cpus
CPUs, one replica, called at its container's address):
  ours                 the model taking its 15 features in the request
  ours on tf.function  the same, on the model's compiled graph instead of the
                       numpy forward pass (SCORING_ENGINE=graph)
  ours raw             the same weights taking raw transactions, computing the
                       features online against a feature store (the stack's
                       featurestore image, a password, on a network of the
                       bench's own) - when the model declares fraudlab's feature set
  mlserver             MLServer with its MLflow runtime (the server KServe runs
                       MLflow models with; bench/mlserver, built on the scoring
                       image, so the same mlflow, TensorFlow and numpy), the model
                       taking its 15 features in the V2 inference protocol
  mlflow models serve  the model taking its 15 features
and, with --edge, the lab's own scoring edge and its deployed replicas, as the
lab's clients call it (its URL and CA); raw transactions sent there name
customers and terminals "bench-..." so no real one's state moves;
then sends single-transaction requests at fixed rates and at saturation, and
prints p50/p99 latency and throughput side by side, and, for our runtime, where
each row's time went inside the server (p50/p99 of each stage: parse, features,
queue, model, respond, from its scoring_stage_seconds histograms). Raw requests are each a new
transaction (a new id; customers and terminals drawn from 10,000 each).
Targets (docs/targets.md): p99 <= 5 ms at 300 req/s on one 2-core replica,
features or raw, directly and through the edge; raw p99 <= 1.5x ours; >= 3x
MLServer's saturation throughput and a lower p99 at every fixed rate; >= 5x
mlflow's throughput. Last line: JSON.

    .venv/bin/python bench/scoring.py [--settings FILE] [--rates 100,300] [--seconds 10] [--edge]
"""

import argparse
import asyncio
import hashlib
import itertools
import json
import math
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from loadgen import fixed_rate, percentile, saturate  # noqa: E402
from switch import edge_tls, edge_url  # noqa: E402

from datalab import deploy, images, settings as settings_mod  # noqa: E402
from datalab.docker import Docker  # noqa: E402
from datalab_scoring.metrics import STAGE_BUCKETS, STAGES  # noqa: E402
from datalab_scoring.model import FEATURE_SET_KEY  # noqa: E402

MLSERVER_MODEL = "fraud"  # bench/mlserver/model-settings.json
NETWORK, STORE = "datalab-bench", "datalab-bench-store"
SECRET = "/run/secrets/featurestore_password"


def mlserver_image(docker):
    """bench/mlserver built on the current scoring image (once per scoring build and
    version of the folder)."""
    base = images.current_ref(docker, "scoring")
    folder = hashlib.sha256(b"".join(f.read_bytes() for f in sorted((HERE / "mlserver").iterdir())))
    tag = f"{images.REPOSITORY}/bench-mlserver:{base.rsplit(':', 1)[-1]}-{folder.hexdigest()[:8]}"
    if not docker.inspect("image", tag):
        print(f"building {tag}: MLServer on {base}", flush=True)
        docker.run("build", "-q", "-t", tag, "--build-arg", f"BASE_IMAGE={base}", str(HERE / "mlserver"),
                   timeout=900)
    return tag


def address(docker, container):
    """The container's address on its (one) network, which this host reaches."""
    return docker.out("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container)


def v2_request(example):
    """One transaction in the V2 inference protocol, a column per feature, as MLServer's
    MLflow runtime decodes a pandas DataFrame."""
    return {"parameters": {"content_type": "pd"},
            "inputs": [{"name": name, "shape": [1], "datatype": "FP32", "data": [value]}
                       for name, value in example.items()]}


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
            "transaction_id": f"bench-{run}-{next(ids)}", "customer_id": f"bench-c{rng.randrange(10_000)}",
            "terminal_id": f"bench-t{rng.randrange(10_000)}", "amount": round(rng.lognormvariate(3.5, 1.0), 2),
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


def measure(name, url, body, rates, seconds, results, metrics_url=None, tls=None):
    asyncio.run(fixed_rate(url, body, 50, 2, tls=tls))  # warm up

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
            latencies, failures = asyncio.run(fixed_rate(url, body, rate, seconds, tls=tls))
            return {"p50_ms": 1000 * percentile(latencies, .5), "p99_ms": 1000 * percentile(latencies, .99),
                    "throughput": len(latencies) / seconds, "failed": failures}
        row(f"{name} @ {rate:g}/s", fixed)

    def saturation():
        throughput, latencies, failures = asyncio.run(saturate(url, body, seconds, tls=tls))
        return {"p50_ms": 1000 * percentile(latencies, .5), "p99_ms": 1000 * percentile(latencies, .99),
                "throughput": throughput, "failed": failures}
    row(f"{name} @ saturation", saturation)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings")
    ap.add_argument("--rates", default="100,300")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--cpus", default="2")
    ap.add_argument("--edge", action="store_true",
                    help="also load the lab's scoring edge (its deployed replicas serve the bench's requests)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    settings = settings_mod.load(args.settings)
    deployment = deploy.current(settings)
    if not deployment:
        raise SystemExit("no model deployed: datalab deploy MODEL@VERSION first")
    docker = Docker(settings)
    names = ("datalab-bench-ours", "datalab-bench-mlflow", "datalab-bench-raw", STORE, "datalab-bench-graph",
             "datalab-bench-mlserver")
    docker.run("rm", "-f", *names, check=False)
    docker.run("network", "rm", NETWORK, check=False)
    common = ["run", "-d", "--cpus", args.cpus, "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    image = deployment["image"]
    peer = mlserver_image(docker)
    results = {}
    with tempfile.TemporaryDirectory(prefix="datalab-bench-") as work:
        work = Path(work)
        work.chmod(0o755)
        model_dir, feature_set = model_files(docker, image, work)
        features_only = ["--mount", f"type=bind,src={model_dir},dst=/model,readonly"] if feature_set else []
        if feature_set:
            without_feature_set(model_dir)
        try:
            docker.run(*common, "--name", names[0], *features_only, image)
            # the same runtime on the model's compiled graph, not the numpy pass (datalab_scoring/forward.py)
            docker.run(*common, "--name", names[4], "-e", "SCORING_ENGINE=graph", *features_only, image)
            docker.run(*common, "--name", names[1], *features_only, image,
                       "mlflow", "models", "serve", "-m", "/model", "--env-manager", "local", "-h", "0.0.0.0",
                       "-p", "8080")
            docker.run(*common, "--name", names[5], "--mount", f"type=bind,src={model_dir},dst=/model,readonly", peer)
            if feature_set:
                password = work / "password"
                password.write_text(secrets.token_hex(16))
                password.chmod(0o444)  # the store (uid 1002) and scoring (uid 1000) read it; a throwaway
                secret = ["--mount", f"type=bind,src={password},dst={SECRET},readonly"]
                docker.run("network", "create", NETWORK)
                docker.run("run", "-d", "--name", STORE, "--network", NETWORK, "--cap-drop", "ALL",
                           "--security-opt", "no-new-privileges", *secret,
                           images.current_ref(docker, "featurestore"))
                docker.run(*common, "--name", names[2], "--network", NETWORK,
                           "-e", f"SCORING_FEATURE_STORE_URL=redis://{STORE}:6379/0", *secret, image)
            # each server at its container's own address: a port published on the loopback goes through
            # the engine's userland proxy (docker-proxy), which added 8-20 ms to our p99 at 300 req/s
            servers = {"ours": names[0], "mlflow": names[1], "graph": names[4], "mlserver": names[5],
                       **({"raw": names[2]} if feature_set else {})}
            at = {key: f"http://{address(docker, name)}:8080" for key, name in servers.items()}
            wait_ready(f"{at['ours']}/readyz")
            wait_ready(f"{at['mlflow']}/ping")
            example = json.loads(urllib.request.urlopen(f"{at['ours']}/v1/schema").read())["example"]
            measure("ours", f"{at['ours']}/v1/score", json.dumps(example).encode(), rates,
                    args.seconds, results, f"{at['ours']}/metrics")
            wait_ready(f"{at['graph']}/readyz")
            measure("ours on tf.function", f"{at['graph']}/v1/score", json.dumps(example).encode(),
                    rates, args.seconds, results, f"{at['graph']}/metrics")
            if feature_set:
                wait_ready(f"{at['raw']}/readyz")
                measure("ours raw", f"{at['raw']}/v1/score", raw_transactions(), rates,
                        args.seconds, results, f"{at['raw']}/metrics")
            if args.edge:
                edge, tls = edge_url(settings), edge_tls(settings)
                schema = json.loads(urllib.request.urlopen(f"{edge}/v1/schema", context=tls).read())
                measure("ours through the edge", f"{edge}/v1/score",
                        raw_transactions() if feature_set else json.dumps(schema["example"]).encode(),
                        rates, args.seconds, results, tls=tls)
            wait_ready(f"{at['mlserver']}/v2/models/{MLSERVER_MODEL}/ready")
            mlserver_version = json.loads(urllib.request.urlopen(f"{at['mlserver']}/v2").read())["version"]
            measure("mlserver", f"{at['mlserver']}/v2/models/{MLSERVER_MODEL}/infer",
                    json.dumps(v2_request(example)).encode(), rates, args.seconds, results)
            measure("mlflow models serve", f"{at['mlflow']}/invocations",
                    json.dumps({"dataframe_records": [example]}).encode(), rates, args.seconds, results)
        finally:
            docker.run("rm", "-f", *names, check=False)
            docker.run("network", "rm", NETWORK, check=False)
    print(f"\nmodel {deployment['model']} v{deployment['version']}, one replica each, {args.cpus} CPUs each, "
          f"MLServer {mlserver_version}" + ("; through the edge: the lab's replicas" if args.edge else "")
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
    peer_ratio = results["ours @ saturation"]["throughput"] / max(results["mlserver @ saturation"]["throughput"], 1e-9)
    # a peer that answered nothing at a rate has no p99 (NaN): it is slower than any answer
    lower_p99 = {f"{rate:g}/s": results[f"ours @ {rate:g}/s"]["p99_ms"] < (
        math.inf if math.isnan(peer := results[f"mlserver @ {rate:g}/s"]["p99_ms"]) else peer) for rate in rates}
    p99_300 = results.get("ours @ 300/s", {}).get("p99_ms")
    raw_300 = results.get("ours raw @ 300/s", {}).get("p99_ms")
    print(f"throughput ratio ours / mlserver: {peer_ratio:.1f}x (target >= 3x); ours' p99 below mlserver's at "
          f"{', '.join(f'{k}: {v}' for k, v in lower_p99.items())} (target: at every rate)")
    print(f"throughput ratio ours / mlflow: {ratio:.1f}x (target >= 5x); ours p99 at 300 req/s: "
          f"{p99_300 if p99_300 is None else round(p99_300, 2)} ms (target <= 5 ms)")
    if raw_300 is not None and p99_300:
        print(f"raw p99 at 300 req/s: {raw_300:.2f} ms, {raw_300 / p99_300:.2f}x ours (targets <= 5 ms, <= 1.5x)")
    print(json.dumps({"model": deployment["model"], "version": deployment["version"], "feature_set": feature_set,
                      "mlserver_version": mlserver_version, "results": results,
                      "mlserver_throughput_ratio": peer_ratio, "p99_below_mlserver": lower_p99,
                      "throughput_ratio": ratio,
                      "raw_p99_ratio_at_300": raw_300 / p99_300 if raw_300 is not None and p99_300 else None,
                      "targets": {"p99_ms_at_300": 5, "raw_p99_ratio_at_300": 1.5, "mlserver_throughput_ratio": 3,
                                  "p99_below_mlserver": "every rate", "throughput_ratio": 5}}))


if __name__ == "__main__":
    main()
