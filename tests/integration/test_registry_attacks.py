"""Attacks on the registry, as a lab user of another team (or a team member
against the promotion path) would try them, on the real hub, gateway, MLflow,
controller and engine. Each one got through before the gateway decided from
MLflow's whole route table, versions were sealed and the gate ran models in
sandboxes; each is refused now. The same attacks at the decision level:
tests/unit/test_registry_routes.py and test_gate_sandbox.py.

The last test attacks the version serving production: on a gateway without
protection it would delete it, so it runs last in this module."""

import json
import time

import pytest
import requests
from conftest import MODEL, registered_versions, run_job

import test_registry as base
from datalab import promotion

pytestmark = pytest.mark.integration
SEAL_TAG = "datalab.artifacts.sha256"
_tokens = {}


def gateway(lab, user, method, path, **kwargs):
    """Any request to the registry gateway as `user` (a registry token of theirs): any path, any body."""
    if user not in _tokens:
        lab.login(user)  # a hub user from their first login on: tokens are made for them then
        _tokens[user] = promotion.user_token(lab.settings, user, minutes=120)
    headers = {"Authorization": f"Bearer {_tokens[user]}", **kwargs.pop("headers", {})}
    return requests.request(method, f"{lab.service_url('registry')}/{path}", headers=headers, timeout=120, **kwargs)


def refused(response, status, *fragments):
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    message = response.json()["message"]
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def serving(lab, model_v1):
    """The version serving production (model_v1, promoted, unless an earlier module left another)."""
    served = base.served_version(lab)
    if served and base.alias_version(lab) == served:
        return served
    proc, record = base.promote(lab, model_v1)
    assert record and record["outcome"] in ("deployed", "adopted"), proc.stdout + proc.stderr
    return model_v1


def version(lab, number):
    return lab.registry("alice", "GET", f"model-versions/get?name={MODEL}&version={number}")["model_version"]


def store_path(uri):
    """A path in MLflow's artifact store, from an mlflow-artifacts URI."""
    return uri.split("mlflow-artifacts:", 1)[1].lstrip("/")


@pytest.fixture(scope="module")
def daves_run(lab, model_v1):
    """A run of dave's (aml-team), in an experiment of his: the keys he may write to."""
    experiment = lab.registry("dave", "POST", "experiments/create", {"name": f"dave-attacks-{time.time_ns()}"})
    return lab.registry("dave", "POST", "runs/create", {"experiment_id": experiment["experiment_id"]})["run"]["info"]


def test_an_unclassified_route_is_refused_naming_it(lab, model_v1):
    refused(gateway(lab, "dave", "DELETE", "api/2.0/mlflow/runs/get", json={"run_id": "x"}), 403,
            "DELETE /api/2.0/mlflow/runs/get is no route of MLflow's", "unclassified routes are refused")
    refused(gateway(lab, "carol", "GET", "ajax-api/2.0/mlflow/users/current"), 403,
            "GET /ajax-api/2.0/mlflow/users/current is no route")


def test_the_controllers_webhook_cannot_be_patched_or_fired_whatever_the_body_names(lab, model_v1):
    ours = next(h for h in lab.mlflow_api("webhooks")["webhooks"] if h["name"] == "datalab-controller")
    for user in ("dave", "carol"):  # another team's user; a hub admin
        # what got through: an unrelated experiment the caller may write to, added to the body
        refused(gateway(lab, user, "PATCH", f"api/2.0/mlflow/webhooks/{ours['webhook_id']}",
                        json={"experiment_id": "0", "status": "ACTIVE"}), 403,
                "PATCH /api/2.0/mlflow/webhooks/<webhook_id> is the platform's")
        refused(gateway(lab, user, "POST", f"ajax-api/2.0/mlflow/webhooks/{ours['webhook_id']}/test",
                        json={"experiment_id": "0"}), 403, "is the platform's")
        refused(gateway(lab, user, "GET", "api/2.0/mlflow/webhooks"), 403, "is the platform's")
    after = lab.mlflow_api(f"webhooks/{ours['webhook_id']}")["webhook"]
    assert after["last_updated_timestamp"] == ours["last_updated_timestamp"] and after["url"] == ours["url"]
    # every refusal is in the gateway's log (who, request, route, why); the platform's own webhook
    # actions are in the audit log
    proc = lab.datalab("logs", "hub", "--tail", "400")
    assert f"refused dave PATCH /api/2.0/mlflow/webhooks/{ours['webhook_id']} " \
           "(route /api/2.0/mlflow/webhooks/<webhook_id>): 403" in proc.stdout + proc.stderr
    platform = [json.loads(line) for line in lab.datalab("audit", "--json").stdout.splitlines()
                if json.loads(line).get("kind") == "platform"]
    assert any(r["outcome"] == "webhook registered" and r["by"] == "controller" for r in platform), platform


@pytest.mark.parametrize("method, path, body", [
    ("POST", "api/3.0/mlflow/gateway/secrets/create", {"secret_name": "s", "secret_value": {"api_key": "x"},
                                                       "provider": "openai"}),
    ("GET", "api/3.0/mlflow/gateway/secrets/list", None),
    ("POST", "api/3.0/mlflow/traces", {"trace": {"trace_info": {}}}),
    ("POST", "api/3.0/mlflow/traces/tr-0/assessments", {"assessment": {}}),
    ("POST", "api/3.0/mlflow/datasets/create", {"name": "d"}),
    ("POST", "api/2.0/mlflow/artifacts/presigned-upload-url", {}),
])
def test_traces_datasets_assessments_and_gateway_secrets_are_refused_whatever_key_is_added(
        lab, daves_run, method, path, body):
    keys = {"experiment_id": daves_run["experiment_id"], "experiment_ids": [daves_run["experiment_id"]],
            "run_id": daves_run["run_id"]}
    refused(gateway(lab, "dave", method, path, json=None if body is None else {**body, **keys}), 403)


def test_upload_artifact_is_judged_on_the_run_mlflow_writes_to_not_on_a_body_naming_ones_own(
        lab, model_v1, daves_run):
    theirs, mine = version(lab, model_v1)["run_id"], daves_run["run_id"]  # alice's (fraud-team), dave's
    smuggled = gateway(lab, "dave", "POST", "ajax-api/2.0/mlflow/upload-artifact",
                       params={"run_uuid": theirs, "path": "smuggled.txt"}, data=json.dumps({"run_uuid": mine}))
    refused(smuggled, 403, "dave may not change what team fraud-team owns")
    files = lab.mlflow_api(f"artifacts/list?run_id={theirs}").get("files", [])
    assert "smuggled.txt" not in [f["path"] for f in files]
    # the same upload to dave's own run goes through
    own = gateway(lab, "dave", "POST", "ajax-api/2.0/mlflow/upload-artifact",
                  params={"run_uuid": mine, "path": "mine.txt"}, data=b"dave's")
    assert own.status_code == 200, own.text
    assert "mine.txt" in [f["path"] for f in lab.mlflow_api(f"artifacts/list?run_id={mine}").get("files", [])]


def test_a_refused_upload_is_answered_through_the_hubs_proxy(lab, model_v1):
    """A body refused on its headers alone: the gateway answered before reading it, tornado closed the
    connection, and the hub's proxy (still sending) got a reset and showed a 503 page instead."""
    theirs = version(lab, model_v1)["run_id"]
    for attempt in range(3):
        refused(gateway(lab, "dave", "POST", "ajax-api/2.0/mlflow/upload-artifact", data=b"x" * (4 << 20),
                        params={"run_uuid": theirs, "path": f"big-{attempt}.bin"}), 403,
                "dave may not change what team fraud-team owns")
    # a JSON body over the gateway's limit: refused for its declared size, and answered
    refused(gateway(lab, "dave", "POST", "api/2.0/mlflow/runs/log-metric", data=b" " * (40 << 20),
                    headers={"Content-Type": "application/json"}), 413, "takes at most 33554432 bytes of JSON")


def test_a_registered_versions_artifacts_cannot_be_changed_even_by_its_team(lab, serving):
    found = version(lab, serving)
    lab.wait_for(lambda: SEAL_TAG in base.version_tags(lab, serving), "the controller sealing the version", 60)
    model_id = found["source"].removeprefix("models:/")
    folder = store_path(lab.registry("alice", "GET", f"logged-models/{model_id}")["model"]["info"]["artifact_uri"])
    mlmodel = gateway(lab, "alice", "GET", f"api/2.0/mlflow-artifacts/artifacts/{folder}/MLmodel")
    assert mlmodel.status_code == 200
    # the very same bytes written back: any write is refused, to its team and to an approver
    refused(gateway(lab, "alice", "PUT", f"api/2.0/mlflow-artifacts/artifacts/{folder}/MLmodel",
                    data=mlmodel.content), 403, f"the artifacts of {MODEL} v", "are sealed since its registration")
    evaluation = gateway(lab, "bob", "GET", "get-artifact",
                         params={"run_uuid": found["run_id"], "path": "evaluation/evaluation.parquet"})
    assert evaluation.status_code == 200
    refused(gateway(lab, "bob", "POST", "ajax-api/2.0/mlflow/upload-artifact", data=evaluation.content,
                    params={"run_uuid": found["run_id"], "path": "evaluation/evaluation.parquet"}), 403, "sealed")
    # nor may the run say that its evaluation set is another file now
    refused(gateway(lab, "bob", "POST", "api/2.0/mlflow/runs/set-tag", json={
        "run_id": found["run_id"], "key": "datalab.evaluation", "value": "evaluation/easier.parquet"}), 403,
        "its tag datalab.evaluation stays")


ATTACKS = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
    {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]}, "outputs": [],
     "source": f'name = "{MODEL}"\nsource_version = "1"'},
    {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source":
     "# Two candidates made of the source version, each in a run of its own.\n"
     "# probe: when the gate loads it, it tries to reach MLflow and the controller, and to set an alias\n"
     "# on its model; it scores upside down (worse) when it reached nothing, and refuses to score when it did.\n"
     "# plain: the source version again.\n"
     "import mlflow, pandas as pd\n"
     "client = mlflow.MlflowClient()\n"
     "src = client.get_model_version(name, source_version)\n"
     "inner = mlflow.artifacts.download_artifacts(f'models:/{name}/{source_version}')\n"
     "info = mlflow.models.get_model_info(f'models:/{name}/{source_version}')\n"
     "evaluation = mlflow.artifacts.download_artifacts(run_id=src.run_id,\n"
     "                                                 artifact_path='evaluation/evaluation.parquet')\n"
     "class Probe(mlflow.pyfunc.PythonModel):\n"
     "    def load_context(self, context):\n"
     "        import os, urllib.request\n"
     "        os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'] = '0'\n"
     "        os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT'] = '5'\n"
     "        self.inner = mlflow.pyfunc.load_model(context.artifacts['inner'])\n"
     "        self.reached = []\n"
     "        for url in ('http://mlflow:5000/health', 'http://controller:8080/healthz'):\n"
     "            try:\n"
     "                urllib.request.urlopen(url, timeout=5)\n"
     "                self.reached.append(url)\n"
     "            except Exception:\n"
     "                pass\n"
     "        try:\n"
     "            mlflow.MlflowClient('http://mlflow:5000').set_registered_model_alias(name, 'pwned', source_version)\n"
     "            self.reached.append('the alias')\n"
     "        except Exception:\n"
     "            pass\n"
     "    def predict(self, context, model_input, params=None):\n"
     "        if self.reached:\n"
     "            raise RuntimeError(f'the gate let this model reach {self.reached}')\n"
     "        return 1.0 - self.inner.predict(model_input)\n"
     "class Plain(mlflow.pyfunc.PythonModel):\n"
     "    def load_context(self, context):\n"
     "        self.inner = mlflow.pyfunc.load_model(context.artifacts['inner'])\n"
     "    def predict(self, context, model_input, params=None):\n"
     "        return self.inner.predict(model_input)\n"
     "fields = [i.name for i in info.signature.inputs.inputs]\n"
     "example = pd.read_parquet(evaluation)[fields].head(3).astype('float32')\n"
     "mlflow.set_experiment('fraud-test-attacks')\n"
     "for kind, model in (('probe', Probe()), ('plain', Plain())):\n"
     "    with mlflow.start_run(run_name=kind):\n"
     "        mlflow.log_artifact(evaluation, 'evaluation')\n"
     "        mlflow.set_tag('datalab.evaluation', 'evaluation/evaluation.parquet')\n"
     "        logged = mlflow.pyfunc.log_model(name='model', python_model=model, artifacts={'inner': inner},\n"
     "                                         signature=info.signature, input_example=example,\n"
     "                                         registered_model_name=name)\n"
     "        client.set_model_version_tag(name, logged.registered_model_version, 'attack', kind)\n"}]}


@pytest.fixture(scope="module")
def candidates(lab, serving):
    """{"probe": version, "plain": version}: made by a job of alice's from the version serving."""
    before = registered_versions(lab, MODEL)
    run_job(lab, ATTACKS, "-p", "source_version", serving, timeout=900)
    made = {v: base.version_tags(lab, v).get("attack") for v in registered_versions(lab, MODEL) - before}
    return {kind: v for v, kind in made.items()}


def test_a_model_run_by_the_gate_reaches_nothing_and_is_judged_on_its_figures(lab, serving, candidates):
    aliased = base.alias_version(lab)
    proc, record = base.promote(lab, candidates["probe"])
    assert record and record["outcome"] == "rejected", proc.stdout + proc.stderr
    # a verdict on the figures: the probe scored (upside down), so it reached nothing
    assert any("average precision" in r for r in record["reasons"]), record["reasons"]
    assert record["gate"]["candidate"]["average_precision"] < record["gate"]["production"]["average_precision"]
    model = lab.mlflow_api(f"registered-models/get?name={MODEL}")["registered_model"]
    assert "pwned" not in {a["alias"] for a in model.get("aliases", [])}
    lab.wait_for(lambda: base.alias_version(lab) == aliased, "the alias back on the version in production", 30)
    assert base.served_version(lab) == serving
    assert not lab.docker.out("ps", "-aq", "--filter", f"label=org.datalab.gate={lab.name}")  # none left behind


def test_a_candidate_changed_behind_the_gateways_back_is_refused_by_the_gate(lab, serving, candidates):
    plain = candidates["plain"]
    lab.wait_for(lambda: SEAL_TAG in base.version_tags(lab, plain), "the controller sealing the version", 60)
    run = lab.mlflow_api(f"runs/get?run_id={version(lab, plain)['run_id']}")["run"]["info"]
    # straight onto MLflow's artifact volume: what no request through the gateway can do
    path = f"/mlflow/artifacts/{store_path(run['artifact_uri'])}/evaluation/evaluation.parquet"
    lab.docker.run("exec", lab.service_container("mlflow"), "sh", "-c", f"printf x >> '{path}'")
    proc, record = base.promote(lab, plain)
    assert record and record["outcome"] == "rejected", proc.stdout + proc.stderr
    assert f"the artifacts of {MODEL} v{plain} are not those sealed at its registration" in record["reasons"][0]
    assert record["gate"] is None  # nothing of it ran
    assert base.served_version(lab) == serving


def test_a_non_approver_cannot_delete_or_rename_what_serves_production(lab, serving):
    found = version(lab, serving)
    model_id = found["source"].removeprefix("models:/")
    for user in ("bob", "carol"):  # bob's team owns it; carol is a hub admin; neither is an approver
        refused(gateway(lab, user, "DELETE", "api/2.0/mlflow/model-versions/delete",
                        json={"name": MODEL, "version": serving}), 403, f"{MODEL} v{serving} serves production")
        refused(gateway(lab, user, "DELETE", "ajax-api/2.0/mlflow/registered-models/delete", json={"name": MODEL}),
                403, "serves production")
        refused(gateway(lab, user, "POST", "api/2.0/mlflow/registered-models/rename",
                        json={"name": MODEL, "new_name": f"{MODEL}-gone"}), 403, "serves production")
        refused(gateway(lab, user, "POST", "api/2.0/mlflow/runs/delete", json={"run_id": found["run_id"]}),
                403, "serves production")
        refused(gateway(lab, user, "DELETE", f"api/2.0/mlflow/logged-models/{model_id}"), 403, "serves production")
        refused(gateway(lab, user, "DELETE", "api/2.0/mlflow/registered-models/alias",
                        json={"name": MODEL, "alias": base.ALIAS}), 403, "only members of model-approvers")
    assert version(lab, serving)["version"] == serving and base.alias_version(lab) == serving
    assert base.served_version(lab) == serving
    # the team's other versions are the team's to delete
    other = base.copy_version(lab, serving, user="bob")
    assert gateway(lab, "bob", "DELETE", "api/2.0/mlflow/model-versions/delete",
                   json={"name": MODEL, "version": other}).status_code == 200
