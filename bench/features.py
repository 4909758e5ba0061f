#!/usr/bin/env python3
"""The online feature store (fraudlab.online) replaying a simulation at the
reference size (5,000 customers, 10,000 terminals) against a redis-server
this script starts on this host (its own, on a free loopback port, in a
temporary directory, no persistence; no lab needed): transactions/s scoring
one transaction a round trip and scoring pipelined batches, side by side,
with their round trips' p50/p99, Redis's memory after each replay, and the
worst difference from the batch features (add_features) over every feature
of every transaction (target: <= 1e-6). Each day, the labels of the day
`delay` days before arrive first (not counted in the rates). Last line: JSON.

    .venv/bin/python bench/features.py [--customers 5000] [--terminals 10000] [--days 40] [--batch 500]
"""

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time

import numpy as np
import redis

from fraudlab import features, intake, online, simulate
from fraudlab.features import DELAY, FEATURES


def start_redis(directory):
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server not found: apt-get install redis-server (make test installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
                                "--save", "", "--appendonly", "no", "--logfile", "redis.log"])
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return process, client
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"redis-server did not start: see {directory}/redis.log") from None
            time.sleep(0.05)


def percentile(values, q):
    return float(np.percentile(values, 100 * q)) if values else None


def replay(store, tx, batch, name):
    """Score tx in time order, `batch` transactions a round trip (1: store.score, one at a time)."""
    raws, days = intake.raw_transactions(tx), tx["TX_TIME_DAYS"].to_numpy()
    ids, frauds = tx["TRANSACTION_ID"].astype(str).tolist(), (tx["TX_FRAUD"] == 1).tolist()
    rows, round_trips, scoring = [], [], 0.0
    for day in range(days.max() + 1):
        store.feedback_many([(ids[i], frauds[i]) for i in np.flatnonzero(days == day - DELAY)])
        today = np.flatnonzero(days == day)
        for start in range(0, len(today), batch):
            chunk = [raws[i] for i in today[start:start + batch]]
            began = time.perf_counter()
            rows += [store.score(chunk[0])] if batch == 1 else store.score_features(chunk)
            round_trips.append(time.perf_counter() - began)
            scoring += round_trips[-1]
        if (day + 1) % 5 == 0 or day == days.max():
            print(f"  {name}: day {day + 1}/{days.max() + 1}, {len(rows):,} transactions, "
                  f"{len(rows) / scoring:,.0f}/s", flush=True)
    return rows, {"transactions_per_s": len(rows) / scoring,
                  "round_trip_p50_ms": 1000 * percentile(round_trips, .5),
                  "round_trip_p99_ms": 1000 * percentile(round_trips, .99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--terminals", type=int, default=10000)
    ap.add_argument("--days", type=int, default=40)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    began = time.monotonic()
    # starts at a midnight (UTC): the online day numbers are then the batch TX_TIME_DAYS plus a constant
    _, _, tx = simulate.simulate(args.customers, args.terminals, args.days, start_date="2018-04-01", seed=args.seed)
    print(f"simulated {len(tx):,} transactions ({tx.TX_FRAUD.mean():.2%} fraud) in {time.monotonic() - began:.1f} s",
          flush=True)
    began = time.monotonic()
    batch = features.add_features(tx)[FEATURES].to_numpy(dtype=float)
    print(f"batch features in {time.monotonic() - began:.1f} s", flush=True)
    directory = tempfile.mkdtemp(prefix="datalab-bench-features-")
    process, client = start_redis(directory)
    results = {}
    try:
        for name, size in (("one per round trip", 1), (f"pipelined, {args.batch} per round trip", args.batch)):
            client.flushall()
            rows, figures = replay(online.FeatureStore(client), tx, size, name)
            figures["worst_difference"] = float(np.abs(
                np.array([[row[f] for f in FEATURES] for row in rows]) - batch).max())
            figures["redis_used_memory_mb"] = client.info("memory")["used_memory"] / 2**20
            results[name] = figures
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n{len(tx):,} transactions, {args.customers:,} customers, {args.terminals:,} terminals, {args.days} days")
    print(f"{'scoring':34} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'Redis MB':>9} {'|online - batch|':>17}")
    for name, r in results.items():
        print(f"{name:34} {r['transactions_per_s']:8,.0f} {r['round_trip_p50_ms']:8.2f} {r['round_trip_p99_ms']:8.2f} "
              f"{r['redis_used_memory_mb']:9.1f} {r['worst_difference']:17.3g}")
    worst = max(r["worst_difference"] for r in results.values())
    print(f"worst difference from batch: {worst:.3g} (target <= 1e-6: {'met' if worst <= 1e-6 else 'missed'})")
    print(json.dumps({"transactions": len(tx), "customers": args.customers, "terminals": args.terminals,
                      "days": args.days, "results": results, "worst_difference": worst}))


if __name__ == "__main__":
    main()
