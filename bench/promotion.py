#!/usr/bin/env python3
"""A promotion under steady load: 100 req/s through the scoring edge while an
approver sets the production alias through the registry gateway (what the
MLflow UI does) and the controller gates and rolls the version out. Prints
failed requests (target 0), the time from the alias set until every response
comes from the new version (target <= 30 s), and the controller's own split
(gate, rollout) from the audit log. Last line: one JSON object.

    .venv/bin/python bench/promotion.py [--version N | --copy] [--as alice] [--settings FILE]

--copy (the default) registers a new version with the artifacts of the one
serving, so the gate passes by construction and only the mechanism is timed.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from switch import load_arguments, switch_s, under_load  # noqa: E402

from datalab import audit, deploy, promotion, settings as settings_mod  # noqa: E402


def copy_of_serving(settings, user, serving):
    token = promotion.user_token(settings, user)
    found = promotion.registry_api(settings, token, "GET", f"model-versions/get?name={serving['model']}"
                                   f"&version={serving['version']}")["model_version"]
    made = promotion.registry_api(settings, token, "POST", "model-versions/create", {
        "name": serving["model"], "source": found["source"], "run_id": found["run_id"],
        "model_id": found["source"].rsplit("/", 1)[-1], "description": "bench/promotion.py copy"})
    return made["model_version"]["version"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", help="the version of the serving model to promote (default: a copy)")
    ap.add_argument("--as", dest="as_user", default="alice", help="an approver")
    load_arguments(ap)
    args = ap.parse_args()
    settings = settings_mod.load(args.settings)
    before = deploy.current(settings)
    if not before:
        raise SystemExit("no model serving yet: `make up` (the demo loop) or datalab deploy first")
    model = before["model"]
    version = args.version or copy_of_serving(settings, args.as_user, before)
    seen = len(audit.records(settings))

    async def set_alias():
        await asyncio.to_thread(promotion.set_production_alias, settings, args.as_user, model, version)
        set_at = time.perf_counter()
        record = await asyncio.to_thread(promotion.wait_outcome, settings, model, version, seen, 300)
        return set_at, record

    run = under_load(settings, args.rate, args.seconds, set_alias)
    set_at, record = run["result"]
    switched = switch_s(run, version)
    gate_s = record["duration_s"] - (record.get("rollout_s") or 0)
    print(f"\n{model} v{before['version']} -> v{version}, promoted by {args.as_user}: {record['outcome']}")
    print(f"{'requests sent':30} {run['requests']}")
    print(f"{'failed requests':30} {run['failed']}   (target 0)")
    print(f"{'all traffic on new version':30} {switched:.1f} s after the alias was set   (target <= 30 s)")
    print(f"{'  of which gate (fetch, score)':30} {gate_s:.1f} s   (controller's audit record)")
    print(f"{'  of which rollout':30} {record.get('rollout_s') or 0:.1f} s   (`datalab deploy` alone: bench/rollout.py)")
    print(json.dumps({"model": model, "from": before["version"], "to": version, "outcome": record["outcome"],
                      "failed": run["failed"], "requests": run["requests"], "switch_s": round(switched, 1),
                      "gate_s": round(gate_s, 1), "rollout_s": record.get("rollout_s")}))


if __name__ == "__main__":
    main()
