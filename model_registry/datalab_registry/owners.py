"""What the registry gateway asks MLflow before deciding (gateway.py): which
team owns an object, which registered version holds a run's or logged
model's artifacts, what serves production."""

import re
import time
from urllib.parse import quote, urlencode

import httpx

from . import tenancy

API = "api/2.0/mlflow/"
MLFLOW_ID = re.compile(r"[A-Za-z0-9_-]+")  # run and logged model ids, as MLflow makes them
LOOKUP_TIMEOUT = httpx.Timeout(30, connect=10)


class Owners:
    """What the gateway asks MLflow before deciding: which team owns an
    experiment, run, registered model, logged model or artifact path; which
    registered version a run or logged model holds; what serves production.
    Owners and seals are cached for a minute (a deleted and re-created model may
    change hands); what is not there yet, and what serves production, never."""

    TTL = 60.0

    def __init__(self, mlflow_url):
        self.mlflow_url = mlflow_url
        # one connection pool for the lookups and the forwarded requests
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=LOOKUP_TIMEOUT)
        self._cache = {}

    async def _get(self, path, **args):
        """The JSON answer, None for a 4xx (no such thing); LookupError when MLflow cannot say."""
        try:
            r = await self.client.get(f"{self.mlflow_url}/{API}{path}?{urlencode(args)}")
        except httpx.HTTPError as e:
            raise LookupError(f"the registry cannot tell who owns this now ({path}: {e!r}); try again") from e
        if r.status_code == 200:
            return r.json()
        if 400 <= r.status_code < 500:  # no such thing: MLflow answers the request itself the same way
            return None
        raise LookupError(f"the registry cannot tell who owns this now ({path}: {r.status_code}); try again")

    async def _cached(self, key, lookup, keep):
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < self.TTL:
            return cached[1]
        found = await lookup()
        if keep(found):
            self._cache[key] = (time.monotonic(), found)
        return found

    async def team(self, ref):
        """The team owning ref, None when shared, tenancy.MISSING when MLflow has no such thing."""
        return await self._cached(("team", ref), lambda: self._team(ref), lambda t: t is not tenancy.MISSING)

    async def _team(self, ref):
        kind, key = ref
        if kind == "experiment":
            found = await self._get("experiments/get", experiment_id=key)
            return _team_tag(found, "experiment")
        if kind == "experiment_name":
            found = await self._get("experiments/get-by-name", experiment_name=key)
            return _team_tag(found, "experiment")
        if kind == "model":
            found = await self._get("registered-models/get", name=key)
            return _team_tag(found, "registered_model")
        if kind == "run":
            found = await self._get("runs/get", run_id=key)
            exp = (found or {}).get("run", {}).get("info", {}).get("experiment_id")
        elif kind == "logged_model":
            found = await self._get(f"logged-models/{quote(key, safe='')}")
            exp = (found or {}).get("model", {}).get("info", {}).get("experiment_id")
        else:  # an artifact path: its experiment's (MLflow does not check that one exists)
            exp = tenancy.artifact_location(key)[0]
        return await self.team(("experiment", exp)) if exp else tenancy.MISSING

    async def sealed(self, ref):
        """The registered version ("model vN") whose artifacts ref holds, or None."""
        if ref[0] == "artifact":
            ref = tenancy.artifact_location(ref[1])[1]
        if not ref or not MLFLOW_ID.fullmatch(ref[1]):
            return None  # not a run's or logged model's folder, or not an id MLflow makes
        kind, key = ref
        search = f"run_id='{key}'" if kind == "run" else f"source_path='models:/{key}'"
        return await self._cached(("sealed", ref), lambda: self._version(search), lambda v: v is not None)

    async def _version(self, search):
        found = await self._get("model-versions/search", filter=search, max_results=1)
        versions = (found or {}).get("model_versions") or []
        return f"{versions[0]['name']} v{versions[0]['version']}" if versions else None

    async def run_tags(self, run_id):
        found = await self._get("runs/get", run_id=run_id)
        return {t["key"]: t["value"] for t in (found or {}).get("run", {}).get("data", {}).get("tags", [])}

    async def production(self, alias):
        """{reference: tenancy.Production} for every object a production version was
        made from: its model, the version, its run, logged model and experiment."""
        found, token = {}, None
        while True:
            page = await self._get("registered-models/search", max_results=1000,
                                   **({"page_token": token} if token else {}))
            if page is None:
                raise LookupError("the registry cannot tell what serves production now; try again")
            for model in page.get("registered_models", []):
                version = {a["alias"]: a["version"] for a in model.get("aliases", [])}.get(alias)
                if version is not None:
                    team = {t["key"]: t["value"] for t in model.get("tags", [])}.get(tenancy.TEAM_TAG)
                    serving = tenancy.Production(model["name"], str(version), team)
                    for ref in await self._made_from(model["name"], str(version)):
                        found[ref] = serving
            token = page.get("next_page_token")
            if not token:
                return found

    async def _made_from(self, name, version):
        refs = [("model", name), ("version", name, version)]
        found = (await self._get("model-versions/get", name=name, version=version) or {}).get("model_version", {})
        source = found.get("source") or ""
        if source.startswith("models:/m-"):
            refs.append(("logged_model", source.removeprefix("models:/")))
        if found.get("run_id"):
            refs.append(("run", found["run_id"]))
            run = await self._get("runs/get", run_id=found["run_id"])
            exp = (run or {}).get("run", {}).get("info", {}).get("experiment_id")
            if exp:
                refs.append(("experiment", exp))
        return refs

    async def tag_version(self, name, version, key, value):
        try:
            r = await self.client.post(f"{self.mlflow_url}/{API}model-versions/set-tag",
                                       json={"name": name, "version": str(version), "key": key, "value": value})
        except httpx.HTTPError:
            return False
        return r.status_code == 200


def _team_tag(found, key):
    if found is None:
        return tenancy.MISSING
    tags = found.get(key, {}).get("tags", [])
    return {t["key"]: t["value"] for t in tags}.get(tenancy.TEAM_TAG)
