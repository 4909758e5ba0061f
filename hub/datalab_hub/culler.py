"""Idle culler, run by the hub as a managed service.

Stops servers idle for longer than --timeout. Unlike plain last-activity
culling, it asks each candidate server itself before stopping it: a server
whose kernels are busy (a long training cell prints nothing for a while) or
that saw activity the hub has not heard of yet is left alone.

    python -m datalab_hub.culler --timeout 3600 --every 300 [--once]
"""

import argparse
import logging
import os
import time
from datetime import datetime, timezone

import requests

log = logging.getLogger("datalab.culler")


def parse_time(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class Culler:
    def __init__(self, api_url, token, proxy_url, timeout):
        self.api = api_url.rstrip("/")
        self.proxy = proxy_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def server_view(self, server_url):
        """(kernels busy?, the server's own last activity) from the server itself."""
        status = self.http.get(f"{self.proxy}{server_url}api/status", timeout=10)
        kernels = self.http.get(f"{self.proxy}{server_url}api/kernels", timeout=10)
        status.raise_for_status()
        kernels.raise_for_status()
        busy = any(k.get("execution_state") == "busy" for k in kernels.json())
        return busy, parse_time(status.json().get("last_activity"))

    def cull_once(self, now=None):
        """Stop every idle server; returns the names ("user/server") stopped."""
        now = now or datetime.now(timezone.utc)
        users = self.http.get(f"{self.api}/users", params={"state": "ready"}, timeout=30)
        users.raise_for_status()
        stopped = []
        for user in users.json():
            for name, server in (user.get("servers") or {}).items():
                if not server.get("ready"):
                    continue
                last = parse_time(server.get("last_activity")) or parse_time(server.get("started"))
                if last and (now - last).total_seconds() < self.timeout:
                    continue
                try:
                    busy, own_last = self.server_view(server["url"])
                except requests.RequestException as e:
                    log.warning("cannot ask %s/%s about its kernels (%s); not culling", user["name"], name, e)
                    continue
                if busy:
                    log.info("%s/%s is idle by the hub's clock but a kernel is busy; kept", user["name"], name)
                    continue
                if own_last and (now - own_last).total_seconds() < self.timeout:
                    continue
                path = f"/users/{user['name']}/servers/{name}" if name else f"/users/{user['name']}/server"
                r = self.http.delete(f"{self.api}{path}", timeout=30)
                if r.status_code in (202, 204):
                    log.info("stopped idle server %s/%s (last activity %s)", user["name"], name, last)
                    stopped.append(f"{user['name']}/{name}")
                else:
                    log.warning("could not stop %s/%s: %s %s", user["name"], name, r.status_code, r.text[:200])
        return stopped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=int, required=True, help="seconds of inactivity before a server is stopped")
    ap.add_argument("--every", type=int, default=300, help="seconds between two passes")
    ap.add_argument("--once", action="store_true", help="one pass, then exit (prints what it stopped)")
    ap.add_argument("--api-url", default=os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api"))
    ap.add_argument("--proxy-url", default="http://127.0.0.1:8000", help="where the servers are reached")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s culler] %(message)s")
    culler = Culler(args.api_url, os.environ["JUPYTERHUB_API_TOKEN"], args.proxy_url, args.timeout)
    if args.once:
        for name in culler.cull_once():
            print(name)
        return
    while True:
        try:
            culler.cull_once()
        except requests.RequestException as e:
            log.warning("pass failed: %s", e)
        time.sleep(args.every)


if __name__ == "__main__":
    main()
