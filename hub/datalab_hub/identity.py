"""Asking the hub, with a service's own token, about a user: their groups and
admin flag as the hub knows them now (a user's OAuth token may not carry
them), and tokens issued to them for one purpose (a job's registry access)."""

import time

import requests


class HubUsers:
    def __init__(self, api_url, api_token, cache_seconds=30):
        self.api_url, self.api_token = api_url.rstrip("/"), api_token
        self.cache_seconds = cache_seconds
        self._cache = {}

    def _call(self, method, path, **kwargs):
        return requests.request(method, f"{self.api_url}{path}", timeout=10,
                                headers={"Authorization": f"token {self.api_token}"}, **kwargs)

    def info(self, name):
        """{"name", "admin", "groups"} of the hub user `name`, or None if there is none."""
        cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        r = self._call("GET", f"/users/{name}")
        found = None
        if r.status_code == 200:
            model = r.json()
            found = {"name": model["name"], "admin": bool(model.get("admin")), "groups": model.get("groups", [])}
        self._cache[name] = (time.monotonic(), found)
        return found

    def issue_token(self, name, scopes, expires_in, note):
        """A new API token of user `name` limited to `scopes`, expiring after expires_in seconds."""
        r = self._call("POST", f"/users/{name}/tokens",
                       json={"scopes": list(scopes), "expires_in": int(expires_in), "note": note})
        r.raise_for_status()
        return r.json()["token"]
