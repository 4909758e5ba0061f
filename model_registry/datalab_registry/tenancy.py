"""Who may do what through the registry gateway: pure rules, no I/O. The
route table (routes.py) says what a route is and where it names its objects;
the gateway looks up the facts (who owns them, which are sealed, what serves
production); this decides.

A tenant is a team: an LDAP group listed in the lab's teams. Experiments and
registered models carry the tag `datalab.team`, set by the gateway when they
are created; runs and logged models belong to their experiment's team, model
versions to their model's.

- The owning team's members (and hub admins) write; others read, or are
  refused, as `registry.others` says. Untagged things (MLflow's Default
  experiment, anything made before the gateway) are shared.
- Tags under `datalab.` on experiments, models and versions are the
  platform's (team, promotion outcome, gate metrics, seals): nobody sets them
  here. A run's own `datalab.*` tags (its evaluation set) are write-once from
  the moment a version is registered from it.
- Setting or removing the production alias is a promotion: approvers only.
  Deleting or renaming what serves production (the model, the version, the
  run, logged model or experiment it was made from): approvers only.
- From its registration, a version's artifacts (its logged model's, its
  run's) are sealed: no write reaches them.
- A run is recorded as made by the caller (mlflow.user), not by whatever
  name the client sends.
"""

import re
from dataclasses import dataclass, field

from . import routes

TEAM_TAG = "datalab.team"
RESERVED_PREFIX = "datalab."
REQUESTED_BY_TAG = "datalab.promotion.requested_by"
USER_TAG = "mlflow.user"
MISSING = object()  # an owner lookup's answer for an object MLflow does not have
_COMPONENT = re.compile(r'@component\(\s*name:\s*"[^"\\]*"\s*\)')
_PARENS = re.compile(r"\(([^()]*)\)")
_VARIABLE_ARGUMENT = re.compile(r"\s*(\$\w+\s*:\s*[\w!\[\]\s]+|\w+\s*:\s*\$\w+)\s*")


class Refused(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Identity:
    name: str
    groups: frozenset = frozenset()
    admin: bool = False


@dataclass(frozen=True)
class Production:
    """A version the production alias names, and its model's team."""
    model: str
    version: str
    team: str | None

    def __str__(self):
        return f"{self.model} v{self.version}"


@dataclass
class Facts:
    """What the gateway looked up for a request, keyed by reference:
    owners -> team, None (shared) or MISSING; sealed -> the version (e.g. "m v3")
    whose artifacts a run, logged model or artifact path holds; run_tags -> a
    sealed run's tags; production -> Production, for every object a production
    version was made from."""
    owners: dict = field(default_factory=dict)
    sealed: dict = field(default_factory=dict)
    run_tags: dict = field(default_factory=dict)
    production: dict = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str  # below the gateway's prefix, e.g. "api/2.0/mlflow/runs/create"
    args: dict = field(default_factory=dict)  # query arguments: name -> [values]
    body: dict | None = None  # the JSON body (None: none, or a file's bytes)
    params: dict = field(default_factory=dict)  # the route's path parameters

    def values(self, keys, many=False, deep=False):
        """Every value the request gives a field (or twin fields, e.g. run_id and
        run_uuid), from every place MLflow may read one: the path, the query, the
        JSON body (snake_case or camelCase, which protobuf's parser also takes).
        Places that give it must agree: MLflow reads one of them, which one
        depends on the method and the handler, and the gateway does not guess.
        deep: also inside the body's nested objects, each another object (all count)."""
        found = {}
        body = self.body if isinstance(self.body, dict) else {}
        for key in keys:
            for spelling in dict.fromkeys((key, _camel(key))):
                if spelling in self.params:
                    found[f"the path's {spelling}"] = [self.params[spelling]]
                if spelling in self.args:
                    found[f"the query's {spelling}"] = list(self.args[spelling])
                if _listed(body.get(spelling)):
                    found[f"the body's {spelling}"] = _listed(body[spelling])
                if deep:
                    for node in _nested(body):
                        found.setdefault("the body", []).extend(_listed(node.get(spelling, [])))
        texts = {place: sorted({_text(place, v) for v in vs}) for place, vs in found.items()}
        if deep:
            return sorted({v for vs in texts.values() for v in vs})
        if len({tuple(vs) for vs in texts.values()}) > 1:
            said = " and ".join(f"{place} ({', '.join(vs)})" for place, vs in texts.items())
            raise Refused(400, f"{said} disagree: name the object once")
        values = next(iter(texts.values()), [])
        if len(values) > 1 and not many:
            raise Refused(400, f"{keys[0]} must have one value, not {len(values)}")
        return values

    def value(self, key):
        return next(iter(self.values((key,))), None)


def _camel(key):
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _listed(value):
    """A field's values; null is no value (protobuf's parser leaves the field unset)."""
    return [v for v in (value if isinstance(value, list) else [value]) if v is not None]


def _nested(node):
    """Every object inside node, itself included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nested(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nested(value)


def _text(where, value):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Refused(400, f"{where} must be a string")
    return str(value)


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

    def judges_reads(self, who: Identity):
        return self.others == "none" and not who.admin


def artifact_location(path):
    """(experiment id, ("run", id) or ("logged_model", id) or None) of a path in
    the artifact store: MLflow keeps a run's artifacts at <experiment>/<run>/artifacts/
    and a logged model's at <experiment>/models/<model>/artifacts/."""
    parts = path.removesuffix("/").split("/")  # (a folder's listing may end with one)
    if any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise Refused(400, f"artifact path {path!r} is not a plain relative path")
    if len(parts) >= 4 and parts[1] == "models" and parts[3] == "artifacts":
        return parts[0], ("logged_model", parts[2])
    if len(parts) >= 3 and parts[2] == "artifacts":
        return parts[0], ("run", parts[1])
    return parts[0], None


def source_references(req):
    """What a new version's source names. The gateway seals a version's artifacts
    by the run and logged model MLflow records for it (its run_id, its source),
    so the source and the run_id or model_id sent with it must agree."""
    source = req.value("source") or ""
    run_id, model_id = req.value("run_id"), req.value("model_id")
    if source.startswith("models:/m-"):
        found = source.removeprefix("models:/")
        if model_id not in (None, found):
            raise Refused(400, f"source {source} and model_id {model_id} disagree")
        return [("logged_model", found)]
    if source.startswith("runs:/"):
        found = source.removeprefix("runs:/").split("/")[0]
    elif source.startswith("mlflow-artifacts:/"):
        _, where = artifact_location(source.removeprefix("mlflow-artifacts:/").lstrip("/"))
        if not where or where[0] != "run":
            raise Refused(403, "a version is registered from a logged model (models:/<model id>) or from a run's "
                               f"artifacts, not from {source}")
        found = where[1]
    else:
        raise Refused(403, "a version is registered from a logged model (models:/<model id>) or from a run "
                           f"(runs:/<run id>/<path>), not from {source!r}")
    if run_id != found:
        raise Refused(400, f"source {source} needs run_id {found} with it (given: {run_id})")
    return [("run", found)]


def references(route, req):
    """[(kind, id)] of the objects a request names, as its route says where;
    Refused when a required one is missing, or its places disagree."""
    refs = []
    for ref in route.rule.refs:
        values = req.values(ref.keys, many=ref.many, deep=ref.deep)
        if not values and ref.required:
            raise Refused(400, f"{route.label} names its {ref.kind.replace('_', ' ')} in "
                               f"{' or '.join(ref.keys)}, and this request gives none")
        if ref.kind == "source":
            refs += source_references(req)
        elif ref.kind == "artifact":
            for path in values:
                artifact_location(path)  # refuses what is not a plain path
                refs.append(("artifact", path))
        else:
            refs += [(ref.kind, v) for v in values]
    return list(dict.fromkeys(refs))


def authorize(who: Identity, route, req: Request, facts: Facts, policy: Policy):
    """Raise Refused, or return the JSON body to forward (a create gets its team
    tag, a run its maker). facts: what the gateway looked up for references()."""
    rule = route.rule
    if rule.cls == routes.OPEN:
        return req.body
    if rule.cls == routes.PLATFORM:
        raise Refused(403, f"{route.label} is the platform's (webhooks, workspaces, the AI gateway's secrets "
                           "and endpoints): nobody uses it through the registry gateway")
    if rule.cls == routes.REFUSED:
        raise Refused(403, f"{route.label} is not offered in DataLab (GenAI traces and evaluation, server-side "
                           "jobs, the assistant, MCP servers, direct artifact-store URLs)")
    refs = references(route, req)
    mine = policy.teams_of(who)
    if rule.cls == routes.READ:
        if policy.judges_reads(who):
            if rule.graphql:
                _variables_only(req.body)
            for ref in refs:
                team = facts.owners.get(ref)
                if team not in (None, MISSING) and team not in mine:
                    raise Refused(403, f"{who.name} is not in team {team}, which owns this")
        return req.body
    if rule.reserved_tags:
        _no_reserved_tags(req, allowed={TEAM_TAG} if rule.cls == routes.CREATE else set())
    if rule.cls == routes.CREATE:
        if route.path.endswith("experiments/create") and req.value("artifact_location"):
            raise Refused(403, "where an experiment's artifacts are kept is the platform's choice: "
                               "create it without artifact_location")
        return _with_team(who, route, req, policy)
    for ref in refs:
        team = facts.owners.get(ref, MISSING)
        if team is MISSING:
            raise Refused(404, f"no {ref[0].replace('_', ' ')} {ref[1]} here")
        if team is not None and team not in mine and not who.admin:
            raise Refused(403, f"{who.name} may not change what team {team} owns (members of {team} may)")
    if rule.promotes and (req.value("alias") or "").lower() == policy.production_alias.lower():
        model = req.value("name")
        approvers = policy.approvers_of(facts.owners.get(("model", model)))
        if approvers not in who.groups:
            raise Refused(403, f"only members of {approvers} may set or remove the "
                               f"'{policy.production_alias}' alias (a promotion to production)")
    if rule.guard:
        _spare_production(who, route, req, refs, facts, policy)
    if rule.seals == "artifacts":
        for ref in refs:
            if ref[0] == "artifact" and artifact_location(ref[1])[1] is None:
                raise Refused(403, f"artifacts are written into a run's or a logged model's folder, not {ref[1]}")
            if ref in facts.sealed:
                raise Refused(403, f"the artifacts of {facts.sealed[ref]} are sealed since its registration: "
                                   f"{req.method} {req.path} would change them (log to a new run instead)")
    if rule.seals == "tags":
        _write_once(req, refs, facts, deleting=rule.user == "delete-tag")
    if rule.user:
        return _as_user(who, rule.user, req)
    return req.body


def _variables_only(body):
    """A GraphQL read judged by its variables: an id written into the query
    itself would not be seen, so arguments must be variables. Searches of model
    versions name their models inside a filter string: not judged, refused."""
    query = (body or {}).get("query")
    if not isinstance(query, str):
        raise Refused(400, "a GraphQL request needs a query")
    bare = _COMPONENT.sub("", query)
    if '"' in bare or any(not all(_VARIABLE_ARGUMENT.fullmatch(a) for a in group.split(","))
                          for group in _PARENS.findall(bare)):
        raise Refused(403, "with registry.others = \"none\", GraphQL arguments must be variables")
    if "mlflowSearchModelVersions" in bare:
        raise Refused(403, "with registry.others = \"none\", search model versions through the REST API")


def _spare_production(who, route, req, refs, facts, policy):
    if route.rule.guard == "version":
        targets = [("version", req.value("name"), req.value("version"))]
    else:
        targets = refs
    for ref in targets:
        serving = facts.production.get(ref)
        if serving is None:
            continue
        approvers = policy.approvers_of(serving.team)
        if approvers not in who.groups:
            what = "it" if ref[0] in ("model", "version") else f"{ref[0].replace('_', ' ')} {ref[1]}"
            raise Refused(403, f"{serving} serves production: only members of {approvers} may delete or "
                               f"rename {what} (set the '{policy.production_alias}' alias elsewhere first)")


def _write_once(req, refs, facts, deleting):
    """A sealed run's datalab.* tags (which file is its evaluation set) stay as
    they were when its version was registered, or are set once after."""
    run = next((r for r in refs if r[0] == "run"), None)
    if run not in facts.sealed:
        return
    before = facts.run_tags.get(run[1], {})
    if req.value("key") is not None:
        changes = {req.value("key"): None if deleting else req.value("value")}
    else:
        changes = _tags(req)
    for key, value in changes.items():
        if isinstance(key, str) and key.startswith(RESERVED_PREFIX) and key in before and before[key] != value:
            raise Refused(403, f"run {run[1]} holds {facts.sealed[run]}: its tag {key} stays {before[key]!r}")


def _tags(req):
    tags = (req.body or {}).get("tags") or []
    return {t.get("key"): t.get("value") for t in tags if isinstance(t, dict)}


def _no_reserved_tags(req, allowed):
    key = req.value("key")
    keys = [key] if key is not None else []
    if any(isinstance(k, str) and k.startswith(RESERVED_PREFIX) and k not in allowed for k in keys + list(_tags(req))):
        raise Refused(403, f"tags under '{RESERVED_PREFIX}' are written by the platform, not through the registry")


def _as_user(who, how, req):
    """A run is made by the caller, whatever the client says (a notebook's unix user is jovyan)."""
    body = dict(req.body or {})
    if how == "delete-tag":
        if req.value("key") == USER_TAG:
            raise Refused(403, f"{USER_TAG} says who made the run: the gateway sets it")
        return req.body
    if how == "set-tag":
        return {**body, "value": who.name} if req.value("key") == USER_TAG else req.body
    if how == "batch" and USER_TAG not in _tags(req):
        return req.body  # MLflow's client logs it again in some batches, as the unix user
    if how == "create":
        body.pop("userId", None)
        body["user_id"] = who.name
    body["tags"] = [t for t in body.get("tags") or [] if t.get("key") != USER_TAG] + [
        {"key": USER_TAG, "value": who.name}]
    return body


def _with_team(who, route, req, policy):
    body = dict(req.body or {})
    mine = policy.teams_of(who)
    asked = _tags(req).get(TEAM_TAG)
    kind = "experiment" if "experiments/" in route.path else "registered model"
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
    if not policy.judges_reads(who):
        return True
    if isinstance(tags, list):
        tags = {t.get("key"): t.get("value") for t in tags}
    team = (tags or {}).get(TEAM_TAG)
    return team is None or team in policy.teams_of(who)
