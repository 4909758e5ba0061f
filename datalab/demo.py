"""The demo loop `datalab up` ends with (and `datalab demo` runs again): the
reference workload trains at a small size as alice, registers the model,
alice (an approver) promotes it through the registry gateway, the controller
gates and rolls it out, and a curl that scores a raw transaction (and one
that sends its fraud label back) is printed."""

import json
import re
import ssl
import sys
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from datalab_client import http

from . import audit, credentials, deploy, promotion

REPO_NOTEBOOK = "pipelines/notebooks/fraud_reference.ipynb"
DATALAB = Path(sys.executable).with_name("datalab")  # this CLI, in the venv `make up` made
MODEL = "fraud-detector"
USER = "alice"  # in fraud-team and model-approvers in the demo directory
SMALL = {"n_customers": 400, "n_terminals": 800, "nb_days": 60, "train_start_day": 35, "epochs": 10,
         "batch_size": 64, "register_model": MODEL}


class DemoError(RuntimeError):
    pass


def log_in(settings, user, password):
    """Log in through the hub's form once, so the hub knows the user and their groups.
    (The standard library's opener: a form login needs a cookie jar, which urllib3 has not.)"""
    ca = credentials.lab_ca_file(settings)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), urllib.request.HTTPSHandler(
        context=ssl.create_default_context(cafile=str(ca) if ca else None)))
    page = opener.open(f"{settings.hub_url}hub/login", timeout=30).read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": user, "password": password, "_xsrf": xsrf}).encode()
    answer = opener.open(f"{settings.hub_url}hub/login?next=", data=form, timeout=60)
    if "/hub/login" in answer.geturl():
        raise DemoError(f"{user} could not log in to the hub")


def run(settings, steps, repo):
    if deploy.current(settings):
        steps.info(f"demo: {deploy.current(settings)['model']} already serves; demo loop skipped")
        return None
    password = credentials.demo_logins(settings).get(USER)
    if not password:
        steps.info("demo: no demo user (corporate directory); demo loop skipped")
        return None
    log_in(settings, USER, password)
    jobs = credentials.jobs_client(settings)
    with steps.step(f"demo: {USER} trains the reference model (small size) as a job"):
        job = jobs.submit(str(repo / REPO_NOTEBOOK), params=SMALL, profile="tensorflow", as_user=USER,
                          timeout=1800)["job"]
        job = jobs.wait(job["id"], timeout=1800, every=2)
        if job["status"] != "succeeded":
            raise DemoError(f"the training job {job['id']} {job['status']}: {job.get('error')} "
                            f"(datalab jobs logs {job['id']})")
    token = promotion.user_token(settings, USER)
    found = promotion.registry_api(settings, token, "GET",
                                   f"registered-models/get?name={urllib.parse.quote(MODEL)}")
    version = max((v["version"] for v in found["registered_model"].get("latest_versions", [])), key=int)
    seen = len(audit.records(settings))
    with steps.step(f"demo: {USER} promotes {MODEL} v{version} (gate, then rollout)"):
        promotion.set_production_alias(settings, USER, MODEL, version)
        record = promotion.wait_outcome(settings, MODEL, version, seen)
    if record["outcome"] != "deployed":
        raise DemoError(f"{MODEL} v{version} was {record['outcome']}: {'; '.join(record['reasons'])}")
    return curl_example(settings)


def curl_example(settings):
    """A curl that scores the serving model's example transaction and, for a
    model on raw transactions, one that reports it as fraud (the token read
    when it runs, never printed)."""
    edge = settings.scoring_url
    schema = http.call("GET", f"{edge}/v1/schema")
    body = json.dumps(schema["example"])
    score = f"curl -s '{edge}/v1/score?explain=1' -H 'Content-Type: application/json' -d '{body}'"
    if "feedback" not in schema:
        return score
    label = json.dumps(schema["feedback"]["one"])
    return (f"{score}\n  # later, its label (a chargeback, an analyst's verdict):\n"
            f"  curl -s {edge}/v1/feedback -H 'Content-Type: application/json' "
            f"-H \"Authorization: Bearer $({DATALAB} scoring feedback-token)\" -d '{label}'")
