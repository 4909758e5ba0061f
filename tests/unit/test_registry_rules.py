"""The registry gateway's team rules, the promotion gate and webhook
signatures, without a server; the real gateway, MLflow and controller are in
tests/integration/test_registry.py. The route table and the attacks on it:
test_registry_routes.py."""

import time

import pytest

from datalab_registry import gate, routes, tenancy, webhooks
from datalab import settings as settings_mod

POLICY = tenancy.Policy(teams=frozenset({"fraud-team", "aml-team"}))
ALICE = tenancy.Identity("alice", frozenset({"datascientists", "fraud-team", "model-approvers"}))
BOB = tenancy.Identity("bob", frozenset({"datascientists", "fraud-team"}))
DAVE = tenancy.Identity("dave", frozenset({"datascientists", "aml-team"}))
CAROL = tenancy.Identity("carol", frozenset({"lab-admins"}), admin=True)
EVE = tenancy.Identity("eve", frozenset({"datascientists"}))


def req(method, endpoint, body=None, **args):
    return tenancy.Request(method, f"api/2.0/mlflow/{endpoint}", {k: [v] for k, v in args.items()}, body)


def authorize(who, request, owners, policy=POLICY, **facts):
    """tenancy.authorize for the route MLflow would serve the request with."""
    route, params = routes.match(request.method, "/" + request.path)
    assert route is not None, f"{request.method} {request.path} is no route"
    request.params = params
    return tenancy.authorize(who, route, request, tenancy.Facts(owners=owners, **facts), policy)


def test_a_new_experiment_gets_the_creators_team():
    body = authorize(BOB, req("POST", "experiments/create", {"name": "x"}), {}, POLICY)
    assert {"key": "datalab.team", "value": "fraud-team"} in body["tags"]


def test_creating_needs_one_team_or_says_which():
    with pytest.raises(tenancy.Refused, match="in no team"):
        authorize(EVE, req("POST", "registered-models/create", {"name": "m"}), {}, POLICY)
    both = tenancy.Identity("zoe", frozenset({"fraud-team", "aml-team"}))
    with pytest.raises(tenancy.Refused, match="several teams .* datalab.team=<team>") as e:
        authorize(both, req("POST", "experiments/create", {"name": "x"}), {}, POLICY)
    assert e.value.status == 400
    body = {"name": "x", "tags": [{"key": "datalab.team", "value": "aml-team"}]}
    assert authorize(both, req("POST", "experiments/create", body), {}, POLICY) == body
    with pytest.raises(tenancy.Refused, match="not in team aml-team"):
        authorize(BOB, req("POST", "experiments/create", body), {}, POLICY)


def test_writes_go_to_the_owning_team_and_reads_follow_the_others_setting():
    log_metric = req("POST", "runs/log-metric", {"run_id": "r1", "key": "auc", "value": 0.9})
    owners = {("run", "r1"): "fraud-team"}
    assert authorize(BOB, log_metric, owners, POLICY) is log_metric.body
    with pytest.raises(tenancy.Refused, match="may not change what team fraud-team owns"):
        authorize(DAVE, log_metric, owners, POLICY)
    assert authorize(CAROL, log_metric, owners, POLICY) is log_metric.body  # hub admin
    read = req("GET", "runs/get", run_id="r1")
    assert authorize(DAVE, read, owners, POLICY) is None
    closed = tenancy.Policy(teams=POLICY.teams, others="none")
    with pytest.raises(tenancy.Refused, match="not in team fraud-team"):
        authorize(DAVE, read, owners, closed)
    assert not tenancy.visible(DAVE, [{"key": "datalab.team", "value": "fraud-team"}], closed)
    assert tenancy.visible(DAVE, [], closed) and tenancy.visible(BOB, {"datalab.team": "fraud-team"}, closed)


def test_artifact_uploads_belong_to_the_experiment_in_their_path():
    path = "7/abc/artifacts/model/MLmodel"
    upload = tenancy.Request("PUT", f"api/2.0/mlflow-artifacts/artifacts/{path}")
    route, upload.params = routes.match("PUT", "/" + upload.path)
    assert tenancy.references(route, upload) == [("artifact", path)]
    assert tenancy.artifact_location(path) == ("7", ("run", "abc"))
    with pytest.raises(tenancy.Refused, match="may not change what team fraud-team owns"):
        authorize(DAVE, upload, {("artifact", path): "fraud-team"}, POLICY)


def test_only_approvers_set_or_remove_the_production_alias():
    owners = {("model", "fraud-detector"): "fraud-team"}
    for method in ("POST", "DELETE"):
        alias = req(method, "registered-models/alias", {"name": "fraud-detector", "alias": "production", "version": "2"})
        assert authorize(ALICE, alias, owners, POLICY) == alias.body
        with pytest.raises(tenancy.Refused, match="only members of model-approvers") as e:
            authorize(BOB, alias, owners, POLICY)
        assert e.value.status == 403
        with pytest.raises(tenancy.Refused):  # an admin is not an approver
            authorize(CAROL, alias, owners, POLICY)
    staging = req("POST", "registered-models/alias", {"name": "fraud-detector", "alias": "staging", "version": "2"})
    assert authorize(BOB, staging, owners, POLICY) == staging.body
    own = tenancy.Policy(teams=POLICY.teams, team_approvers={"fraud-team": "fraud-approvers"})
    alias = req("POST", "registered-models/alias", {"name": "fraud-detector", "alias": "production", "version": "2"})
    with pytest.raises(tenancy.Refused, match="only members of fraud-approvers"):
        authorize(ALICE, alias, owners, own)


def test_platform_tags_cannot_be_written_through_the_gateway():
    for endpoint in ("model-versions/set-tag", "registered-models/set-tag", "experiments/set-experiment-tag"):
        forged = req("POST", endpoint, {"name": "m", "version": "1", "experiment_id": "1",
                                        "key": "datalab.deployed_by", "value": "alice"})
        with pytest.raises(tenancy.Refused, match="written by the platform"):
            authorize(CAROL, forged, {("model", "m"): None, ("experiment", "1"): None}, POLICY)
    create = req("POST", "registered-models/create", {"name": "m", "tags": [
        {"key": "datalab.promotion.requested_by", "value": "alice"}]})
    with pytest.raises(tenancy.Refused):
        authorize(BOB, create, {}, POLICY)


def test_webhooks_are_the_platforms_even_for_admins():
    with pytest.raises(tenancy.Refused, match=r"POST /api/2.0/mlflow/webhooks is the platform's"):
        authorize(CAROL, req("POST", "webhooks", {"url": "http://evil"}), {}, POLICY)
    assert routes.match("POST", "/api/2.0/mlflow/runs/search")[0].rule.cls == routes.READ
    assert routes.match("POST", "/ajax-api/2.0/mlflow/experiments/search")[0].rule.cls == routes.READ


def test_team_approvers_is_a_free_form_table_in_settings(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[registry]\nteam_approvers = { "fraud-team" = "fraud-approvers" }\n')
    assert settings_mod.load(path)["registry"]["team_approvers"]["fraud-team"] == "fraud-approvers"


LIMITS = settings_mod.defaults()["gate"]
GOOD = {"average_precision": 0.70, "recall": 0.60, "false_positive_rate": 0.001, "block_rate": 0.01}


def evaluation(candidate, production=None, psi=None):
    return {"threshold": 50.0, "transactions": 10000, "frauds": 80, "candidate": candidate,
            "production": production, "score_psi": psi}


def test_a_first_promotion_passes_on_absolute_thresholds():
    assert gate.failures(evaluation(GOOD), LIMITS) == []
    bad = gate.failures(evaluation({**GOOD, "average_precision": 0.05, "block_rate": 0.4}), LIMITS)
    assert len(bad) == 2 and "average precision 0.050" in bad[0] and "block rate 0.400" in bad[1]


def test_a_candidate_must_not_fall_behind_production_nor_move_the_scores():
    worse = gate.failures(evaluation({**GOOD, "average_precision": 0.60}, GOOD, psi=0.01), LIMITS)
    assert worse == ["average precision 0.600 vs 0.700 in production (drop 0.100 > 0.02)"]
    moved = gate.failures(evaluation(GOOD, GOOD, psi=0.9), LIMITS)
    assert moved and "PSI 0.900" in moved[0]
    assert gate.failures(evaluation(GOOD, GOOD, psi=0.0), LIMITS) == []
    assert gate.summary(evaluation(GOOD, GOOD, psi=0.0))["datalab.gate.average_precision"] == "0.7000"


def test_webhook_signatures_match_mlflows_and_forgeries_are_refused():
    secret, body = "s3cret", '{"entity": "model_version_alias", "action": "created"}'
    now = int(time.time())
    headers = {"X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": str(now),
               "X-MLflow-Signature": webhooks.sign(secret, "d1", str(now), body)}
    webhooks.verify(secret, headers, body.encode())
    with pytest.raises(webhooks.Forged, match="does not match"):
        webhooks.verify("other", headers, body)
    with pytest.raises(webhooks.Forged, match="does not match"):
        webhooks.verify(secret, headers, body.replace("created", "deleted"))
    with pytest.raises(webhooks.Forged, match="unsigned"):
        webhooks.verify(secret, {"X-MLflow-Delivery-Id": "d1"}, body)
    with pytest.raises(webhooks.Forged, match="replayed"):
        webhooks.verify(secret, headers, body, now=now + 3600)


def test_runs_keep_their_own_datalab_tags():
    batch = req("POST", "runs/log-batch", {"run_id": "r1", "tags": [{"key": "datalab.evaluation", "value": "e.parquet"}]})
    assert authorize(BOB, batch, {("run", "r1"): "fraud-team"}, POLICY) is batch.body


def test_a_run_is_made_by_the_caller_whatever_the_client_says():
    create = req("POST", "runs/create", {"experiment_id": "1", "user_id": "jovyan",
                                         "tags": [{"key": "mlflow.user", "value": "jovyan"}]})
    body = authorize(BOB, create, {("experiment", "1"): "fraud-team"}, POLICY)
    assert body["user_id"] == "bob" and body["tags"] == [{"key": "mlflow.user", "value": "bob"}]


def test_a_request_naming_its_object_in_two_places_must_name_the_same_one():
    owners = {("model", "theirs"): "aml-team", ("model", "mine"): "fraud-team"}
    # the gateway does not guess which place MLflow reads: it reads them all
    smuggled = tenancy.Request("POST", "api/2.0/mlflow/registered-models/alias", {"name": ["mine"]},
                               {"name": "theirs", "alias": "production", "version": "1"})
    with pytest.raises(tenancy.Refused, match=r"the query's name \(mine\) and the body's name \(theirs\) disagree") as e:
        authorize(ALICE, smuggled, owners, POLICY)
    assert e.value.status == 400
    # protobuf takes camelCase field names too
    camel = req("POST", "runs/log-metric", {"runId": "r9", "key": "auc", "value": 1})
    assert tenancy.references(routes.match("POST", "/" + camel.path)[0], camel) == [("run", "r9")]


def test_reads_are_the_routes_the_table_says_are():
    assert routes.match("POST", "/api/2.0/mlflow/registered-models/alias/search") == (None, {})
    assert routes.match("POST", "/api/2.0/mlflow/runs/delete")[0].rule.cls == routes.WRITE
    assert routes.match("POST", "/api/2.0/mlflow/logged-models/search")[0].rule.cls == routes.READ


def test_mlflow_user_cannot_be_slipped_into_a_batch_of_tags():
    batch = req("POST", "runs/log-batch", {"run_id": "r1", "metrics": [],
                                           "tags": [{"key": "mlflow.user", "value": "alice"}]})
    body = authorize(BOB, batch, {("run", "r1"): "fraud-team"}, POLICY)
    assert body["tags"] == [{"key": "mlflow.user", "value": "bob"}] and body["metrics"] == []
    tag = req("POST", "runs/set-tag", {"run_id": "r1", "key": "mlflow.user", "value": "alice"})
    assert authorize(BOB, tag, {("run", "r1"): "fraud-team"}, POLICY)["value"] == "bob"
    with pytest.raises(tenancy.Refused, match="says who made the run"):
        authorize(BOB, req("POST", "runs/delete-tag", {"run_id": "r1", "key": "mlflow.user"}),
                          {("run", "r1"): "fraud-team"}, POLICY)
