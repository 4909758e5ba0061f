#!/usr/bin/env python3
"""Login → notebook server ready → first cell executed, and login storms,
through the real hub, proxy and directory.

Adds bench users (bench01..benchNN, N the largest storm) to the lab's demo
directory, then measures
  - per profile, one user at a time: a cold round (the host's page cache
    dropped first: run as root) and --rounds warm ones; each logs in, starts
    a server of the profile, opens a kernel of the image's own kernelspec and
    runs a first cell (`import tensorflow` in the TensorFlow images); then
    stops the server. Figures: login → ready, login → first cell executed;
  - login storms: for each --storm size, that many users log in and start the
    first profile at once; a 429 ("Too many users trying to log in right now")
    is waited out and retried as a person would, up to --deadline. Figures:
    served, retried, failed, login → ready p50/p95/max, the hub's worst
    event-loop lag (bench/hubwatch.py) and whether it restarted;
prints them next to their targets, then removes the bench users and their
servers. Last line: one JSON object with every figure and the targets.

    .venv/bin/python bench/spawn.py [--settings FILE] [--rounds 10] [--profiles python,datascience,tensorflow]
                                    [--users 20] [--storm 20,40] [--deadline 300]
"""

import argparse
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from directory import add_users, remove_users  # noqa: E402
from hubclient import HubSession  # noqa: E402
from hubwatch import HubWatch  # noqa: E402
from kernel import Kernel  # noqa: E402

from datalab_hub.spawner import IN_LINE  # noqa: E402

from datalab import credentials, settings as settings_mod  # noqa: E402
from datalab.docker import Docker  # noqa: E402

TARGETS = {  # the storm targets are for --users at once (20)
    "one_user_ready_p50_s": 2.0,  # per profile, over the warm rounds
    "storm_all_served": True,
    "storm_ready_p50_s": 12.0,
    "storm_worst_lag_s": 1.0,
    "storm_hub_restarted": False,
}
# What a user runs first: in the TensorFlow images that is the import, which is most of the wait.
FIRST_CELL = {
    "tensorflow": "import tensorflow as tf; tf.reduce_sum([1])",
    "tensorflow-gpu": "import tensorflow as tf; tf.reduce_sum([1])",
}
DEFAULT_FIRST_CELL = "1+1"
CELL_TIMEOUT_S = 300  # a cold `import tensorflow` on 2 cores takes tens of seconds
RETRY_WAIT_MAX_S = 30  # a person waits what the 429 page suggests, but not longer than this
ADMIN = "carol"  # the demo directory's hub admin: reads /hub/metrics


def progress(line):
    # one write per line: storm threads report at the same time
    sys.stdout.write(f"  {line}\n")
    sys.stdout.flush()


def pct(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fmt(value, width=7):
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"


def verdict(ok):
    return "unknown" if ok is None else ("met" if ok else "missed")


def user_token(url, user, password):
    """A hub API token of `user` (for the server's REST and websocket API, or /hub/metrics),
    made outside every timed span."""
    s = HubSession(url)
    r = s.login(user, password)
    if r.status_code != 200:
        raise RuntimeError(f"{user} could not log in: HTTP {r.status_code}")
    return s.token(user)


def drop_caches():
    """Empty the host's page cache, so the next round reads images and Python files from disk.
    Returns None, or why it could not."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        return f"could not drop the page cache ({e})"
    return None


def own_kernel(server_url, token):
    """The image's own kernelspec: the server's default if it is installed (the images remove
    ipykernel's `python3`, which jupyter_server names the default unless told otherwise), else
    the only one there is."""
    r = requests.get(f"{server_url}api/kernelspecs", headers={"Authorization": f"token {token}"}, timeout=30)
    r.raise_for_status()
    specs = r.json()
    names = sorted(specs["kernelspecs"])
    if specs.get("default") in names:
        return specs["default"]
    if len(names) == 1:
        return names[0]
    raise LookupError(f"default kernelspec {specs.get('default')!r} is not among {names}")


def one_round(url, user, password, profile, token):
    """Log in, start `profile`, run the first cell in a kernel of the image's own kernelspec,
    stop the server. Seconds since the login started; a failure is an error, not a crash."""
    out = {"ready_s": None, "first_cell_s": None, "ready_to_first_cell_s": None, "kernel": None, "error": None}
    s = HubSession(url)
    t0 = time.monotonic()
    try:
        r = s.login(user, password)
        if r.status_code != 200:
            raise RuntimeError(f"login HTTP {r.status_code}")
        s.start(user, profile)
        out["ready_s"] = time.monotonic() - t0
        server = s.server_url(user)
        out["kernel"] = own_kernel(server, token)
        kernel = Kernel(server, token, out["kernel"])
        try:
            kernel.ws.settimeout(CELL_TIMEOUT_S)  # the kernel says nothing while it imports
            status, text = kernel.execute(FIRST_CELL.get(profile, DEFAULT_FIRST_CELL), timeout=CELL_TIMEOUT_S)
            if status != "ok":
                raise RuntimeError(f"first cell: {status}: {text[:200]}")
            out["first_cell_s"] = time.monotonic() - t0
            out["ready_to_first_cell_s"] = out["first_cell_s"] - out["ready_s"]
        finally:
            kernel.close()
    except Exception as e:  # a failed round is a figure, not a crash
        out["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    try:
        s.stop(user)
    except Exception as e:  # the next round would find it running: say so
        out["error"] = out["error"] or f"stop: {type(e).__name__}: {str(e)[:200]}"
    return out


def describe(r):
    if r["error"] and r["ready_s"] is None:
        return r["error"]
    text = f"ready {r['ready_s']:.2f} s"
    text += f", first cell {r['first_cell_s']:.2f} s" if r["first_cell_s"] is not None else ""
    return text + (f" ({r['error']})" if r["error"] else "")


def profile_figures(url, user, password, profile, rounds):
    """A cold round and `rounds` warm ones of one profile."""
    figures = {"n": rounds, "first_cell_code": FIRST_CELL.get(profile, DEFAULT_FIRST_CELL), "errors": []}
    try:
        token = user_token(url, user, password)
    except Exception as e:  # no token, no kernel: every round is this failure
        token_error = f"no token for {user}: {type(e).__name__}: {str(e)[:200]}"
        print(f"  {profile}: {token_error}", flush=True)
        return {**figures, "ok": 0, "p50_s": None, "p95_s": None, "errors": [token_error]}

    why_not = drop_caches()
    cold = {"kind": "warm-only" if why_not else "cold", **one_round(url, user, password, profile, token)}
    if why_not:
        cold["why_warm"] = why_not
    print(f"  {profile} {cold['kind']} round: " + describe(cold) + (f" — {why_not}" if why_not else ""), flush=True)
    warm = []
    for i in range(rounds):
        warm.append(one_round(url, user, password, profile, token))
        print(f"  {profile} warm round {i + 1}/{rounds}: {describe(warm[-1])}", flush=True)

    ready = [r["ready_s"] for r in warm if r["ready_s"] is not None]
    cell = [r["first_cell_s"] for r in warm if r["first_cell_s"] is not None]
    between = [r["ready_to_first_cell_s"] for r in warm if r["ready_to_first_cell_s"] is not None]
    return {**figures, "ok": len(ready), "p50_s": pct(ready, .5), "p95_s": pct(ready, .95),
            "first_cell_ok": len(cell), "first_cell_p50_s": pct(cell, .5), "first_cell_p95_s": pct(cell, .95),
            "ready_to_first_cell_p50_s": pct(between, .5),
            "kernel": next((r["kernel"] for r in [cold, *warm] if r["kernel"]), None),
            "cold": cold, "warm_rounds": warm, "errors": [r["error"] for r in [cold, *warm] if r["error"]]}


@dataclass
class Attempt:
    """One storm user's try: login → ready, or why not."""
    user: str
    session: HubSession
    ready_s: float | None = None
    throttled: int = 0  # 429 answers waited out
    in_line: bool = False  # the spawn page showed its place in the hub's line of starts
    error: str | None = None
    server_errors: list = field(default_factory=list)  # every 5xx answer, with who gave it

    @property
    def served(self):
        return self.ready_s is not None and not self.server_errors


def note_5xx(attempt):
    """A response hook: every 5xx, redirects included. The hub stamps X-JupyterHub-Version on
    what it answers itself; the proxy copies only the content type of an error page it fetches."""
    def hook(r, *args, **kwargs):
        if r.status_code >= 500:
            path = urlsplit(r.url).path
            if "X-JupyterHub-Version" in r.headers:
                origin = "hub"
            else:
                origin = "proxy" if path.startswith("/hub/") else "notebook server or proxy"
            attempt.server_errors.append((origin, f"HTTP {r.status_code} from the {origin} on {path}"))
    return hook


def storm_user(url, user, password, profile, deadline_s):
    """What a person does: log in, pick the profile, wait out a 429 and submit again,
    until the server is ready or the deadline passes."""
    a = Attempt(user, HubSession(url))
    a.session.http.hooks["response"].append(note_5xx(a))
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    try:
        r = a.session.login(user, password)
        if r.status_code != 200:
            raise RuntimeError(f"login HTTP {r.status_code}")
        throttled = []
        try:
            a.session.start_when_allowed(user, profile, timeout=max(1.0, deadline - time.monotonic()),
                                         longest_wait=RETRY_WAIT_MAX_S, throttled=throttled)
        finally:
            a.throttled = len(throttled)
            a.in_line = any(m.startswith(IN_LINE) for m in a.session.progress_messages)
        a.ready_s = time.monotonic() - t0
    except Exception as e:  # a failed login or spawn is a figure, not a crash
        a.error = f"{type(e).__name__}: {str(e)[:200]}"
    if a.server_errors:  # the first 5xx is what went wrong, whatever the client then raised
        a.error = a.server_errors[0][1]
    progress(f"{user}: " + (f"ready after {a.ready_s:.2f} s" + (f" ({a.throttled} x 429)" if a.throttled else "")
                            if a.served else a.error))
    return a


def stop_servers(attempts):
    """Stop every storm user's server, each with the user's own session (admin-free), and wait
    until each is gone; returns those that would not stop."""
    def stop(a):
        try:
            a.session.stop(a.user, timeout=120)
            return None
        except Exception as e:  # reported, and the next storm starts anyway
            return f"{a.user}: {type(e).__name__}: {str(e)[:200]}"

    with ThreadPoolExecutor(8) as pool:
        return [left for left in pool.map(stop, attempts) if left]


def storm(url, names, passwords, profile, deadline_s, docker, lab, admin_token):
    print(f"  {len(names)} users logging in at once ({profile}) ...", flush=True)
    watch = HubWatch(docker, lab, url, admin_token)
    with ThreadPoolExecutor(len(names)) as pool:
        attempts = list(pool.map(lambda n: storm_user(url, n, passwords[n], profile, deadline_s), names))
    origins = Counter(origin for a in attempts for origin, _ in a.server_errors)
    hub = watch.report(origins["proxy"])  # before the stops, which are not the storm
    served = [a.ready_s for a in attempts if a.served]
    figures = {
        "n": len(names), "profile": profile, "deadline_s": deadline_s,
        "served": len(served), "retried": sum(a.served and a.throttled > 0 for a in attempts),
        "failed": len(names) - len(served), "answers_429": sum(a.throttled for a in attempts),
        "waited_in_line": sum(a.in_line for a in attempts),
        "p50_s": pct(served, .5), "p95_s": pct(served, .95), "max_s": max(served, default=None),
        "hub_5xx": origins["hub"], "proxy_5xx": origins["proxy"], "server_5xx": origins["notebook server or proxy"],
        **hub,
        "failures": dict(Counter(a.error for a in attempts if not a.served)),
        "users": [{"user": a.user, "ready_s": a.ready_s, "served": a.served, "answers_429": a.throttled,
                   "in_line": a.in_line, "error": a.error} for a in attempts],
    }
    print(f"  stopping {len(names)} servers ...", flush=True)
    figures["left_running"] = stop_servers(attempts)
    return figures


def storm_verdicts(figures):
    lag = figures["worst_lag_s"]
    restarted = figures["hub_restarted"]
    return {
        "all_served": verdict(figures["served"] == figures["n"]),
        "p50": verdict(figures["p50_s"] is not None and figures["p50_s"] <= TARGETS["storm_ready_p50_s"]),
        "worst_lag": verdict(None if lag is None else
                             lag <= TARGETS["storm_worst_lag_s"] and not figures["worst_lag_is_lower_bound"]),
        "no_restart": verdict(None if restarted is None else restarted == TARGETS["storm_hub_restarted"]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings")
    ap.add_argument("--rounds", type=int, default=10, help="warm rounds per profile (after one cold round)")
    ap.add_argument("--profiles", default="python,datascience,tensorflow",
                    help="profiles timed one user at a time; the first is the one the storms start")
    ap.add_argument("--users", type=int, default=20,
                    help="the storm size judged against the storm targets (run even if --storm lacks it; 0: none)")
    ap.add_argument("--storm", default="20,40", help="storm sizes, run in turn (\"\" or 0: no storm)")
    ap.add_argument("--deadline", type=float, default=300, help="seconds a storm user keeps trying")
    args = ap.parse_args()
    settings = settings_mod.load(args.settings)
    docker = Docker(settings)
    url = settings.hub_url.rstrip("/")
    profiles = args.profiles.split(",")
    sizes = [int(n) for n in args.storm.split(",") if n.strip() and int(n) > 0]
    if args.users > 0 and args.users not in sizes:
        sizes.append(args.users)
    names = [f"bench{i:02d}" for i in range(1, max(sizes, default=1) + 1)]
    passwords = add_users(docker, settings, names)
    results = {}
    try:
        for profile in profiles:
            results[f"one_user_{profile}"] = profile_figures(url, names[0], passwords[names[0]], profile, args.rounds)

        admin_password = credentials.demo_logins(settings).get(ADMIN)
        try:
            admin_token = user_token(url, ADMIN, admin_password) if admin_password else None
        except Exception as e:  # the lag then comes from the hub's logs alone
            print(f"  no admin token ({ADMIN}): {type(e).__name__}: {e}", flush=True)
            admin_token = None
        for size in sizes:
            results[f"storm_{size}"] = storm(url, names[:size], passwords, profiles[0], args.deadline, docker,
                                             settings.lab, admin_token)
    finally:
        remove_users(docker, settings, names)

    print()
    target = TARGETS["one_user_ready_p50_s"]
    print("One user per profile: login -> server ready over the warm rounds; cell = login -> first cell executed")
    print(f"{'profile':14} {'ready':>7} {'p50 s':>7} {'p95 s':>7} {'cold cell s':>12} {'warm cell p50 s':>16}"
          f"   target: ready p50 <= {target:g} s")
    verdicts = {}
    for profile in profiles:
        one = results[f"one_user_{profile}"]
        cold = one.get("cold", {})
        mark = "*" if cold.get("kind") == "warm-only" else " "
        verdicts[f"one_user_{profile}_ready_p50"] = verdict(one["p50_s"] is not None and one["p50_s"] <= target)
        print(f"{profile:14} {one['ok']:>3}/{one['n']:<3} {fmt(one['p50_s'])} {fmt(one['p95_s'])} "
              f"{fmt(cold.get('first_cell_s'), 11)}{mark} {fmt(one.get('first_cell_p50_s'), 16)}"
              f"   {verdicts[f'one_user_{profile}_ready_p50']}")
    if any(results[f"one_user_{p}"].get("cold", {}).get("kind") == "warm-only" for p in profiles):
        print("  * warm-only: the page cache could not be dropped (not root?)")

    print()
    print(f"Login storms ({profiles[0]}): login -> ready over the served users; retried = served after a 429; "
          "in line = shown a place in the hub's line of starts")
    print(f"{'users at once':14} {'served':>7} {'retried':>7} {'in line':>7} {'failed':>6} {'p50 s':>7} {'p95 s':>7} "
          f"{'max s':>7}"
          f" {'worst lag':>11} {'restarted':>9}   target")
    for size in sizes:
        s = results[f"storm_{size}"]
        restarted = {None: "unknown", True: "yes", False: "no"}[s["hub_restarted"]]
        line = (f"{size:<14} {s['served']:>3}/{s['n']:<3} {s['retried']:>7} {s['waited_in_line']:>7} {s['failed']:>6} "
                f"{fmt(s['p50_s'])} "
                f"{fmt(s['p95_s'])} {fmt(s['max_s'])} {s['worst_lag']:>11} {restarted:>9}   ")
        if size == args.users:
            v = storm_verdicts(s)
            verdicts.update({f"storm_{size}_{k}": x for k, x in v.items()})
            line += (f"all served: {v['all_served']}; p50 <= {TARGETS['storm_ready_p50_s']:g} s: {v['p50']}; "
                     f"worst lag <= {TARGETS['storm_worst_lag_s']:g} s: {v['worst_lag']}; "
                     f"no restart: {v['no_restart']}")
        else:
            line += f"(the targets are for {args.users} at once)"
        print(line)

    for profile in profiles:
        errors = results[f"one_user_{profile}"]["errors"]
        if errors:
            print(f"{profile} round failures:", *sorted(set(errors)), sep="\n  ")
    for size in sizes:
        s = results[f"storm_{size}"]
        print(f"storm {size}: {s['answers_429']} x 429 waited out; 5xx from the hub {s['hub_5xx']}, "
              f"from the proxy (hub unreachable) {s['proxy_5xx']}, from notebook servers {s['server_5xx']}; "
              f"lag histogram {s['lag_metric_bucket'] or '-'}, logged max "
              + (f"{s['lag_log_max_s']:.2f} s" if s["lag_log_max_s"] is not None else "-"))
        for reason, count in sorted(s["failures"].items(), key=lambda kv: -kv[1]):
            print(f"  failed {count} x: {reason}")
        for line in s["restart_evidence"] + s["hub_notes"]:
            print(f"  hub: {line}")
        for line in s["left_running"]:
            print(f"  not stopped: {line}")

    results["targets"] = {**TARGETS, "storm_users": args.users}
    results["verdicts"] = verdicts
    print(json.dumps(results))


if __name__ == "__main__":
    main()
