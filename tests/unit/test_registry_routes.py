"""The registry gateway's route table and the attacks on its decisions, with
fake owners (no server). That the table covers the installed MLflow's routes,
both ways, is tests/integration/test_registry_route_coverage.py; the same attacks on a
real lab are tests/integration/test_registry_attacks.py."""

import re

import pytest

from datalab_registry import routes, tenancy

POLICY = tenancy.Policy(teams=frozenset({"fraud-team", "aml-team"}))
CLOSED = tenancy.Policy(teams=POLICY.teams, others="none")
ALICE = tenancy.Identity("alice", frozenset({"datascientists", "fraud-team", "model-approvers"}))
BOB = tenancy.Identity("bob", frozenset({"datascientists", "fraud-team"}))
DAVE = tenancy.Identity("dave", frozenset({"datascientists", "aml-team"}))
CAROL = tenancy.Identity("carol", frozenset({"lab-admins"}), admin=True)

# fraud-team's experiment 5, run r5 and logged model m-5; aml-team's experiment 9, run r9 and logged model m-9
OWNERS = {("experiment", "5"): "fraud-team", ("run", "r5"): "fraud-team", ("logged_model", "m-5"): "fraud-team",
          ("model", "fraud-detector"): "fraud-team", ("experiment", "9"): "aml-team", ("run", "r9"): "aml-team",
          ("logged_model", "m-9"): "aml-team", ("model", "aml-model"): "aml-team", ("experiment", "0"): None}
SERVING = tenancy.Production("fraud-detector", "3", "fraud-team")
PRODUCTION = {("model", "fraud-detector"): SERVING, ("version", "fraud-detector", "3"): SERVING,
              ("run", "r5"): SERVING, ("logged_model", "m-5"): SERVING, ("experiment", "5"): SERVING}


def decide(who, method, path, body=None, policy=POLICY, owners=None, **facts):
    """What the gateway decides for `method /path` (path with its query), given the facts."""
    path, _, query = path.partition("?")
    args = {}
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        args.setdefault(key, []).append(value)
    route, params = routes.match(method, path)
    if route is None:
        raise tenancy.Refused(403, f"{method} {path} is unclassified")
    request = tenancy.Request(method, path.lstrip("/"), args, None if route.rule.raw_body else body, params)
    refs = tenancy.references(route, request)
    known = {**OWNERS, **(owners or {})}
    facts.setdefault("owners", {ref: known.get(ref, known.get(_experiment_of(ref), tenancy.MISSING))
                                for ref in refs})
    return tenancy.authorize(who, route, request, tenancy.Facts(**facts), policy)


def _experiment_of(ref):
    return ("experiment", tenancy.artifact_location(ref[1])[0]) if ref[0] == "artifact" else None


def refused(status, pattern, *args, **kwargs):
    with pytest.raises(tenancy.Refused, match=pattern) as e:
        decide(*args, **kwargs)
    assert e.value.status == status, e.value.message
    return e.value.message


def sample(path):
    """A concrete request path for a rule (parameters filled in)."""
    return re.sub(r"<(\w+)>", r"x1", re.sub(r"<path:\w+>", "a/b", path))


# ---- the table ----

def test_every_route_is_found_by_its_own_path_and_method():
    for (method, path), route in routes.ROUTES.items():
        found, _ = routes.match(method, sample(path))
        assert found == route, f"{method} {sample(path)} matched {found and found.label}, not {path}"


def test_literal_paths_win_over_parameters_as_in_werkzeug():
    assert routes.match("GET", "/api/3.0/mlflow/traces/get")[0].path == "/api/3.0/mlflow/traces/get"
    assert routes.match("GET", "/api/2.0/mlflow/logged-models/search")[0].path.endswith("<model_id>")  # GET: only that
    route, params = routes.match("DELETE", "/api/2.0/mlflow/logged-models/m-1/tags/a")
    assert route.path.endswith("tags/<tag_key>") and params == {"model_id": "m-1", "tag_key": "a"}


def test_every_write_names_what_it_writes_and_every_ref_is_readable():
    for route in routes.ROUTES.values():
        rule = route.rule
        if rule.cls == routes.WRITE:
            assert any(r.required for r in rule.refs), f"{route.label} writes without naming what"
        for ref in rule.refs:
            assert ref.keys and ref.kind in ("experiment", "experiment_name", "run", "model", "logged_model",
                                             "artifact", "source"), route.label
        params = set(re.findall(r"<(?:path:)?(\w+)>", route.path))
        # a path parameter that names an object is judged: no owned object hides in an unread parameter
        if rule.cls in (routes.READ, routes.WRITE):
            assert params <= {k for r in rule.refs for k in r.keys} | {"tag_key"}, route.label


def test_an_unclassified_route_or_method_is_no_route():
    assert routes.match("GET", "/api/2.0/mlflow/users/current") == (None, {})
    assert routes.match("DELETE", "/api/2.0/mlflow/runs/get") == (None, {})
    assert routes.match("OPTIONS", "/api/2.0/mlflow/runs/get") == (None, {})
    assert routes.match("HEAD", "/api/2.0/mlflow/runs/get")[0].method == "GET"
    assert routes.match("GET", "/api/2.0/mlflow/runs/get/")[0] is None  # MLflow's rules have no trailing slash


# ---- webhooks, and what is global ----

@pytest.mark.parametrize("who", [DAVE, BOB, CAROL])
def test_the_controllers_webhook_cannot_be_patched_or_fired_whatever_the_body_names(who):
    # the attack that worked: an unrelated experiment_id the caller may write to, added to the body
    refused(403, r"PATCH /api/2.0/mlflow/webhooks/<webhook_id> is the platform's", who, "PATCH",
            "/api/2.0/mlflow/webhooks/wh-1", {"experiment_id": "0", "url": "http://attacker.example/"})
    refused(403, r"POST /ajax-api/2.0/mlflow/webhooks/<webhook_id>/test is the platform's", who, "POST",
            "/ajax-api/2.0/mlflow/webhooks/wh-1/test", {"experiment_id": "9"})


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/3.0/mlflow/gateway/secrets/create", {"experiment_id": "9", "secret_name": "s"}),
    ("GET", "/ajax-api/3.0/mlflow/gateway/secrets/list?experiment_id=9", None),
    ("POST", "/api/3.0/mlflow/traces", {"trace": {"trace_info": {"trace_location": {
        "mlflow_experiment": {"experiment_id": "9"}}}}, "experiment_id": "9"}),
    ("POST", "/api/3.0/mlflow/traces/tr-1/assessments", {"experiment_id": "9"}),
    ("POST", "/api/3.0/mlflow/datasets/create", {"name": "d", "experiment_ids": ["9"]}),
    ("POST", "/api/2.0/mlflow/artifacts/presigned-upload-url", {"run_id": "r9"}),
    ("POST", "/ajax-api/3.0/mlflow/assistant/message", {"experiment_id": "9"}),
    ("POST", "/ajax-api/3.0/mlflow/demo/generate", {}),
])
def test_traces_datasets_assessments_and_gateway_secrets_are_not_reachable_with_an_owned_key(method, path, body):
    refused(403, r"is (not offered in DataLab|the platform's)", DAVE, method, path, body)


def test_a_logged_model_is_judged_by_the_id_in_its_path_not_by_a_key_added_to_the_body():
    refused(403, "dave may not change what team fraud-team owns", DAVE, "PATCH", "/api/2.0/mlflow/logged-models/m-5",
            {"experiment_id": "9", "status": "LOGGED_MODEL_READY"})
    refused(400, r"the path's model_id \(m-5\) and the body's model_id \(m-9\) disagree", DAVE, "PATCH",
            "/api/2.0/mlflow/logged-models/m-5/tags", {"model_id": "m-9", "tags": []})
    assert decide(DAVE, "PATCH", "/api/2.0/mlflow/logged-models/m-9", {"status": "LOGGED_MODEL_READY"})


# ---- ids in several places ----

def test_upload_artifact_is_judged_on_the_query_mlflow_reads_not_on_a_body_naming_ones_own_run():
    # the body is the file's bytes: that they parse as JSON naming dave's run changes nothing
    refused(403, "dave may not change what team fraud-team owns", DAVE, "POST",
            "/ajax-api/2.0/mlflow/upload-artifact?run_uuid=r5&path=smuggled.txt", {"run_uuid": "r9"})
    assert decide(DAVE, "POST", "/ajax-api/2.0/mlflow/upload-artifact?run_uuid=r9&path=mine.txt", {"x": 1}) is None


def test_twin_fields_and_repeated_values_must_agree():
    refused(400, r"the query's run_id \(r9\) and the query's run_uuid \(r5\) disagree", DAVE, "GET",
            "/get-artifact?run_id=r9&run_uuid=r5&path=x")
    refused(400, "run_id must have one value, not 2", DAVE, "GET", "/api/2.0/mlflow/runs/get?run_id=r9&run_id=r5")
    refused(400, r"disagree", DAVE, "POST", "/api/2.0/mlflow/runs/log-metric?run_id=r9",
            {"run_id": "r5", "key": "k", "value": 1})
    refused(400, r"run_id must be a string", DAVE, "POST", "/api/2.0/mlflow/runs/log-metric",
            {"run_id": {"$ne": "r9"}, "key": "k", "value": 1})
    # a GET without a query is read from its body by MLflow: judged there too
    refused(403, "not in team fraud-team", DAVE, "GET", "/api/2.0/mlflow/runs/get", {"run_id": "r5"}, policy=CLOSED)


def test_a_write_must_name_its_object_where_the_route_says():
    refused(400, r"names its run in run_id or run_uuid, and this request gives none", DAVE, "POST",
            "/api/2.0/mlflow/runs/log-metric", {"runid": "r9", "experiment_id": "9", "key": "k", "value": 1})


def test_an_object_mlflow_does_not_have_is_not_written_but_may_be_asked_for():
    refused(404, "no run nope here", DAVE, "POST", "/api/2.0/mlflow/runs/log-metric",
            {"run_id": "nope", "key": "k", "value": 1})
    assert decide(DAVE, "GET", "/api/2.0/mlflow/runs/get?run_id=nope", policy=CLOSED) is None


# ---- sealed candidates ----

SEALED = {("artifact", "5/r5/artifacts/evaluation/evaluation.parquet"): "fraud-detector v4",
          ("artifact", "5/models/m-5/artifacts/MLmodel"): "fraud-detector v4", ("run", "r5"): "fraud-detector v4"}


@pytest.mark.parametrize("method, path", [
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/5/models/m-5/artifacts/MLmodel"),
    ("PUT", "/ajax-api/2.0/mlflow-artifacts/artifacts/5/r5/artifacts/evaluation/evaluation.parquet"),
    ("DELETE", "/api/2.0/mlflow-artifacts/artifacts/5/r5/artifacts/evaluation/evaluation.parquet"),
    ("POST", "/api/2.0/mlflow-artifacts/mpu/create/5/models/m-5/artifacts/MLmodel"),
    ("POST", "/ajax-api/2.0/mlflow/upload-artifact?run_uuid=r5&path=evaluation/evaluation.parquet"),
])
def test_a_registered_versions_artifacts_cannot_be_changed_even_by_its_team(method, path):
    for who in (ALICE, CAROL):
        refused(403, r"the artifacts of fraud-detector v4 are sealed since its registration", who, method, path,
                sealed=SEALED)


def test_artifacts_are_written_into_a_run_or_logged_model_folder_by_a_plain_path():
    refused(403, "written into a run's or a logged model's folder", BOB, "PUT",
            "/api/2.0/mlflow-artifacts/artifacts/5/elsewhere.bin")
    refused(400, "not a plain relative path", BOB, "PUT", "/api/2.0/mlflow-artifacts/artifacts/9/../5/r5/artifacts/x")
    assert decide(BOB, "PUT", "/api/2.0/mlflow-artifacts/artifacts/5/r5/artifacts/plots/roc.png") is None


def test_a_sealed_runs_evaluation_set_tag_is_write_once():
    tags = {"r5": {"datalab.evaluation": "evaluation/evaluation.parquet"}}
    sealed = {("run", "r5"): "fraud-detector v4"}
    refused(403, r"run r5 holds fraud-detector v4: its tag datalab.evaluation stays", BOB, "POST",
            "/api/2.0/mlflow/runs/set-tag", {"run_id": "r5", "key": "datalab.evaluation", "value": "easy.parquet"},
            sealed=sealed, run_tags=tags)
    refused(403, "stays", BOB, "POST", "/api/2.0/mlflow/runs/delete-tag", {"run_id": "r5", "key": "datalab.evaluation"},
            sealed=sealed, run_tags=tags)
    refused(403, "stays", BOB, "POST", "/api/2.0/mlflow/runs/log-batch",
            {"run_id": "r5", "tags": [{"key": "datalab.evaluation", "value": "easy.parquet"}]},
            sealed=sealed, run_tags=tags)
    # set once after the registration (the reference workload does), or again as it is: fine
    assert decide(BOB, "POST", "/api/2.0/mlflow/runs/log-batch", {"run_id": "r5", "tags": [
        {"key": "datalab.evaluation", "value": "evaluation/evaluation.parquet"},
        {"key": "datalab.features", "value": "a,b"}]}, sealed=sealed, run_tags=tags)


def test_a_version_is_registered_from_what_its_team_owns_and_what_its_run_id_says():
    create = "/api/2.0/mlflow/model-versions/create"
    assert decide(BOB, "POST", create, {"name": "fraud-detector", "source": "models:/m-5", "run_id": "r5",
                                        "model_id": "m-5"})
    refused(403, "bob may not change what team aml-team owns", BOB, "POST", create,
            {"name": "fraud-detector", "source": "models:/m-9"})
    refused(400, r"source models:/m-5 and model_id m-9 disagree", BOB, "POST", create,
            {"name": "fraud-detector", "source": "models:/m-5", "model_id": "m-9"})
    refused(400, r"needs run_id r5 with it", BOB, "POST", create,
            {"name": "fraud-detector", "source": "runs:/r5/model"})
    refused(403, "registered from a logged model", BOB, "POST", create,
            {"name": "fraud-detector", "source": "mlflow-artifacts:/5/models/m-5/artifacts"})
    refused(403, "registered from a logged model", BOB, "POST", create,
            {"name": "fraud-detector", "source": "file:///mlflow/artifacts/9/r9/artifacts/model"})
    refused(403, "bob may not change what team aml-team owns", BOB, "POST", "/api/2.0/mlflow/logged-models",
            {"experiment_id": "5", "source_run_id": "r9"})


def test_an_experiments_artifact_location_is_the_platforms():
    refused(403, "without artifact_location", BOB, "POST", "/api/2.0/mlflow/experiments/create",
            {"name": "x", "artifact_location": "mlflow-artifacts:/5/elsewhere"})


# ---- production ----

@pytest.mark.parametrize("method, path, body", [
    ("DELETE", "/api/2.0/mlflow/model-versions/delete", {"name": "fraud-detector", "version": "3"}),
    ("DELETE", "/ajax-api/2.0/mlflow/registered-models/delete", {"name": "fraud-detector"}),
    ("POST", "/api/2.0/mlflow/registered-models/rename", {"name": "fraud-detector", "new_name": "gone"}),
    ("POST", "/api/2.0/mlflow/runs/delete", {"run_id": "r5"}),
    ("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": "5"}),
    ("DELETE", "/api/2.0/mlflow/logged-models/m-5", None),
    ("DELETE", "/api/2.0/mlflow/registered-models/alias", {"name": "fraud-detector", "alias": "production"}),
])
def test_what_serves_production_is_deleted_or_renamed_by_approvers_only(method, path, body):
    for who in (BOB, CAROL):  # bob's team owns it; carol is a hub admin; neither approves
        refused(403, "(serves production|only members of model-approvers)", who, method, path, body,
                production=PRODUCTION)
    assert decide(ALICE, method, path, body, production=PRODUCTION) == body


def test_other_versions_of_the_production_model_are_the_teams_to_delete():
    body = {"name": "fraud-detector", "version": "2"}
    assert decide(BOB, "DELETE", "/api/2.0/mlflow/model-versions/delete", body, production=PRODUCTION) == body


def test_the_production_alias_is_matched_whatever_its_case():
    refused(403, "only members of model-approvers", BOB, "POST", "/api/2.0/mlflow/registered-models/alias",
            {"name": "fraud-detector", "alias": "Production", "version": "2"})


# ---- others = "none" ----

@pytest.mark.parametrize("method, path, body", [
    ("GET", "/get-artifact?run_uuid=r5&path=evaluation/evaluation.parquet", None),
    ("GET", "/api/2.0/mlflow/artifacts/list?run_id=r5", None),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/5/r5/artifacts/evaluation/evaluation.parquet", None),
    ("GET", "/ajax-api/2.0/mlflow-artifacts/artifacts?path=5/r5/artifacts", None),
    ("GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk?run_id=r9&run_id=r5&metric_key=auc", None),
    ("GET", "/api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids=r5&metric_key=auc", None),
    ("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=fraud", None),
    ("POST", "/graphql", {"query": 'query GetRun($data: MlflowGetRunInput!) @component(name: "MLflow.X") '
                                   "{ mlflowGetRun(input: $data) { run { info { runUuid } } } }",
                          "variables": {"data": {"runId": "r5"}}}),
    ("POST", "/graphql", {"query": "query { mlflowSearchRuns(input: $d) { runs { info { runUuid } } } }",
                          "variables": {"d": {"experimentIds": ["9", "5"]}}}),
])
def test_with_others_none_reads_by_run_artifact_bulk_history_and_graphql_are_refused(method, path, body):
    refused(403, "dave is not in team fraud-team", DAVE, method, path, body, policy=CLOSED,
            owners={("experiment_name", "fraud"): "fraud-team"})
    assert decide(DAVE, method, path, body, policy=POLICY) == body  # others = "read"
    assert decide(CAROL, method, path, body, policy=CLOSED) == body  # a hub admin


def test_with_others_none_graphql_ids_must_be_variables():
    literal = {"query": '{ mlflowGetRun(input: {runId: "r5"}) { run { info { runUuid } } } }'}
    refused(403, "GraphQL arguments must be variables", DAVE, "POST", "/graphql", literal, policy=CLOSED)
    search = {"query": "query Q($d: MlflowSearchModelVersionsInput!) { mlflowSearchModelVersions(input: $d) "
                       "{ modelVersions { name } } }", "variables": {"d": {"filter": "name='fraud-detector'"}}}
    refused(403, "search model versions through the REST API", DAVE, "POST", "/graphql", search, policy=CLOSED)
    mine = {"query": "query Q($d: MlflowGetRunInput!) { mlflowGetRun(input: $d) { run { info { runUuid } } } }",
            "variables": {"d": {"runId": "r9"}}}
    assert decide(DAVE, "POST", "/graphql", mine, policy=CLOSED) == mine
