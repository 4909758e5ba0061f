"""The registry behind the hub, and promotions: real hub, gateway, MLflow,
controller and Swarm. A promotion is the production alias set through the
gateway as a user (what the MLflow UI does; the browser does it in
test_browser.py); the controller gates it and rolls it out, or undoes it."""

import json
import time

import pytest
import requests
from conftest import MODEL, browser_login, registered_versions, run_job
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from datalab import promotion

pytestmark = pytest.mark.integration
ALIAS = "production"


def copy_version(lab, version, user="alice", model=MODEL):
    """A new version of `model` with the very artifacts of `version` (as good as it, by construction)."""
    found = lab.registry(user, "GET", f"model-versions/get?name={model}&version={version}")["model_version"]
    made = lab.registry(user, "POST", "model-versions/create", {
        "name": model, "source": found["source"], "run_id": found["run_id"],
        "model_id": found["source"].rsplit("/", 1)[-1], "description": f"copy of v{version}"})
    return made["model_version"]["version"]


def version_tags(lab, version):
    found = lab.registry("alice", "GET", f"model-versions/get?name={MODEL}&version={version}")["model_version"]
    return {t["key"]: t["value"] for t in found.get("tags", [])}


def alias_version(lab):
    model = lab.registry("alice", "GET", f"registered-models/get?name={MODEL}")["registered_model"]
    return {a["alias"]: a["version"] for a in model.get("aliases", [])}.get(ALIAS)


def served_version(lab):
    return requests.get(f"{lab.edge}/v1/schema", timeout=10).json().get("version")


def promote(lab, version, user="alice"):
    proc = lab.datalab("promote", MODEL, str(version), "--as", user, "--wait", "--json", check=False, timeout=700)
    return proc, (json.loads(proc.stdout[proc.stdout.index("{"):]) if "{" in proc.stdout else None)


@pytest.fixture(scope="module")
def production(lab, model_v1):
    """model_v1 promoted by alice: the first promotion, on absolute thresholds."""
    if alias_version(lab) == model_v1 and served_version(lab) == model_v1:
        return model_v1
    proc, record = promote(lab, model_v1)
    assert record and record["outcome"] in ("deployed", "adopted"), proc.stdout + proc.stderr
    return model_v1


def test_the_registry_is_behind_the_hubs_login(lab, model_v1):
    anonymous = requests.get(f"{lab.service_url('registry')}/", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and "/hub/api/oauth2/authorize" in anonymous.headers["Location"]
    api = requests.get(f"{lab.service_url('registry')}/api/2.0/mlflow/experiments/search", timeout=10)
    assert api.status_code == 401 and "MLFLOW_TRACKING_TOKEN" in api.json()["message"]
    forged = requests.get(f"{lab.service_url('registry')}/api/2.0/mlflow/experiments/search", timeout=10,
                          headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401
    session = lab.login("bob")  # the hub's cookie opens the MLflow UI
    page = session.http.get(f"{lab.service_url('registry')}/", timeout=30)
    assert page.status_code == 200 and "static-files" in page.text
    assert "_datalab/xsrf.js" in page.text  # MLflow's UI sends the XSRF token (it loads first)
    # with the cookie alone, an API call is not bob's: no same-origin exemption, whatever
    # Sec-Fetch-Site says; with the page's _xsrf cookie as X-XSRFToken, it is
    search = f"{lab.service_url('registry')}/ajax-api/2.0/mlflow/experiments/search"
    forged = session.http.post(search, json={"max_results": 1}, timeout=30,
                               headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
    assert forged.status_code == 401, forged.text[:300]
    xsrf = next(c.value for c in session.http.cookies if c.name == "_xsrf" and c.path.startswith("/services/registry"))
    allowed = session.http.post(search, json={"max_results": 1}, timeout=30,
                                headers={"X-XSRFToken": xsrf, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
    assert allowed.status_code == 200, allowed.text[:300]
    # the reference job went through the gateway as alice: its model belongs to her team
    model = lab.registry("bob", "GET", f"registered-models/get?name={MODEL}")["registered_model"]
    assert {t["key"]: t["value"] for t in model["tags"]}["datalab.team"] == "fraud-team"


def test_notebooks_use_mlflow_as_their_user_and_teams_keep_to_their_own(lab):
    lab.fresh_server("dave", "datascience")
    container = lab.notebook_container("dave")
    code = ("import mlflow, os\n"
            "mlflow.set_experiment('dave-aml')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('recall', 0.5)\n"
            "print(run.info.run_id, os.environ['MLFLOW_TRACKING_URI'])\n")
    out = lab.exec(container, "python3", "-c", code).stdout.split()
    run_id, uri = out[-2], out[-1]
    assert uri.endswith("/services/registry")
    run = lab.registry("dave", "GET", f"runs/get?run_id={run_id}")["run"]
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}["mlflow.user"] == "dave"
    experiment = lab.registry("dave", "GET", f"experiments/get?experiment_id={run['info']['experiment_id']}")
    assert {t["key"]: t["value"] for t in experiment["experiment"]["tags"]}["datalab.team"] == "aml-team"
    # alice (fraud-team) reads dave's run (registry.others = "read") but may not write to it
    assert lab.registry("alice", "GET", f"runs/get?run_id={run_id}")["run"]["info"]["run_id"] == run_id
    with pytest.raises(promotion.PromotionError, match="403 alice may not change what team aml-team owns"):
        lab.registry("alice", "POST", "runs/log-metric", {"run_id": run_id, "key": "recall", "value": 1.0,
                                                           "timestamp": 0})
    metrics = lab.registry("dave", "GET", f"runs/get?run_id={run_id}")["run"]["data"]["metrics"]
    assert [m["value"] for m in metrics if m["key"] == "recall"] == [0.5]  # nothing changed


def test_an_approvers_promotion_is_gated_rolled_out_tagged_and_audited(lab, production):
    candidate = copy_version(lab, production)
    before = time.monotonic()
    proc, record = promote(lab, candidate)
    assert record["outcome"] == "deployed", proc.stdout + proc.stderr
    assert served_version(lab) == candidate and alias_version(lab) == candidate
    assert time.monotonic() - before < 120
    assert record["by"] == "alice" and record["from"] == f"{MODEL} v{production}"
    assert record["gate"]["candidate"]["average_precision"] == pytest.approx(
        record["gate"]["production"]["average_precision"])  # same artifacts, same figures
    tags = version_tags(lab, candidate)
    assert tags["datalab.deployed_by"] == "alice" and "datalab.deployed_at" in tags
    assert float(tags["datalab.gate.average_precision"]) > 0
    exported = [json.loads(line) for line in lab.datalab("audit", "--json").stdout.splitlines()]
    assert exported[-1]["version"] == candidate and exported[-1]["outcome"] == "deployed"
    assert f"{MODEL} v{candidate}" in lab.datalab("audit", "--last", "1").stdout


def test_a_non_approver_cannot_promote_and_nothing_changes(lab, production):
    serving, aliased = served_version(lab), alias_version(lab)
    candidate = copy_version(lab, production, user="bob")  # bob may add versions to his team's model
    with pytest.raises(promotion.PromotionError, match="403 only members of model-approvers may set"):
        promotion.set_production_alias(lab.settings, "bob", MODEL, candidate)
    with pytest.raises(promotion.PromotionError, match="400 the path may not contain"):  # %3F: MLflow's query
        lab.registry("bob", "POST", "registered-models/alias%3F/search",
                     {"name": MODEL, "alias": ALIAS, "version": candidate})
    with pytest.raises(promotion.PromotionError, match="400 the request body must be a JSON object"):
        lab.registry("bob", "POST", "registered-models/alias",
                     json.dumps({"name": MODEL, "alias": ALIAS, "version": candidate}))  # MLflow decodes twice
    with pytest.raises(promotion.PromotionError, match="403 .*written by the platform"):
        lab.registry("bob", "POST", "model-versions/set-tag", {"name": MODEL, "version": candidate,
                                                               "key": "datalab.deployed_by", "value": "alice"})
    time.sleep(3)
    assert served_version(lab) == serving and alias_version(lab) == aliased


DEGRADE = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
    {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]}, "outputs": [],
     "source": f'name = "{MODEL}"\nsource_version = "1"'},
    {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source":
     "# A worse candidate: the source version's scores turned upside down.\n"
     "import mlflow, pandas as pd\n"
     "client = mlflow.MlflowClient()\n"
     "src = client.get_model_version(name, source_version)\n"
     "inner = mlflow.artifacts.download_artifacts(f'models:/{name}/{source_version}')\n"
     "info = mlflow.models.get_model_info(f'models:/{name}/{source_version}')\n"
     "evaluation = mlflow.artifacts.download_artifacts(run_id=src.run_id, artifact_path='evaluation/evaluation.parquet')\n"
     "class Inverted(mlflow.pyfunc.PythonModel):\n"
     "    def load_context(self, context):\n"
     "        self.inner = mlflow.pyfunc.load_model(context.artifacts['inner'])\n"
     "    def predict(self, context, model_input, params=None):\n"
     "        return 1.0 - self.inner.predict(model_input)\n"
     "fields = [i.name for i in info.signature.inputs.inputs]\n"
     "mlflow.set_experiment('fraud-test-degraded')\n"
     "with mlflow.start_run():\n"
     "    mlflow.log_artifact(evaluation, 'evaluation')\n"
     "    mlflow.set_tag('datalab.evaluation', 'evaluation/evaluation.parquet')\n"
     "    mlflow.pyfunc.log_model(name='model', python_model=Inverted(), artifacts={'inner': inner},\n"
     "                            signature=info.signature, input_example=pd.read_parquet(evaluation)[fields].head(3).astype('float32'),\n"
     "                            registered_model_name=name)\n"}]}


def test_a_worse_candidate_is_rejected_the_alias_returns_and_the_old_version_serves(lab, production):
    serving, aliased = served_version(lab), alias_version(lab)
    before = registered_versions(lab, MODEL)
    run_job(lab, DEGRADE, "-p", "source_version", serving, timeout=900)
    worse = max(registered_versions(lab, MODEL) - before, key=int)
    proc, record = promote(lab, worse)
    assert proc.returncode == 1 and record["outcome"] == "rejected", proc.stdout + proc.stderr
    assert any("average precision" in r for r in record["reasons"]), record["reasons"]
    lab.wait_for(lambda: alias_version(lab) == aliased, "the alias back on the version in production", timeout=30)
    assert served_version(lab) == serving
    assert version_tags(lab, worse)["datalab.promotion.rejected"].startswith("rejected: ")


def forged_delivery(lab, headers):
    script = ("import urllib.request, json, sys\n"
              "body = json.dumps({'entity': 'model_version_alias', 'action': 'created',"
              f" 'data': {{'name': '{MODEL}', 'alias': 'production', 'version': '1'}}}}).encode()\n"
              f"req = urllib.request.Request('http://controller:8080/webhook', data=body, headers={headers!r})\n"
              "try:\n"
              "    print(urllib.request.urlopen(req, timeout=10).status)\n"
              "except urllib.error.HTTPError as e:\n"
              "    print(e.code, e.read().decode())\n")
    return lab.docker.out("exec", lab.service_container("hub"), "python3", "-c", script)


def test_an_unsigned_or_forged_webhook_is_refused_and_logged(lab, production):
    assert forged_delivery(lab, {"Content-Type": "application/json"}).startswith("401")
    forged = forged_delivery(lab, {"Content-Type": "application/json", "X-MLflow-Delivery-Id": "x",
                                   "X-MLflow-Timestamp": str(int(time.time())), "X-MLflow-Signature": "v1,Zm9yZ2Vk"})
    assert forged.startswith("401") and "signature does not match" in forged
    proc = lab.datalab("logs", "controller", "--tail", "50")
    logs = proc.stdout + proc.stderr  # the service's stderr stays stderr
    assert "refused a webhook delivery" in logs and "signature does not match" in logs


def promotions_state(lab):
    path = lab.settings.data_dir / "deployments" / "promotions.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_controller_restarted_mid_promotion_rolls_out_exactly_once(lab, production):
    candidate = copy_version(lab, served_version(lab))
    seen = len(lab.datalab("audit", "--json").stdout.splitlines())
    promotion.set_production_alias(lab.settings, "alice", MODEL, candidate)
    lab.wait_for(lambda: ((promotions_state(lab).get("in_progress") or {}).get("step") == "rolling out"),
                 "the controller rolling the candidate out", timeout=120)
    controller = lab.service_container("controller")
    lab.docker.run("kill", controller)
    lab.wait_for(lambda: served_version(lab) == candidate and not promotions_state(lab).get("in_progress"),
                 "the restarted controller finishing the promotion", timeout=300)
    records = [json.loads(line) for line in lab.datalab("audit", "--json").stdout.splitlines()][seen:]
    assert [(r["version"], r["outcome"]) for r in records] == [(candidate, "deployed")]
    image = json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"]["image"]
    tasks = lab.docker.out("service", "ps", "--format", "{{.Image}}", f"{lab.name}_scoring").splitlines()
    replicas = json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"]["replicas"]
    assert sum(t == image for t in tasks) == replicas  # one rollout: one task per replica on the image
    assert controller not in lab.service_containers("controller")


ADD_ALIAS = "//button[normalize-space(.)='Add']"  # beside "Aliases:" on a version's page
def alias_offered(browser):
    """The alias picker shows the typed name as a choice."""
    return any(e.is_displayed() for e in browser.find_elements(By.XPATH, f"//*[normalize-space(text())='{ALIAS}']"))


def save_production_alias_in_ui(browser):
    """On a version's page of MLflow's UI: add the production alias and save, as a person does."""
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable((By.XPATH, ADD_ALIAS))).click()
    box = WebDriverWait(browser, 30).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, "[role=dialog] input[role=combobox]")))
    box.send_keys(ALIAS)
    WebDriverWait(browser, 10).until(alias_offered)
    box.send_keys(Keys.ENTER)
    browser.find_element(By.XPATH, "//*[@role='dialog']//button[normalize-space(.)='Save aliases']").click()


@pytest.mark.browser
def test_an_approver_promotes_by_setting_the_alias_in_the_registry_ui(lab, production, browser, tmp_path):
    candidate = copy_version(lab, served_version(lab))
    browser_login(browser, lab, "alice")
    browser.get(f"{lab.service_url('registry')}/#/models/{MODEL}/versions/{candidate}")
    try:
        save_production_alias_in_ui(browser)
        WebDriverWait(browser, 30).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, "[role=dialog]")))
    finally:
        browser.save_screenshot(str(tmp_path / "registry-alias.png"))
    def last_attempt():
        return json.loads(lab.datalab("audit", "--json", "--last", "1").stdout or "{}")

    lab.wait_for(lambda: last_attempt().get("version") == candidate, "the controller's decision", timeout=180)
    last = last_attempt()
    assert (last["version"], last["by"], last["outcome"]) == (candidate, "alice", "deployed")
    example = requests.get(f"{lab.edge}/v1/schema", timeout=10).json()["example"]
    for _ in range(10):  # every replica
        answer = requests.post(f"{lab.edge}/v1/score", json=example, timeout=10).json()
        assert answer["version"] == candidate and 0 <= answer["score"] <= 100


@pytest.mark.browser
def test_a_non_approver_sees_why_the_registry_ui_refuses_the_alias(lab, production, browser, tmp_path):
    serving = served_version(lab)
    browser_login(browser, lab, "bob")
    candidate = copy_version(lab, serving, user="bob")
    browser.get(f"{lab.service_url('registry')}/#/models/{MODEL}/versions/{candidate}")
    try:
        save_production_alias_in_ui(browser)
        WebDriverWait(browser, 30).until(lambda b: "only members of model-approvers" in b.page_source)
    finally:
        browser.save_screenshot(str(tmp_path / "registry-alias-refused.png"))
    assert served_version(lab) == serving and alias_version(lab) != candidate
