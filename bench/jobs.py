#!/usr/bin/env python3
"""Job submit → running latency (and → finished), through the real jobs service.

Submits --n trivial notebooks one after another as --user (on the lab's host,
with the CLI token), waits for each, and prints p50/p95 next to the target
(submit → running ≤ 3 s, docs/targets.md). Last line: one JSON object.

    .venv/bin/python bench/jobs.py [--settings FILE] [--n 10] [--user alice] [--profile datascience]
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datalab import settings as settings_mod  # noqa: E402
from datalab.credentials import jobs_client  # noqa: E402

TARGET_S = 3.0
NOTEBOOK = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
    {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]}, "outputs": [], "source": "i = 0"},
    {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": "print('job', i)"}]}


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--user", default="alice", help="a user who has logged in once")
    ap.add_argument("--profile", default="datascience")
    args = ap.parse_args()
    client = jobs_client(settings_mod.load(args.settings))
    to_running, to_done, failed = [], [], 0
    for i in range(args.n):
        job = client.submit(NOTEBOOK, params={"i": i}, profile=args.profile, as_user=args.user)["job"]
        done = client.wait(job["id"], timeout=300, every=0.2)
        if done["status"] != "succeeded":
            failed += 1
            print(f"  job {i}: {done['status']} {done.get('error')}")
            continue
        to_running.append(done["started_at"] - done["submitted_at"])
        to_done.append(done["finished_at"] - done["submitted_at"])
        print(f"  job {i}: running after {to_running[-1]:.2f} s, done after {to_done[-1]:.2f} s", flush=True)
    print()
    print(f"{'measure':24} {'p50 s':>7} {'p95 s':>7}   target")
    print(f"{'submit -> running':24} {pct(to_running, .5):7.2f} {pct(to_running, .95):7.2f}   <= {TARGET_S} s")
    print(f"{'submit -> succeeded':24} {pct(to_done, .5):7.2f} {pct(to_done, .95):7.2f}   (papermill + kernel start)")
    print(json.dumps({"n": args.n, "failed": failed, "submit_to_running_p50_s": pct(to_running, .5),
                      "submit_to_running_p95_s": pct(to_running, .95), "submit_to_done_p50_s": pct(to_done, .5),
                      "mean_to_running_s": statistics.fmean(to_running) if to_running else None,
                      "target_s": TARGET_S}))


if __name__ == "__main__":
    main()
