"""Notebook jobs through the real hub, jobs service and job containers."""

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import MODEL, RAW_INPUT_OFF, SMALL_REFERENCE, notebook

from datalab import settings as settings_mod

REPO = Path(__file__).resolve().parents[2]
# the profile whose limits the attacks below go beyond (the test lab keeps its defaults)
PYTHON = SimpleNamespace(**next(p for p in settings_mod.defaults().table("profiles") if p["name"] == "python"))

pytestmark = pytest.mark.integration


SUM = notebook('total = sum(range(n + 1))\nprint(f"{label}: sum={total} rate={rate}")',
               params='n = 3  # how many\nlabel = "demo"\nrate = 0.5\n')
FAIL = notebook('print("before")', 'raise ValueError("card table is empty")', 'print("never")')
FAIL["metadata"] = {}  # saved without kernel metadata: the profile's kernel runs it
SLEEP = notebook('import time\nprint("sleeping", flush=True)\ntime.sleep(seconds)', params="seconds = 60\n")
# A hostile notebook breaks the output file papermill writes in its container, so that
# collecting it would raise (papermill then fails to write over it; what counts is what
# the service makes of what is left): a directory, and JSON nested deeper than a parser
# goes, made read-only, its folder too, so that it stays.
OUTPUT = "/tmp/job/output.ipynb"
OUTPUT_A_DIRECTORY = notebook(f'import os\nos.remove("{OUTPUT}")\nos.mkdir("{OUTPUT}")')
OUTPUT_DEEPLY_NESTED = notebook(f'import os\nwith open("{OUTPUT}", "w") as f:\n    f.write("[" * 100_000 + "]" * 100_000)\n'
                                f'os.chmod("{OUTPUT}", 0o444)\nos.chmod("/tmp/job", 0o555)')


@pytest.fixture
def as_bob(lab):
    """The jobs REST API as bob, with a token of his (as from inside his notebook server)."""
    session = lab.login("bob")
    headers = {"Authorization": f"token {session.token('bob')}"}
    base = f"{lab.service_url('jobs')}/api/"

    class API:
        def get(self, path):
            return session.http.get(base + path, headers=headers)

        def post(self, path, body):
            return session.http.post(base + path, json=body, headers=headers)

        def delete(self, path):
            return session.http.delete(base + path, headers=headers)

    return API()


def test_job_runs_with_parameters_and_keeps_output_and_log(lab, jobs):
    job = jobs.submit("sum.ipynb", SUM, "-p", "n", "10", "-p", "label", "cards", "--profile", "datascience")
    assert job["status"] == "queued" and job["params"] == {"n": 10, "label": "cards"}
    done = jobs.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["user"] == "alice" and done["profile"] == "datascience" and done["duration_s"] > 0
    output = json.loads(jobs.cli("output", job["id"]).stdout)
    printed = "".join("".join(o.get("text", "")) for c in output["cells"] for o in c.get("outputs", []))
    assert "cards: sum=55 rate=0.5" in printed
    assert output["metadata"]["papermill"]["parameters"] == {"n": 10, "label": "cards"}
    log = jobs.cli("logs", job["id"]).stdout
    assert "Executing" in log and "cards: sum=55" in log
    # the container is gone, the record stays
    assert not lab.docker.out("ps", "-aq", "--filter", f"label=org.datalab.job={job['id']}")


def test_failing_notebook_fails_with_the_cells_error_and_keeps_its_output(jobs):
    job = jobs.submit("fail.ipynb", FAIL)
    done = jobs.wait(job["id"])
    assert done["status"] == "failed"
    assert done["error"].startswith("ValueError: card table is empty")
    output = json.loads(jobs.cli("output", job["id"]).stdout)
    errors = [o for c in output["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors and errors[0]["evalue"] == "card table is empty"


def test_timeout_stops_the_job(jobs):
    job = jobs.submit("sleep.ipynb", SLEEP, "--timeout", "8")
    done = jobs.wait(job["id"])
    assert done["status"] == "timed out" and "8 s timeout" in done["exit_reason"]


def test_cancel_stops_the_container_within_seconds(lab, jobs):
    job = jobs.submit("sleep.ipynb", SLEEP, "-p", "seconds", "300")
    jobs.wait(job["id"], statuses=("running",), timeout=60)
    running = lab.docker.out("ps", "-q", "--filter", f"label=org.datalab.job={job['id']}")
    info = lab.docker.inspect("container", running)[0]  # locked down like a notebook server
    assert info["Config"]["User"] == "1000" and info["HostConfig"]["CapDrop"] == ["ALL"]
    assert info["HostConfig"]["PidsLimit"] == 1024 and "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    jobs.cli("cancel", job["id"])
    done = jobs.wait(job["id"], timeout=30)
    assert done["status"] == "cancelled"
    assert not lab.docker.out("ps", "-aq", "--filter", f"label=org.datalab.job={job['id']}")
    refused = jobs.cli("cancel", job["id"], check=False)
    assert refused.returncode == 1 and "already cancelled" in refused.stderr


@pytest.mark.parametrize("params, message", [
    (["-p", "m", "3"], "unknown parameter(s) m; this notebook accepts: n (int, default 3), label (str"),
    (["-p", "n", "three"], "parameter 'n' must be int, got 'three'"),
    (["--profile", "tensorflow-gpu"], "is not allowed for your groups"),
])
def test_bad_submissions_are_refused_before_queueing(lab, jobs, params, message):
    before = len(json.loads(jobs.cli("list", "--all", "--json").stdout))
    proc = jobs.submit("sum.ipynb", SUM, *params, check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert len(json.loads(jobs.cli("list", "--all", "--json").stdout)) == before


def test_a_job_that_breaks_its_output_fails_alone_and_the_loop_goes_on(jobs):
    sleeper = jobs.submit("sleep.ipynb", SLEEP, "--profile", "python", "-p", "seconds", "300", user="bob")
    try:
        broken = [jobs.submit("directory.ipynb", OUTPUT_A_DIRECTORY, "--profile", "python"),
                  jobs.submit("nested.ipynb", OUTPUT_DEEPLY_NESTED, "--profile", "python")]
        # queued behind them (three run at once in the test lab): it starts once one of them is collected
        normal = jobs.submit("sum.ipynb", SUM, "--profile", "python", "-p", "n", "10", user="bob")
        for job, why in zip(broken, ("output.ipynb is a directory", "output.ipynb is nested too deeply")):
            done = jobs.wait(job["id"])
            assert done["status"] == "failed" and why in done["error"], done
            refused = jobs.cli("output", job["id"], check=False)
            assert refused.returncode == 1 and "has no output notebook" in refused.stderr
        done = jobs.wait(normal["id"])
        assert done["status"] == "succeeded", done
        assert "demo: sum=55" in jobs.cli("logs", normal["id"]).stdout
        assert jobs.wait(sleeper["id"], statuses=("running",), timeout=60)["status"] == "running"
        jobs.cli("cancel", sleeper["id"])
        assert jobs.wait(sleeper["id"], timeout=30)["status"] == "cancelled"
    finally:
        jobs.cli("cancel", sleeper["id"], check=False)


@pytest.mark.parametrize("field, value, message", [
    # Docker reads a memory limit of 0 as none at all
    ("memory", "0", f"memory must be a size from 6M to {PYTHON.memory} (the limit of profile 'python')"),
    ("memory", "900G", f"memory must be a size from 6M to {PYTHON.memory} (the limit of profile 'python')"),
    ("cpu", PYTHON.cpu + 1, f"cpu must be a number above 0 and at most {PYTHON.cpu:g} (the limit of profile 'python')"),
])
def test_a_job_cannot_ask_for_more_than_its_profile(as_bob, field, value, message):
    before = len(as_bob.get("jobs").json()["jobs"])
    refused = as_bob.post("jobs", {"notebook": SUM, "profile": "python", field: value})
    assert refused.status_code == 400 and message in refused.json()["error"], refused.text
    assert len(as_bob.get("jobs").json()["jobs"]) == before


def fill_to_the_cap(as_bob, body, room, made, kind):
    """Submit `body` until the cap leaves no room (each id made into `made`, for the
    cleanup), then once more: returns that last answer."""
    for _ in range(room):
        r = as_bob.post("jobs", body)
        assert r.status_code == 201, r.text
        made.append(r.json()[kind]["id"])
    return as_bob.post("jobs", body)


def test_a_user_cannot_flood_the_queue_or_the_schedules(lab, jobs, as_bob):
    cap = lab.settings["jobs"]["max_queued_per_user"]
    sleeping = {"notebook": SLEEP, "profile": "python", "params": {"seconds": 300}}
    unfinished = [j for j in as_bob.get("jobs").json()["jobs"] if j["status"] in ("queued", "running")]
    submitted = []
    try:
        refused = fill_to_the_cap(as_bob, sleeping, cap - len(unfinished), submitted, "job")
        assert refused.status_code == 429 and f"(jobs.max_queued_per_user = {cap})" in refused.json()["error"]
    finally:
        for job_id in submitted:
            as_bob.post(f"jobs/{job_id}/cancel", {})
    assert all(jobs.wait(i, timeout=60)["status"] == "cancelled" for i in submitted)

    cap = lab.settings["jobs"]["max_schedules_per_user"]
    yearly = {"notebook": SUM, "profile": "python", "schedule": "0 0 1 1 *"}
    made = []
    try:
        refused = fill_to_the_cap(as_bob, yearly, cap - len(as_bob.get("schedules").json()["schedules"]), made,
                                  "schedule")
        assert refused.status_code == 429 and f"(jobs.max_schedules_per_user = {cap})" in refused.json()["error"]
    finally:
        for schedule_id in made:
            as_bob.delete(f"schedules/{schedule_id}")


def test_users_see_and_cancel_only_their_own_jobs(lab, jobs):
    job = jobs.submit("sleep.ipynb", SLEEP, "-p", "seconds", "300", user="alice")
    bob = lab.login("bob")
    token = bob.token("bob")
    base = f"{lab.service_url('jobs')}/api/jobs"
    headers = {"Authorization": f"token {token}"}
    assert job["id"] not in {j["id"] for j in bob.http.get(base, headers=headers).json()["jobs"]}
    assert bob.http.get(f"{base}/{job['id']}", headers=headers).status_code == 404
    assert bob.http.post(f"{base}/{job['id']}/cancel", headers=headers).status_code == 404
    assert bob.http.get(f"{base}/{job['id']}/output", headers=headers).status_code == 404
    anonymous = bob.http.get(base)
    assert anonymous.status_code == 403
    carol = lab.login("carol")  # a hub admin sees everybody's
    admin = {"Authorization": f"token {carol.token('carol')}"}
    assert job["id"] in {j["id"] for j in carol.http.get(f"{base}?all=1", headers=admin).json()["jobs"]}
    jobs.cli("cancel", job["id"])
    assert jobs.wait(job["id"], timeout=30)["status"] == "cancelled"


def test_per_user_limit_keeps_the_rest_queued(jobs):
    ids = [jobs.submit("sleep.ipynb", SLEEP, "-p", "seconds", "300", user="bob")["id"] for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = [jobs.show(i)["status"] for i in ids]
            if statuses.count("running") == 2:
                break
            time.sleep(1)
        time.sleep(3)  # and it stays so
        statuses = [jobs.show(i)["status"] for i in ids]
        assert sorted(statuses) == ["queued", "running", "running"], statuses
    finally:
        for i in ids:
            jobs.cli("cancel", i, check=False)
    assert all(jobs.wait(i, timeout=60)["status"] == "cancelled" for i in ids)


def test_schedule_fires_without_any_notebook_server(lab, jobs):
    session = lab.login("bob")
    if "" in (session.hub_api("/users/bob").json().get("servers") or {}):
        session.stop("bob")
    created = jobs.submit("sum.ipynb", SUM, "--schedule", "* * * * * */10", user="bob")
    try:
        deadline = time.monotonic() + 60
        fired = []
        while time.monotonic() < deadline and not fired:
            fired = [j for j in json.loads(jobs.cli("list", "--all", "--json").stdout)
                     if j["schedule_id"] == created["id"]]
            time.sleep(1)
        assert fired, "the schedule did not fire"
        assert jobs.wait(fired[0]["id"])["status"] == "succeeded"
        assert fired[0]["user"] == "bob"
    finally:
        jobs.cli("unschedule", created["id"])
    assert created["id"] not in {s["id"] for s in json.loads(jobs.cli("schedules", "--json").stdout)}


def test_jobs_from_inside_a_notebook_container_use_the_users_token(lab, jobs):
    lab.fresh_server("alice", "datascience")
    container = lab.notebook_container("alice")
    lab.exec(container, "sh", "-c", f"cat > /home/jovyan/sum.ipynb <<'EOF'\n{json.dumps(SUM)}\nEOF")
    proc = lab.exec(container, "datalab", "jobs", "submit", "sum.ipynb", "-p", "n", "4", "--wait", "--json")
    job = json.loads(proc.stdout)
    assert job["status"] == "succeeded" and job["user"] == "alice"
    listed = json.loads(lab.exec(container, "datalab", "jobs", "list", "--json").stdout)
    assert job["id"] in {j["id"] for j in listed} and {j["user"] for j in listed} == {"alice"}
    python = lab.exec(container, "python3", "-c",
                      "from datalab_client.jobs import JobsClient; "
                      f"print(JobsClient.from_environment().show('{job['id']}')['status'])")
    assert python.stdout.strip() == "succeeded"


def test_reference_workload_trains_compares_and_registers_a_model(lab, jobs):
    notebook = json.loads((REPO / "pipelines" / "notebooks" / "fraud_reference.ipynb").read_text())
    job = jobs.submit("fraud_reference.ipynb", notebook, "--profile", "tensorflow", "--timeout", "1200",
                      *SMALL_REFERENCE, "-p", "register_model", MODEL, *RAW_INPUT_OFF)
    done = jobs.wait(job["id"], timeout=1200)
    assert done["status"] == "succeeded", (done, jobs.cli("logs", job["id"]).stdout[-3000:])
    model = lab.mlflow_api(f"registered-models/get?name={MODEL}")["registered_model"]
    version = model["latest_versions"][-1]
    run = lab.mlflow_api(f"runs/get?run_id={version['run_id']}")["run"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    for name in ("auc_roc", "average_precision", "card_precision_at_100",
                 "logistic_regression_auc_roc", "random_forest_auc_roc", "xgboost_auc_roc"):
        assert 0 <= metrics[name] <= 1, name
    assert metrics["auc_roc"] > 0.6  # it learned something, even at this size
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mlflow.user"] == "alice"
    artifacts = {a["path"] for a in lab.mlflow_api(f"artifacts/list?run_id={version['run_id']}")["files"]}
    assert {"plots", "evaluation", "comparison.csv"} <= artifacts
