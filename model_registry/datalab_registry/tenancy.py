"""Who may do what to which experiment or registered model through the gateway.

A tenant is a team: an LDAP group listed in the lab's teams. Experiments and
registered models carry the tag `datalab.team`, set by the gateway when they
are created. Pure rules, no I/O: the gateway finds the owners, this decides.

- The owning team's members (and hub admins) write; others read, or are
  refused, as `registry.others` says. Untagged things (MLflow's Default
  experiment, anything made before the gateway) are shared.
- Tags under `datalab.` on experiments, models and versions are the
  platform's (team, promotion outcome, gate metrics): nobody sets them here.
- Setting or removing the production alias is a promotion: only approvers.
- A run is recorded as made by the caller (mlflow.user), not by whatever
  name the client sends.
"""

import re
from dataclasses import dataclass, field

TEAM_TAG = "datalab.team"
RESERVED_PREFIX = "datalab."
REQUESTED_BY_TAG = "datalab.promotion.requested_by"
USER_TAG = "mlflow.user"

_API = re.compile(r"^(?:ajax-)?api/[23]\.0/mlflow/(.*)$")
_ARTIFACTS = re.compile(r"^(?:ajax-)?api/2\.0/mlflow-artifacts/(?:artifacts|mpu/\w+)/(\d+)(?:/|$)")
_LOGGED_MODEL = re.compile(r"^logged-models/(m-[0-9a-f]+)")
_TAG_WRITES = {"registered-models/set-tag", "registered-models/delete-tag", "model-versions/set-tag",
               "model-versions/delete-tag", "experiments/set-experiment-tag", "experiments/delete-experiment-tag"}
_CREATES = {"experiments/create", "registered-models/create"}
READ_ONLY_POSTS = {"runs/search", "experiments/search", "logged-models/search", "registered-models/search",
                   "model-versions/search", "experiments/search-datasets", "traces/search", "runs/search-datasets"}


class Refused(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Identity:
    name: str
    groups: frozenset = frozenset()
    admin: bool = False


@dataclass
class Request:
    method: str
    path: str  # below the gateway's prefix, e.g. "api/2.0/mlflow/runs/create"
    args: dict = field(default_factory=dict)  # query arguments: name -> [values]
    body: dict | None = None

    @property
    def endpoint(self):
        found = _API.match(self.path)
        return found.group(1).rstrip("/") if found else None

    @property
    def reads_args(self):
        # MLflow reads a GET's query and any other method's JSON body, never both
        return self.method in ("GET", "HEAD", "OPTIONS")

    def values(self, key):
        if self.reads_args:
            return list(self.args.get(key) or [])
        body = self.body if isinstance(self.body, dict) else {}
        # protobuf's JSON parser takes camelCase names as well as snake_case ones
        found = [body[k] for k in (key, _camel(key)) if k in body]
        return [v for f in found for v in (f if isinstance(f, list) else [f])]

    def value(self, key):
        return next(iter(self.values(key)), None)

    @property
    def read_only(self):
        if self.method in ("GET", "HEAD", "OPTIONS"):
            return True
        # MLflow's searches are POSTs that change nothing (listed: a guess by name
        # could be steered by the path)
        return self.method == "POST" and (self.endpoint in READ_ONLY_POSTS or self.path == "graphql")


def _camel(key):
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class Policy:
    teams: frozenset
    production_alias: str = "production"
    approvers_group: str = "model-approvers"
    team_approvers: dict = field(default_factory=dict)
    others: str = "read"  # or "none"

    @classmethod
    def from_settings(cls, registry, teams):
        return cls(teams=frozenset(teams), production_alias=registry["production_alias"],
                   approvers_group=registry["approvers_group"], team_approvers=dict(registry["team_approvers"]),
                   others=registry["others"])

    def teams_of(self, who: Identity):
        return self.teams & who.groups

    def approvers_of(self, team):
        return self.team_approvers.get(team, self.approvers_group)


def references(req: Request):
    """The experiments, runs, registered models and logged models a request names:
    [("experiment", id) | ("run", id) | ("model", name) | ("logged_model", id)]."""
    refs = []
    endpoint = req.endpoint
    found = _ARTIFACTS.match(req.path)
    if found:
        refs.append(("experiment", found.group(1)))
    if endpoint is None:
        return refs
    for exp in req.values("experiment_id") + req.values("experiment_ids"):
        if exp not in (None, ""):
            refs.append(("experiment", str(exp)))
    for key in ("run_id", "run_uuid"):
        if req.value(key):
            refs.append(("run", str(req.value(key))))
    if req.value("model_id"):
        refs.append(("logged_model", str(req.value("model_id"))))
    found = _LOGGED_MODEL.match(endpoint)
    if found:
        refs.append(("logged_model", found.group(1)))
    if endpoint.startswith(("registered-models/", "model-versions/")) and req.value("name") \
            and endpoint not in ("registered-models/create",):
        refs.append(("model", str(req.value("name"))))
    return list(dict.fromkeys(refs))


def _tags(req):
    tags = (req.body or {}).get("tags") or []
    return {t.get("key"): t.get("value") for t in tags if isinstance(t, dict)}


def authorize(who: Identity, req: Request, owners: dict, policy: Policy):
    """Raise Refused, or return the request body to forward (a create gets its team tag).

    owners: {reference: team or None} for every reference in references(req)."""
    refs = references(req)
    foreign = sorted({owners.get(r) for r in refs} - {None} - policy.teams_of(who))
    if req.read_only:
        if foreign and policy.others == "none" and not who.admin:
            raise Refused(403, f"{who.name} is not in team {foreign[0]}, which owns this")
        return req.body
    endpoint = req.endpoint or ""
    key = req.value("key")
    if endpoint in _TAG_WRITES and isinstance(key, str) and key.startswith(RESERVED_PREFIX):
        raise Refused(403, f"tags under '{RESERVED_PREFIX}' are written by the platform, not through the registry")
    # (runs carry datalab.* tags of their own: the reference workload's evaluation set)
    if endpoint in _CREATES | {"model-versions/create"} and any(
            k and k.startswith(RESERVED_PREFIX) and k != TEAM_TAG for k in _tags(req)):
        raise Refused(403, f"tags under '{RESERVED_PREFIX}' are written by the platform, not through the registry")
    if foreign and not who.admin:
        raise Refused(403, f"{who.name} may not change what team {foreign[0]} owns (members of {foreign[0]} may)")
    if endpoint == "registered-models/alias" and req.value("alias") == policy.production_alias:
        team = next((owners.get(r) for r in refs if r[0] == "model"), None)
        approvers = policy.approvers_of(team)
        if approvers not in who.groups:
            raise Refused(403, f"only members of {approvers} may set or remove the "
                               f"'{policy.production_alias}' alias (a promotion to production)")
    if endpoint in _CREATES:
        return _with_team(who, req, policy)
    if endpoint == "runs/create":
        return _as_user(who, req)  # whatever mlflow.user the client sent is replaced
    if endpoint == "runs/delete-tag" and key == USER_TAG:
        raise Refused(403, f"{USER_TAG} says who made the run: the gateway sets it")
    if (endpoint == "runs/set-tag" and key == USER_TAG) or USER_TAG in _tags(req):
        return _as_user(who, req)  # MLflow's client logs it again in some batches, as the unix user
    if not refs and not who.admin:
        raise Refused(403, f"{req.method} {req.path} is not open to users through the registry gateway")
    return req.body


def _as_user(who, req):
    """A run is made by the caller, whatever the client says (a notebook's unix user is jovyan)."""
    body = dict(req.body or {})
    if req.endpoint == "runs/set-tag":
        return {**body, "value": who.name}
    if req.endpoint == "runs/create":
        body["user_id"] = who.name
    body["tags"] = [t for t in body.get("tags") or [] if t.get("key") != USER_TAG] + [
        {"key": USER_TAG, "value": who.name}]
    return body


def _with_team(who, req, policy):
    body = dict(req.body or {})
    mine = policy.teams_of(who)
    asked = _tags(req).get(TEAM_TAG)
    kind = "experiment" if req.endpoint.startswith("experiments") else "registered model"
    if asked is not None:
        if asked not in mine and not who.admin:
            raise Refused(403, f"{who.name} is not in team {asked}")
        return body
    if len(mine) == 1:
        body["tags"] = list(body.get("tags") or []) + [{"key": TEAM_TAG, "value": next(iter(mine))}]
        return body
    if not mine:
        if who.admin:
            return body  # an admin's experiment or model is shared
        raise Refused(403, f"{who.name} is in no team ({', '.join(sorted(policy.teams))}); "
                           f"a {kind} belongs to one")
    raise Refused(400, f"{who.name} is in several teams ({', '.join(sorted(mine))}): "
                       f"give the {kind} a tag {TEAM_TAG}=<team>")


def visible(who: Identity, tags, policy: Policy):
    """May `who` see an experiment or registered model with these tags (list or dict)?"""
    if policy.others != "none" or who.admin:
        return True
    if isinstance(tags, list):
        tags = {t.get("key"): t.get("value") for t in tags}
    team = (tags or {}).get(TEAM_TAG)
    return team is None or team in policy.teams_of(who)
