#!/usr/bin/env python3
"""Login → notebook server ready, through the real hub, proxy and directory.

Adds bench users (bench01..benchNN) to the lab's demo directory, measures
  - one user at a time, --rounds times (login, wait ready, stop), and
  - --users users logging in at once,
prints p50/p95 next to the target in docs/design (p50 ≤ 3 s; all served),
then removes the bench users and their servers. Last line: one JSON object.

    .venv/bin/python bench/spawn.py [--settings FILE] [--users 20] [--rounds 10]
"""

import argparse
import json
import secrets
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from hubclient import HubSession  # noqa: E402

from datalab import credentials, settings as settings_mod  # noqa: E402
from datalab.docker import Docker  # noqa: E402

TARGET_P50_S = 3.0


def directory(docker, settings, tool, ldif):
    """Run ldapadd/ldapdelete inside the directory container, as its admin, over StartTLS."""
    cid = docker.out("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={settings.lab}_directory").split()[0]
    base = settings["directory"]["base_dn"]
    script = (f'LDAPTLS_CACERT=/run/secrets/ldap_ca_crt {tool} -c -ZZ -H ldap://directory:1389 '
              f'-D "cn=admin,{base}" -y /run/secrets/ldap_admin_password')
    proc = docker.run("exec", "-i", cid, "sh", "-c", script, input=ldif, check=False)
    # 68: already exists, 16/20: attribute value missing/present (a re-run after an aborted one)
    if proc.returncode not in (0, 16, 20, 68):
        raise SystemExit(f"{tool} in the directory failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def add_users(docker, settings, names):
    base = settings["directory"]["base_dn"]
    passwords = {n: secrets.token_urlsafe(12) for n in names}
    entries = [f"dn: uid={n},ou=people,{base}\nobjectClass: inetOrgPerson\nuid: {n}\ncn: {n}\nsn: bench\n"
               f"userPassword: {credentials.ssha(passwords[n])}\n" for n in names]
    group = f"dn: cn=datascientists,ou=groups,{base}\nchangetype: modify\nadd: member\n" + "".join(
        f"member: uid={n},ou=people,{base}\n" for n in names)
    directory(docker, settings, "ldapadd", "\n".join(entries))
    directory(docker, settings, "ldapmodify", group)
    return passwords


def remove_users(docker, settings, names):
    base = settings["directory"]["base_dn"]
    group = f"dn: cn=datascientists,ou=groups,{base}\nchangetype: modify\ndelete: member\n" + "".join(
        f"member: uid={n},ou=people,{base}\n" for n in names)
    directory(docker, settings, "ldapmodify", group)
    directory(docker, settings, "ldapdelete", "".join(f"uid={n},ou=people,{base}\n" for n in names))


def login_to_ready(url, user, password, profile):
    """Log in, pick `profile` in the form, wait until the server is ready."""
    s = HubSession(url)
    t0 = time.monotonic()
    try:
        r = s.login(user, password)
        if r.status_code != 200:
            return s, None, f"login {r.status_code}"
        s.start(user, profile)
        return s, time.monotonic() - t0, None
    except Exception as e:  # a failed spawn is a figure, not a crash
        return s, None, str(e)[:200]


def pct(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10, help="sequential logins per profile")
    ap.add_argument("--profiles", default="python,datascience,tensorflow",
                    help="profiles timed one user at a time; the first is used for the concurrent run")
    args = ap.parse_args()
    settings = settings_mod.load(args.settings)
    docker = Docker(settings)
    url = settings.hub_url.rstrip("/")
    names = [f"bench{i:02d}" for i in range(1, args.users + 1)]
    passwords = add_users(docker, settings, names)
    results = {}
    try:
        profiles = args.profiles.split(",")
        for profile in profiles:
            solo = []
            for i in range(args.rounds):
                s, seconds, error = login_to_ready(url, names[0], passwords[names[0]], profile)
                if seconds is not None:
                    solo.append(seconds)
                print(f"  {profile} round {i + 1}/{args.rounds}: " + (f"{seconds:.2f} s" if seconds else error), flush=True)
                s.stop(names[0])
            results[f"one_user_{profile}"] = {"n": args.rounds, "ok": len(solo), "p50_s": pct(solo, .5), "p95_s": pct(solo, .95)}

        print(f"  {args.users} users logging in at once ({profiles[0]}) ...", flush=True)
        with ThreadPoolExecutor(args.users) as pool:
            outcomes = list(pool.map(lambda n: login_to_ready(url, n, passwords[n], profiles[0]), names))
        times = [t for _, t, _ in outcomes if t is not None]
        errors = [e for _, t, e in outcomes if t is None]
        results["concurrent"] = {"n": args.users, "ok": len(times), "failed": len(errors), "profile": profiles[0],
                                 "p50_s": pct(times, .5), "p95_s": pct(times, .95), "max_s": max(times, default=float("nan"))}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda o: o[0][0].stop(o[1]), zip(outcomes, names)))
    finally:
        remove_users(docker, settings, names)

    print()
    print(f"{'scenario':28} {'served':>8} {'p50 s':>7} {'p95 s':>7}   target")
    for profile in profiles:
        one = results[f"one_user_{profile}"]
        print(f"{f'1 user, {profile}':28} {one['ok']:>4}/{one['n']:<3} {one['p50_s']:7.2f} {one['p95_s']:7.2f}   p50 <= {TARGET_P50_S} s")
    many = results["concurrent"]
    print(f"{f'{args.users} users at once, {profiles[0]}':28} {many['ok']:>4}/{many['n']:<3} {many['p50_s']:7.2f} {many['p95_s']:7.2f}   all served, none failed")
    if errors:
        print("failures:", *sorted(set(errors)), sep="\n  ")
    results["target_p50_s"] = TARGET_P50_S
    print(json.dumps(results))


if __name__ == "__main__":
    main()
