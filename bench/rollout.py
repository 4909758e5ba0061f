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
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from switch import load_arguments, switch_s, under_load  # noqa: E402

from datalab import deploy, settings as settings_mod  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", required=True, help="MODEL@VERSION|ALIAS to roll out")
    load_arguments(ap)
    args = ap.parse_args()
    settings = settings_mod.load(args.settings)
    before = deploy.current(settings)
    if not before:
        raise SystemExit("no model deployed yet: datalab deploy MODEL@VERSION first")

    async def deploy_command():
        cmd = [sys.executable, "-m", "datalab.cli"] + (["--settings", args.settings] if args.settings else [])
        proc = await asyncio.create_subprocess_exec(*cmd, "deploy", args.to, cwd=REPO)
        return await proc.wait()

    run = under_load(settings, args.rate, args.seconds, deploy_command)
    after = deploy.current(settings)
    new_version = after["version"] if after else None
    switched = switch_s(run, new_version)
    print(f"\n{before['model']} v{before['version']} -> {args.to}: deploy exit {run['result']}")
    print(f"{'requests sent':28} {run['requests']}")
    print(f"{'failed requests':28} {run['failed']}   (target 0)")
    print(f"{'all traffic on new version':28} {switched:.1f} s after the deploy command   (target <= 30 s)")
    print(json.dumps({"from": before["version"], "to": new_version, "deploy_exit": run["result"],
                      "failed": run["failed"], "requests": run["requests"], "switch_s": switched}))


if __name__ == "__main__":
    main()
