#!/usr/bin/env python3
"""A rollout under steady load: 100 req/s through the scoring edge while
`datalab deploy` moves the service to another version. Prints failed requests
(target 0) and the time from the deploy command until every response comes
from the new version (target <= 30 s). Last line: one JSON object.

    .venv/bin/python bench/rollout.py --to fraud-detector@2 [--settings FILE] [--rate 100]
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from loadgen import fixed_rate  # noqa: E402

from datalab import deploy, settings as settings_mod  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", required=True, help="MODEL@VERSION|ALIAS to roll out")
    ap.add_argument("--settings")
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=60, help="length of the load")
    args = ap.parse_args()
    settings = settings_mod.load(args.settings)
    before = deploy.current(settings)
    if not before:
        raise SystemExit("no model deployed yet: datalab deploy MODEL@VERSION first")
    edge = f"http://127.0.0.1:{settings['scoring']['port']}"
    example = json.loads(urllib.request.urlopen(f"{edge}/v1/schema").read())["example"]
    seen = []  # (time, version)

    def on_response(status, payload):
        if status == 200:
            seen.append((time.perf_counter(), json.loads(payload)["version"]))

    async def run():
        load = asyncio.create_task(fixed_rate(f"{edge}/v1/score", json.dumps(example).encode(), args.rate,
                                              args.seconds, on_response=on_response))
        await asyncio.sleep(3)
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "datalab.cli"] + (["--settings", args.settings] if args.settings else [])
        proc = await asyncio.create_subprocess_exec(*cmd, "deploy", args.to, cwd=REPO)
        code = await proc.wait()
        latencies, failures = await load
        return started, code, latencies, failures

    started, code, latencies, failures = asyncio.run(run())
    after = deploy.current(settings)
    new_version = after["version"] if after else None
    old_after_start = [t for t, v in seen if v != new_version and t >= started]
    switched_s = (max(old_after_start) - started) if old_after_start else 0.0
    print(f"\n{before['model']} v{before['version']} -> {args.to}: deploy exit {code}")
    print(f"{'requests sent':28} {int(args.rate * args.seconds)}")
    print(f"{'failed requests':28} {failures}   (target 0)")
    print(f"{'all traffic on new version':28} {switched_s:.1f} s after the deploy command   (target <= 30 s)")
    print(json.dumps({"from": before["version"], "to": new_version, "deploy_exit": code, "failed": failures,
                      "requests": int(args.rate * args.seconds), "switch_s": switched_s}))


if __name__ == "__main__":
    main()
