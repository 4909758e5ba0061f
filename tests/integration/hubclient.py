"""A browser-like client of the hub: login form with _xsrf, OAuth redirects."""

import json
import re
import time
from urllib.parse import urlsplit

import requests
from jupyterhub.utils import subdomain_hook_idna


class HubSession:
    def __init__(self, base_url, per_user_origins=True):
        self.base = base_url.rstrip("/")
        self.per_user_origins = per_user_origins
        self.http = requests.Session()
        self.progress_messages = []  # what the spawn page's event stream said, in order

    def xsrf(self):
        page = self.http.get(f"{self.base}/hub/login", timeout=10)
        page.raise_for_status()
        match = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        assert match, "login form carries no _xsrf field"
        return match.group(1)

    def login(self, username, password):
        """POST the login form; returns the final response (redirects followed)."""
        return self.http.post(
            f"{self.base}/hub/login?next=",
            data={"username": username, "password": password, "_xsrf": self.xsrf()},
            timeout=60,
            allow_redirects=True,
        )

    def hub_api(self, path, method="GET", **kwargs):
        # the hub's _xsrf cookie; a single-user server sets its own under /user/
        headers = {"X-XSRFToken": self.hub_xsrf()}
        return self.http.request(method, f"{self.base}/hub/api{path}", headers=headers, timeout=30, **kwargs)

    def spawn(self, username, profile=None, server=""):
        """Submit the spawn form (the profile picker) as a browser would."""
        url = f"{self.base}/hub/spawn/{username}" + (f"/{server}" if server else "")
        data = {"_xsrf": self.hub_xsrf()}
        if profile:
            data["profile"] = profile
        return self.http.post(url, data=data, timeout=120, allow_redirects=True)

    def start(self, username, profile=None, server=""):
        """Spawn unless running, and wait until ready."""
        info = self.hub_api(f"/users/{username}").json()
        if not (info.get("servers") or {}).get(server):
            r = self.spawn(username, profile, server)
            assert r.status_code == 200, f"spawn of {username}/{server} failed: {r.status_code} {r.text[:500]}"
        return self.wait_server_ready(username, server=server)

    def start_when_allowed(self, username, profile=None, timeout=300, longest_wait=30, throttled=None):
        """Spawn as a person does when the hub answers a login wave with 429 "Too many
        users trying to log in right now. Try again in N seconds": wait as told (at most
        `longest_wait`; the active-server-limit 429 names no time) and submit the form
        again, then wait until ready as the spawn page does. Appends
        each 429 to the list `throttled`. Any other refusal raises with the hub's answer."""
        throttled = [] if throttled is None else throttled
        deadline = time.monotonic() + timeout
        r = self.spawn(username, profile)
        while r.status_code == 429:
            throttled.append(r)
            wait = min(float(r.headers.get("Retry-After") or longest_wait), longest_wait)
            if time.monotonic() + wait > deadline:
                raise TimeoutError(f"{username}: still told to retry after {timeout}s ({len(throttled)} times)")
            time.sleep(wait)
            r = self.spawn(username, profile)
        # a refused spawn re-renders the form at /hub/spawn/, with the reason
        if r.status_code != 200 or "/hub/spawn/" in r.url:
            raise AssertionError(f"spawn of {username} failed: {r.status_code} at {r.url}: {r.text[:500]}")
        self.wait_server_ready(username, timeout=max(1.0, deadline - time.monotonic()))
        return len(throttled)

    def stop(self, username, server="", timeout=60):
        path = f"/users/{username}/servers/{server}" if server else f"/users/{username}/server"
        self.hub_api(path, method="DELETE")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server not in (self.hub_api(f"/users/{username}").json().get("servers") or {}):
                return
            time.sleep(0.25)
        raise TimeoutError(f"{username}/{server} did not stop")

    def hub_xsrf(self):
        found = [c.value for c in self.http.cookies if c.name == "_xsrf" and c.path.startswith("/hub")]
        return found[0] if found else self.xsrf()

    def wait_server_ready(self, username, server="", timeout=120):
        """The server's model once it is ready. Waits as the spawn-pending page does: on
        the hub's progress event stream, which says "ready" (or "failed") the moment the
        hub knows, instead of polling the hub's API."""
        path = f"/users/{username}/servers/{server}/progress" if server else f"/users/{username}/server/progress"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self.http.get(f"{self.base}/hub/api{path}", headers={"X-XSRFToken": self.hub_xsrf()},
                                   stream=True, timeout=(10, max(1.0, deadline - time.monotonic()))) as events:
                    for line in events.iter_lines() if events.status_code == 200 else ():
                        event = json.loads(line[5:]) if line.startswith(b"data:") else {}
                        if event.get("message"):
                            self.progress_messages.append(event["message"])
                        if event.get("failed"):
                            raise RuntimeError(f"{username}/{server} did not start: {event.get('message')}")
                        if event.get("ready"):
                            break
            except (requests.ConnectionError, requests.Timeout):
                pass  # the stream broke off: the hub's model says where the server is
            found = (self.hub_api(f"/users/{username}").json().get("servers") or {}).get(server)
            if found and found.get("ready"):
                return found
            time.sleep(0.25)  # no stream (not pending yet, or it ended early): look again
        raise TimeoutError(f"{username}/{server} not ready after {timeout}s")

    def open_server(self, username, server=""):
        """Do the OAuth dance onto /user/<name>/ (GET lab first)."""
        return self.http.get(f"{self.server_url(username, server)}lab", timeout=60, allow_redirects=True)

    def origin(self, username):
        """Where the user's servers are: their own origin with per-user origins (the
        hub's naming scheme, JupyterHub's "idna" subdomain hook), else the hub's."""
        if not self.per_user_origins:
            return self.base
        hub = urlsplit(self.base)
        return f"{hub.scheme}://{subdomain_hook_idna(username, hub.hostname, 'user')}:{hub.port}"

    def server_url(self, username, server=""):
        return f"{self.origin(username)}/user/{username}/" + (f"{server}/" if server else "")

    def contents(self, owner, path="", server=""):
        return self.http.get(f"{self.server_url(owner, server)}api/contents/{path}", timeout=30, allow_redirects=False)

    def token(self, username):
        """A hub API token of this user (for REST and websocket calls)."""
        r = self.hub_api(f"/users/{username}/tokens", method="POST", json={"note": "tests", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return r.json()["token"]
