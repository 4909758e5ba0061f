"""Rollouts of registered models to the scoring service on the Swarm, and the
scoring API through the edge."""

import json
import time

import pytest
import requests
from conftest import MODEL, ScoringLoad, registered_versions, run_job
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def edge(lab):
    return lab.edge


@pytest.fixture(scope="module")
def serving(lab, model_v1):
    """model_v1 deployed on 2 replicas; the deploy command's output."""
    return lab.datalab("deploy", f"{MODEL}@{model_v1}", "--replicas", "2", "--threshold", "50").stdout


def test_deploy_serves_the_version_through_the_edge(lab, model_v1, serving):
    assert f"{MODEL} v{model_v1} serves all traffic" in serving
    status = json.loads(lab.datalab("scoring", "status", "--json").stdout)
    assert status["deployment"]["version"] == model_v1 and status["scoring"]["replicas"] == "2/2"
    schema = requests.get(f"{edge(lab)}/v1/schema", timeout=10).json()
    assert schema["version"] == model_v1 and len(schema["fields"]) == 15
    one = requests.post(f"{edge(lab)}/v1/score", json=schema["example"], timeout=10).json()
    assert set(one) == {"score", "decision", "model", "version"} and 0 <= one["score"] <= 100
    assert one["decision"] == ("block" if one["score"] >= 50 else "allow") and one["version"] == model_v1
    many = requests.post(f"{edge(lab)}/v1/score", json=[schema["example"]] * 3, timeout=10).json()
    assert [r["score"] for r in many["results"]] == [one["score"]] * 3
    # the reference MLP is served by the numpy pass, which matched its compiled graph at load
    for replica in lab.service_containers("scoring"):
        ready = json.loads(lab.exec(replica, "curl", "-fsS", "http://127.0.0.1:8080/readyz").stdout)
        assert ready["engine"] == "numpy", ready


def test_replicas_run_the_image_by_digest_from_the_labs_registry_which_admits_its_account_only(lab, serving):
    """Finding (design review): model images existed only in the engine of the node that baked
    them, so replicas could run nowhere else. Now a rollout publishes the image to the lab's
    image registry and the service names it by digest; the registry answers over TLS (the lab's
    CA) and to its one account: anyone else on the network neither lists, pulls nor pushes."""
    registry = json.loads(lab.datalab("images", "registry", "--json").stdout)
    image = json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"]["image"]
    assert image.startswith(f"{registry['address']}/datalab/scoring-model@sha256:"), image
    replicas = lab.docker.inspect("container", *lab.service_containers("scoring"))
    assert replicas and {replica["Config"]["Image"] for replica in replicas} == {image}
    base, ca = f"https://{registry['address']}/v2/datalab/scoring-model", registry["ca_file"]
    password = (lab.settings.data_dir / "secrets" / "image_registry_password").read_text()
    for auth in (None, ("datalab", "not-the-password"), ("admin", password)):
        assert requests.get(f"{base}/tags/list", verify=ca, auth=auth, timeout=10).status_code == 401, auth
        put = requests.put(f"{base}/manifests/planted", verify=ca, auth=auth, data=b"{}", timeout=10,
                           headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
        assert put.status_code == 401, auth
    digest = image.rpartition("@")[2]
    manifest = requests.get(f"{base}/manifests/{digest}", verify=ca, auth=("datalab", password), timeout=10,
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert manifest.status_code == 200 and manifest.headers["Docker-Content-Digest"] == digest
    plain = requests.get(base.replace("https://", "http://") + "/tags/list", timeout=10)
    assert plain.status_code == 400  # Go's TLS server to a plain-HTTP client: nothing served


@pytest.mark.parametrize("body, status, message", [
    ('{"TX_AMOUNT": 1', 400, "not valid JSON"),
    ({"TX_AMOUNT": 1}, 422, "missing field(s): TX_DURING_WEEKEND"),
    ([], 422, "the list is empty"),
])
def test_bad_requests_through_the_edge_are_4xx_and_it_keeps_serving(lab, serving, body, status, message):
    data = body if isinstance(body, str) else json.dumps(body)
    r = requests.post(f"{edge(lab)}/v1/score", data=data, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status and message in r.json()["error"]
    example = requests.get(f"{edge(lab)}/v1/schema", timeout=10).json()["example"]
    assert requests.post(f"{edge(lab)}/v1/score", json=example, timeout=10).status_code == 200


def stage_counts(lab):
    """{stage: requests timed}, summed over the replicas' /metrics."""
    counts = {}
    for replica in lab.service_containers("scoring"):
        page = lab.exec(replica, "curl", "-fsS", "http://127.0.0.1:8080/metrics").stdout
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                if sample.name == "scoring_stage_seconds_count":
                    counts[sample.labels["stage"]] = counts.get(sample.labels["stage"], 0) + sample.value
    return counts


def test_replicas_time_every_answer_by_stage_and_log_refusals_not_answers(lab, serving):
    """A replica answers hundreds of requests a second: each is counted and timed on /metrics,
    and its log has a line for a refusal, none for an answer (scoring/README.md)."""
    example = requests.get(f"{edge(lab)}/v1/schema", timeout=10).json()["example"]
    before = stage_counts(lab)
    for _ in range(20):
        assert requests.post(f"{edge(lab)}/v1/score", json=example, timeout=10).status_code == 200
    refused = requests.post(f"{edge(lab)}/v1/score", json={"TX_AMOUNT": 1}, timeout=10)
    assert refused.status_code == 422
    after = stage_counts(lab)
    assert {stage: after[stage] - before.get(stage, 0) for stage in ("parse", "queue", "model", "respond")} == \
        {"parse": 20, "queue": 20, "model": 20, "respond": 20}, (before, after)
    logs = "".join(lab.docker.run("logs", replica).stderr for replica in lab.service_containers("scoring"))
    assert "422 POST /v1/score" in logs and "200 POST /v1/score" not in logs


@pytest.mark.parametrize("round_", [1, 2])
def test_a_task_killed_under_load_is_replaced_and_the_edge_routes_around_it(lab, serving, round_):
    example = requests.get(f"{edge(lab)}/v1/schema", timeout=10).json()["example"]
    lab.wait_for(lambda: len(lab.service_containers("scoring")) == 2, "two scoring tasks", timeout=120)
    lab.wait_for(lambda: json.loads(lab.datalab("scoring", "status", "--json").stdout)["scoring"]["health"] == "healthy",
                 "both tasks healthy", timeout=120)
    tasks = lab.service_containers("scoring")
    with ScoringLoad(f"{edge(lab)}/v1/score", example) as load:  # about 50 requests/s
        time.sleep(2)
        lab.docker.run("kill", tasks[0])
        lab.wait_for(lambda: len(lab.service_containers("scoring")) == 2 and tasks[0] not in lab.service_containers("scoring"),
                     "Swarm replaced the killed task", timeout=120)
        time.sleep(3)
    assert len(load.answered) > 100
    assert load.failures == []


BROKEN = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
    {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]}, "outputs": [],
     "source": f'name = "{MODEL}"'},
    {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source":
     "import mlflow\n"
     "class Broken(mlflow.pyfunc.PythonModel):\n"
     "    def predict(self, context, model_input, params=None):\n"
     "        return model_input\n"
     "mlflow.set_experiment('broken-models')\n"
     "with mlflow.start_run():\n"
     "    mlflow.pyfunc.log_model(name='model', python_model=Broken(), registered_model_name=name)  # no signature\n"}]}


def test_a_version_that_cannot_load_is_rolled_back_and_the_old_one_keeps_answering(lab, model_v1, serving):
    before = registered_versions(lab, MODEL)
    run_job(lab, BROKEN, timeout=600)
    broken = max(registered_versions(lab, MODEL) - before, key=int)
    proc = lab.datalab("deploy", f"{MODEL}@{broken}", check=False, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"v{broken} was rolled back" in proc.stderr and f"{MODEL} v{model_v1} serving" in proc.stderr
    status = json.loads(lab.datalab("scoring", "status", "--json").stdout)
    assert status["deployment"]["version"] == model_v1
    example = requests.get(f"{edge(lab)}/v1/schema", timeout=10).json()["example"]
    answer = requests.post(f"{edge(lab)}/v1/score", json=example, timeout=10).json()
    assert answer["version"] == model_v1


def test_unknown_model_changes_nothing(lab, model_v1, serving):
    proc = lab.datalab("deploy", "no-such-model@production", check=False)
    assert proc.returncode == 1 and "cannot fetch model no-such-model@production" in proc.stderr
    assert f"{MODEL} v{model_v1} still serving" in proc.stderr
