"""The jobs store (SQLite + files) and the queue's limits, with a fake runner
(the Docker boundary); the real containers are in tests/integration/test_jobs.py."""

import time

from datalab_jobs.service import Jobs
from datalab_jobs.store import Store

PROFILE = {"name": "python", "image": "datalab/python:abc", "kernel": "python-3.11", "gpus": 0,
           "cpu": 1.0, "memory": "2G", "groups": ["datascientists"]}
NOTEBOOK = {"cells": [], "metadata": {}}
SETTINGS = {"jobs": {"max_running": 2, "max_running_per_user": 1, "default_timeout": 60, "max_timeout": 600,
                     "max_cpu": 4}, "spawner": {"profiles": [PROFILE]}}


class FakeRunner:
    def __init__(self):
        self.started = []

    def start(self, job, notebook, groups, admin, environment=None):
        self.started.append(job["id"])
        self.environment = environment
        return f"container-{job['id']}"

    def state(self, container_id):
        return True, None


class FakeHubUsers:
    def info(self, name):
        return {"name": name, "groups": ["datascientists"], "admin": False}

    def issue_token(self, name, scopes, expires_in, note):
        return f"token-of-{name}-for-{','.join(scopes)}-{expires_in}s"


def queue(tmp_path, *users):
    store = Store(tmp_path)
    jobs = Jobs(SETTINGS, store, FakeRunner(), FakeHubUsers())
    ids = [jobs.submit(u, ["datascientists"], False, {"notebook": NOTEBOOK})[1]["id"] for u in users]
    return jobs, store, ids


def test_history_survives_a_new_store_on_the_same_directory(tmp_path):
    _, store, ids = queue(tmp_path, "alice")
    store.update_job(ids[0], status="succeeded", started_at=time.time() - 5, finished_at=time.time())
    again = Store(tmp_path).job(ids[0])
    assert again["status"] == "succeeded" and again["user"] == "alice" and again["duration_s"] >= 5
    assert (tmp_path / "runs" / ids[0] / "input.ipynb").exists()


def test_limits_per_user_and_overall_keep_the_rest_queued(tmp_path):
    jobs, store, ids = queue(tmp_path, "alice", "alice", "bob", "carol")
    jobs.tick()
    status = {i: store.job(i)["status"] for i in ids}
    # one per user, two overall: alice's first and bob's run; alice's second and carol's wait
    assert [status[i] for i in ids] == ["running", "queued", "running", "queued"]
    assert jobs.runner.started == [ids[0], ids[2]]


def test_resource_fields_are_checked_with_a_400_naming_them(tmp_path):
    import pytest
    from tornado import web

    jobs, _, _ = queue(tmp_path)
    for body, message in (({"timeout": "soon"}, "timeout must be a number"), ({"cpu": "lots"}, "cpu must be a number"),
                          ({"memory": "4 gigs"}, "memory must look like"), ({"retries": 9}, "retries must be")):
        with pytest.raises(web.HTTPError) as err:
            jobs.submit("alice", ["datascientists"], False, {"notebook": NOTEBOOK, **body})
        assert err.value.status_code == 400 and message in err.value.log_message


def test_a_started_job_gets_a_registry_only_token_of_its_user_that_outlives_its_timeout(tmp_path):
    jobs, store, ids = queue(tmp_path, "alice")
    jobs.tick()
    token = jobs.runner.environment["MLFLOW_TRACKING_TOKEN"]
    assert token == "token-of-alice-for-access:services!service=registry-660s"
