"""A browser-like client of the hub: login form with _xsrf, OAuth redirects."""

import re
import time

import requests


class HubSession:
    def __init__(self, base_url):
        self.base = base_url.rstrip("/")
        self.http = requests.Session()

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
        hub_xsrf = [c.value for c in self.http.cookies if c.name == "_xsrf" and c.path.startswith("/hub")]
        headers = {"X-XSRFToken": hub_xsrf[0] if hub_xsrf else ""}
        return self.http.request(method, f"{self.base}/hub/api{path}", headers=headers, timeout=30, **kwargs)

    def wait_server_ready(self, username, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            user = self.hub_api(f"/users/{username}").json()
            server = user.get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            time.sleep(0.25)
        raise TimeoutError(f"{username}'s server not ready after {timeout}s")

    def open_server(self, username):
        """Do the OAuth dance onto /user/<name>/ (GET lab first)."""
        return self.http.get(f"{self.base}/user/{username}/lab", timeout=60, allow_redirects=True)

    def contents(self, owner):
        return self.http.get(f"{self.base}/user/{owner}/api/contents", timeout=30, allow_redirects=False)
