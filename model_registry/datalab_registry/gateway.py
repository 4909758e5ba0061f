"""The registry gateway: MLflow's UI and API under /services/registry/, behind
the hub's login.

A JupyterHub service (run by the hub in its container). Browsers come with
the hub's OAuth cookie; the MLflow client in notebooks and jobs comes with
`Authorization: Bearer <JupyterHub token>` (MLFLOW_TRACKING_TOKEN). Every
request is checked against the team rules of tenancy.py, then forwarded to
the MLflow server, which only the hub's backend network reaches.
"""

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado import httpclient, ioloop, web

from datalab_hub.identity import HubUsers

from . import tenancy

log = logging.getLogger("datalab.registry")
# Hop-by-hop headers, and the caller's credentials, which MLflow never sees.
DROPPED_REQUEST_HEADERS = {"host", "cookie", "authorization", "content-length", "connection", "origin", "referer",
                           "accept-encoding", "transfer-encoding", "keep-alive", "upgrade"}
DROPPED_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "server",
                            "set-cookie", "keep-alive"}
LARGEST_BODY = 2 << 30
URL_PATH_SAFE = "/:@!$&'()*+,;=-._~"
API_PATHS = ("api/", "ajax-api/", "graphql", "get-artifact", "model-versions/get-artifact")


class Owners:
    """Which team owns an experiment, run, registered model or logged model.
    Cached for a minute (a deleted and re-created model may change hands)."""

    TTL = 60.0

    def __init__(self, mlflow_url):
        self.mlflow_url = mlflow_url
        self.client = httpclient.AsyncHTTPClient()
        self._cache = {}

    async def _get(self, path, **args):
        """The JSON answer, None for a 404; LookupError when MLflow cannot say."""
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in args.items())
        r = await self.client.fetch(f"{self.mlflow_url}/api/2.0/mlflow/{path}?{query}", raise_error=False,
                                    request_timeout=30)
        if r.code == 200:
            return json.loads(r.body)
        if 400 <= r.code < 500:  # no such thing: MLflow answers the request itself the same way
            return None
        raise LookupError(f"the registry cannot tell who owns this now ({path}: {r.code}); try again")

    async def team(self, ref):
        cached = self._cache.get(ref)
        if cached and time.monotonic() - cached[0] < self.TTL:
            return cached[1]
        kind, key = ref
        team = None
        if kind == "experiment":
            found = await self._get("experiments/get", experiment_id=key)
            tags = (found or {}).get("experiment", {}).get("tags", [])
            team = {t["key"]: t["value"] for t in tags}.get(tenancy.TEAM_TAG)
        elif kind == "run":
            found = await self._get("runs/get", run_id=key)
            exp = (found or {}).get("run", {}).get("info", {}).get("experiment_id")
            team = await self.team(("experiment", exp)) if exp else None
        elif kind == "model":
            found = await self._get("registered-models/get", name=key)
            tags = (found or {}).get("registered_model", {}).get("tags", [])
            team = {t["key"]: t["value"] for t in tags}.get(tenancy.TEAM_TAG)
        elif kind == "logged_model":
            found = await self._get(f"logged-models/{quote(key, safe='')}")
            exp = (found or {}).get("model", {}).get("info", {}).get("experiment_id")
            team = await self.team(("experiment", exp)) if exp else None
        if found is not None:
            self._cache[ref] = (time.monotonic(), team)
        return team

    async def tag_version(self, name, version, key, value):
        r = await self.client.fetch(f"{self.mlflow_url}/api/2.0/mlflow/model-versions/set-tag", method="POST",
                                    body=json.dumps({"name": name, "version": str(version), "key": key,
                                                     "value": value}),
                                    headers={"Content-Type": "application/json"}, raise_error=False)
        return r.code == 200


class RegistryHandler(HubOAuthenticated, web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]

    def check_xsrf_cookie(self):
        # MLflow's UI fetches its API without an XSRF token. A browser marks a
        # same-origin request so (a page cannot set Sec-Fetch-Site), which stops
        # cross-site forgeries; anything else needs the hub's token. Pages of the
        # lab's own origin (users' servers) are not stopped by this: see README.
        if self.request.headers.get("Sec-Fetch-Site") == "same-origin":
            return
        return super().check_xsrf_cookie()

    def refuse(self, status, message):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        # MLflow's own error shape: its UI and client show `message`.
        code = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}.get(status, "ERROR")
        self.finish({"error_code": code, "message": message})

    def identity(self):
        model = self.current_user
        if model.get("kind") == "service":
            return None
        found = self.settings["users"].info(model["name"]) or {"groups": [], "admin": False}
        return tenancy.Identity(model["name"], frozenset(found["groups"]), bool(found["admin"]))

    async def _call(self, path):
        if self.current_user is None:
            if self.request.method == "GET" and not path.startswith(API_PATHS):  # a page: log in first
                return self.redirect(self.get_login_url())
            return self.refuse(401, "log in to the hub, or send Authorization: Bearer <JupyterHub token> "
                                    "(MLFLOW_TRACKING_TOKEN) with access to the registry")
        who = await asyncio.to_thread(self.identity)
        if who is None:
            return self.refuse(403, "services do not use the registry gateway")
        if any(c in path for c in "?#") or any(ord(c) < 32 for c in path):
            # a %3F or %23 would move part of the path into MLflow's query string
            return self.refuse(400, "the path may not contain '?', '#' or control characters")
        raw = self.request.body or b""
        body = None
        if raw and tenancy.Request(self.request.method, path).endpoint is not None:
            # MLflow parses an API request's body as JSON whatever its Content-Type says
            try:
                body = json.loads(raw)
            except ValueError:
                return self.refuse(400, "the request body is not JSON")
            if not isinstance(body, dict):
                return self.refuse(400, "the request body must be a JSON object")
        req = tenancy.Request(self.request.method, path,
                              {k: [v.decode() for v in vs] for k, vs in self.request.query_arguments.items()}, body)
        try:
            owners = {ref: await self.settings["owners"].team(ref) for ref in tenancy.references(req)}
        except LookupError as e:  # fail closed: an unknown owner is not "shared"
            return self.refuse(503, str(e))
        try:
            forwarded = tenancy.authorize(who, req, owners, self.settings["policy"])
        except tenancy.Refused as e:
            log.info("refused %s %s %s: %s", who.name, req.method, path, e.message)
            return self.refuse(e.status, e.message)
        if forwarded is not req.body:
            raw = json.dumps(forwarded).encode()
        if req.endpoint == "registered-models/alias" and req.method == "POST" \
                and req.value("alias") == self.settings["policy"].production_alias:
            # Who asked for the promotion: the controller reads it for its audit.
            await self.settings["owners"].tag_version(req.value("name"), req.value("version"),
                                                      tenancy.REQUESTED_BY_TAG, who.name)
            log.info("%s sets %s on %s v%s", who.name, req.value("alias"), req.value("name"), req.value("version"))
        await self.forward(path, raw, who)

    async def forward(self, path, raw, who):
        # the path as judged, encoded again (artifact names may hold spaces or '%')
        url = f"{self.settings['mlflow_url']}/{quote(path, safe=URL_PATH_SAFE)}"
        if self.request.query:
            url += "?" + self.request.query
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in DROPPED_REQUEST_HEADERS}
        headers["X-Forwarded-User"] = who.name
        response = await self.settings["owners"].client.fetch(httpclient.HTTPRequest(
            url, method=self.request.method, headers=headers,
            body=raw if self.request.method in ("POST", "PUT", "PATCH", "DELETE") else None,
            allow_nonstandard_methods=True, follow_redirects=False, request_timeout=900,
            decompress_response=True), raise_error=False)
        if response.code == 599:
            return self.refuse(502, f"the MLflow server did not answer: {response.error}")
        payload = self.filter_listing(path, response, who)
        self.set_status(response.code, response.reason)
        copied = set()
        for key, value in response.headers.get_all():
            if key.lower() not in DROPPED_RESPONSE_HEADERS:
                # set first (replacing tornado's default Content-Type), add repeats
                (self.add_header if key.lower() in copied else self.set_header)(key, value)
                copied.add(key.lower())
        self.finish(payload)

    def filter_listing(self, path, response, who):
        """With registry.others = "none", searches list only the caller's teams' (and shared) things."""
        policy = self.settings["policy"]
        endpoint = tenancy.Request("GET", path).endpoint or ""
        if policy.others != "none" or response.code != 200 or not endpoint.endswith("search"):
            return response.body
        data = json.loads(response.body)
        for key in ("experiments", "registered_models"):
            if key in data:
                data[key] = [x for x in data[key] if tenancy.visible(who, x.get("tags", []), policy)]
        return json.dumps(data).encode()

    async def get(self, path):
        await self._call(path)

    post = put = patch = delete = head = options = get


def main():
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s registry] %(message)s")
    settings = json.loads(Path(os.environ.get("DATALAB_HUB_SETTINGS", "/etc/datalab/hub.json")).read_text())
    registry = settings["registry"]
    httpclient.AsyncHTTPClient.configure(None, max_body_size=LARGEST_BODY, max_buffer_size=LARGEST_BODY)
    hub_auth = HubOAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/registry/")
    app = web.Application([
        (rf"{prefix}oauth_callback", HubOAuthCallbackHandler),
        (rf"{prefix}(.*)", RegistryHandler),
    ], hub_auth=hub_auth, cookie_secret=os.urandom(32),
        users=HubUsers(hub_auth.api_url, hub_auth.api_token),
        owners=Owners(registry["mlflow_url"]), mlflow_url=registry["mlflow_url"],
        policy=tenancy.Policy.from_settings(registry, registry["teams"]))
    app.listen(int(os.environ.get("DATALAB_REGISTRY_PORT", "8091")), "0.0.0.0", max_body_size=LARGEST_BODY)
    log.info("registry gateway on %s -> %s", prefix, registry["mlflow_url"])
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
