"""The jobs store (SQLite + files) and the queue's limits, with a fake runner
(the Docker boundary); the real containers are in tests/integration/test_jobs.py."""

import time

import pytest
from tornado import web

from datalab_jobs.queue import Jobs
from datalab_jobs.store import Store

PROFILE = {"name": "python", "image": "datalab/python:abc", "kernel": "python-3.11", "gpus": 0,
           "cpu": 1.0, "memory": "2G", "groups": ["datascientists"]}
NOTEBOOK = {"cells": [], "metadata": {}}
SETTINGS = {"jobs": {"max_running": 2, "max_running_per_user": 1, "default_timeout": 60, "max_timeout": 600,
                     "max_cpu": 4, "max_queued_per_user": 3, "max_schedules_per_user": 2},
            "spawner": {"profiles": [PROFILE]}}


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


def refused(jobs, body, user="alice"):
    with pytest.raises(web.HTTPError) as err:
        jobs.submit(user, ["datascientists"], False, {"notebook": NOTEBOOK, **body})
    return err.value.status_code, err.value.log_message


CPU_LIMIT = "cpu must be a number above 0 and at most 1 (the limit of profile 'python')"
MEMORY_LIMIT = "memory must be a size from 6M to 2G (the limit of profile 'python')"


@pytest.mark.parametrize("body, message", [
    ({"timeout": "soon"}, "timeout must be a number"), ({"retries": 9}, "retries must be"),
    ({"cpu": "lots"}, CPU_LIMIT), ({"cpu": 1.5}, CPU_LIMIT), ({"cpu": 0}, CPU_LIMIT), ({"cpu": -1}, CPU_LIMIT),
    ({"cpu": "nan"}, CPU_LIMIT),
    # "0" is no limit at all to Docker; 900G is far above the profile's 2G
    ({"memory": "0"}, MEMORY_LIMIT), ({"memory": 0}, MEMORY_LIMIT), ({"memory": "900G"}, MEMORY_LIMIT),
    ({"memory": "2049M"}, MEMORY_LIMIT), ({"memory": "-1G"}, MEMORY_LIMIT), ({"memory": "4 gigs"}, MEMORY_LIMIT),
    ({"memory": "1k"}, MEMORY_LIMIT),
    ({"params": ["n"]}, "params must be an object"), ({"profile": ["python"]}, "profile must be a string"),
    ({"schedule": 5}, "schedule must be a string"),
])
def test_bad_fields_are_refused_with_a_400_naming_them_and_their_limit(tmp_path, body, message):
    jobs, store, _ = queue(tmp_path)
    status, text = refused(jobs, body)
    assert status == 400 and message in text, text
    assert not store.jobs() and not store.schedules()


def test_cpu_and_memory_within_the_profile_are_kept_as_asked(tmp_path):
    jobs, store, _ = queue(tmp_path)
    _, job = jobs.submit("alice", ["datascientists"], False, {"notebook": NOTEBOOK, "cpu": "0.5", "memory": "1.5g"})
    assert (job["cpu"], job["memory"]) == (0.5, "1.5g")
    _, job = jobs.submit("alice", ["datascientists"], False, {"notebook": NOTEBOOK})
    assert (job["cpu"], job["memory"]) == (1.0, "2G")  # the profile's


def test_the_labs_max_cpu_caps_a_profile_that_grants_more(tmp_path):
    jobs, _, _ = queue(tmp_path)
    jobs.settings = {**jobs.settings, "max_cpu": 0.5}
    assert refused(jobs, {"cpu": 1}) == (400, "cpu must be a number above 0 and at most 0.5 "
                                              "(the limit of jobs.max_cpu), got 1")


def test_unfinished_jobs_per_user_are_capped_with_a_429_stating_the_limit(tmp_path):
    jobs, store, ids = queue(tmp_path, "alice", "alice", "alice")
    status, message = refused(jobs, {})
    assert status == 429 and "alice already has 3 jobs queued or running" in message
    assert "(jobs.max_queued_per_user = 3)" in message
    jobs.submit("bob", ["datascientists"], False, {"notebook": NOTEBOOK})  # others are not held back
    jobs.tick()  # running ones count too: one of alice's runs, two wait
    assert refused(jobs, {})[0] == 429
    store.update_job(ids[0], status="succeeded", finished_at=time.time())
    assert jobs.submit("alice", ["datascientists"], False, {"notebook": NOTEBOOK})[0] == "job"


def test_schedules_per_user_are_capped_with_a_429_stating_the_limit(tmp_path):
    jobs, store, _ = queue(tmp_path)
    for _ in range(2):
        jobs.submit("alice", ["datascientists"], False, {"notebook": NOTEBOOK, "schedule": "0 2 * * *"})
    status, message = refused(jobs, {"schedule": "0 3 * * *"})
    assert status == 429 and "alice already has 2 schedules" in message
    assert "(jobs.max_schedules_per_user = 2)" in message and len(store.schedules()) == 2


def test_a_schedule_skips_its_run_while_its_user_is_at_the_queue_cap(tmp_path):
    jobs, store, _ = queue(tmp_path, "alice", "alice")
    _, schedule = jobs.submit("alice", ["datascientists"], False, {"notebook": NOTEBOOK, "schedule": "* * * * *"})
    jobs.fire(schedule, time.time())
    jobs.fire(schedule, time.time())  # the third unfinished job was the last allowed
    assert len(store.jobs(user="alice")) == 3
    assert store.schedule(schedule["id"])["next_run_at"] > time.time()  # and it fires again later


def test_a_schedule_made_before_the_limits_does_not_fire_beyond_them(tmp_path):
    jobs, store, _ = queue(tmp_path)
    _, schedule = jobs.submit("alice", ["datascientists"], False, {"notebook": NOTEBOOK, "schedule": "* * * * *"})
    store.update_schedule(schedule["id"], memory="0")  # as an older service accepted
    jobs.fire(store.schedule(schedule["id"]), time.time())
    assert not store.jobs()


def test_a_started_job_gets_a_registry_only_token_of_its_user_that_outlives_its_timeout(tmp_path):
    jobs, store, ids = queue(tmp_path, "alice")
    jobs.tick()
    token = jobs.runner.environment["MLFLOW_TRACKING_TOKEN"]
    assert token == "token-of-alice-for-access:services!service=registry-660s"
