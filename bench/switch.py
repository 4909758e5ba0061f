"""Steady load through the scoring edge while something moves the service to
another version (a `datalab deploy`, a promotion): how many requests failed,
and when the last response from another version came. Shared by rollout.py
and promotion.py."""

import asyncio
import json
import ssl
import time
import urllib.request

from loadgen import fixed_rate

from datalab import credentials


def load_arguments(parser):
    """The options every switch-under-load benchmark takes."""
    parser.add_argument("--settings")
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=60, help="length of the load")


def edge_url(settings):
    return settings.scoring_url


def edge_tls(settings):
    """What the edge is checked against over HTTPS: the lab's CA where DataLab made its certificate."""
    ca = credentials.lab_ca_file(settings)
    return ssl.create_default_context(cafile=str(ca) if ca else None)


def under_load(settings, rate, seconds, action, warmup=3.0):
    """Run `action` (an async callable) `warmup` s into a fixed-rate load; returns
    {"started", "result" (the action's), "failed", "requests", "seen": [(time, version)]}."""
    edge, tls = edge_url(settings), edge_tls(settings)
    example = json.loads(urllib.request.urlopen(f"{edge}/v1/schema", context=tls).read())["example"]
    seen = []  # (time, version)

    def on_response(status, payload):
        if status == 200:
            seen.append((time.perf_counter(), json.loads(payload)["version"]))

    async def run():
        load = asyncio.create_task(fixed_rate(f"{edge}/v1/score", json.dumps(example).encode(), rate, seconds,
                                              on_response=on_response, tls=tls))
        await asyncio.sleep(warmup)
        started = time.perf_counter()
        result = await action()
        latencies, failures = await load
        return started, result, failures

    started, result, failures = asyncio.run(run())
    return {"started": started, "result": result, "failed": failures, "requests": int(rate * seconds), "seen": seen}


def switch_s(run, new_version):
    """Seconds from the action's start until the last answer from another version."""
    old = [t for t, v in run["seen"] if v != new_version and t >= run["started"]]
    return (max(old) - run["started"]) if old else 0.0
