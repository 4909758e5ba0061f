"""The jobs service against a hostile notebook: the real Runner and Jobs loop
over a stand-in Docker engine (the boundary), and the real tornado handlers.
What a job leaves in its container is its user's to shape; one broken job
must end failed, saying why, while the rest of the loop goes on. The real
containers: tests/integration/test_jobs.py."""

import io
import json
import tarfile
import tempfile
import time

import docker.errors
import pytest
import requests
from tornado.testing import AsyncHTTPTestCase
from jupyterhub.services.auth import HubAuth

from datalab import settings as settings_mod
from datalab_jobs.runner import MB, Runner, tail
from datalab_jobs.api import app
from datalab_jobs.queue import Jobs
from datalab_jobs.store import Store

PROFILE = {"name": "python", "image": "datalab/python:abc", "kernel": "python-3.11", "gpus": 0,
           "cpu": 1.0, "memory": "2G", "groups": ["datascientists"]}
NOTEBOOK = {"cells": [], "metadata": {}}
MAX_OUTPUT_MB = 0.01  # about 10 KB, so an oversized output is quick to make


def notebook_bytes(*outputs, padding=0):
    cell = {"cell_type": "code", "metadata": {}, "source": "", "outputs": list(outputs)}
    return json.dumps({"cells": [cell], "metadata": {"padding": "x" * padding}}).encode()


def archive(name="output.ipynb", data=None, kind=tarfile.REGTYPE, link="", children=()):
    """A tar as Docker's archive endpoint sends it for one path of a container."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        info.size = len(data) if data is not None else 0
        tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for child, content in children:
            member = tarfile.TarInfo(f"{name}/{child}")
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return buf.getvalue()


class FakeContainer:
    def __init__(self, engine, container_id, options):
        self.engine, self.id, self.options = engine, container_id, options
        self.status, self.exit_code = "created", None
        self.log_chunks, self.output = [], None  # output: a tar, or an exception to raise
        self.mounts = []

    @property
    def attrs(self):
        return {"State": {"ExitCode": self.exit_code}, "Mounts": self.mounts}

    def put_archive(self, path, data):
        pass

    def start(self):
        self.status = "running"

    def exit(self, code, output=None, log=(b"papermill ran\n",)):
        self.status, self.exit_code, self.output, self.log_chunks = "exited", code, output, list(log)

    def stop(self, timeout=None):
        self.exit(137, self.output, self.log_chunks)

    def remove(self, force=False):
        del self.engine.by_id[self.id]

    def logs(self, stream, follow, stdout, stderr):
        return iter(self.log_chunks)

    def get_archive(self, path):
        if self.output is None:
            raise docker.errors.NotFound(f"no {path}")
        if isinstance(self.output, Exception):
            raise self.output
        self.engine.archive_reads.append(path)
        return (self.output[i:i + 4096] for i in range(0, len(self.output), 4096)), {}


class FakeEngine:
    """docker.from_env(), as far as the Runner uses it."""

    def __init__(self):
        self.by_id, self.archive_reads = {}, []
        self.containers = self
        self.isolated = []  # containers whose network rules the runner had set

    def create(self, image, **options):
        container = FakeContainer(self, f"c{len(self.by_id) + 1}-{options['name']}", options)
        self.by_id[container.id] = container
        return container

    def get(self, container_id):
        try:
            return self.by_id[container_id]
        except KeyError:
            raise docker.errors.NotFound(container_id) from None


class FakeHubUsers:
    def info(self, name):
        return {"name": name, "groups": ["datascientists"], "admin": False}

    def issue_token(self, name, scopes, expires_in, note):
        return f"token-of-{name}"


def make_jobs(tmp_path, **limits):
    jobs_settings = {**settings_mod.defaults().table("jobs"), "max_output_mb": MAX_OUTPUT_MB,
                     "max_log_mb": 0.001, **limits}
    engine = FakeEngine()
    runner = Runner("lab", ["lab"], lambda user, groups, admin: {}, max_log_mb=jobs_settings["max_log_mb"],
                    max_output_mb=jobs_settings["max_output_mb"], isolate=engine.isolated.append, client=engine)
    store = Store(tmp_path)
    return Jobs({"jobs": jobs_settings, "spawner": {"profiles": [PROFILE]}}, store, runner, FakeHubUsers()), engine


def submit(jobs, user, **body):
    return jobs.submit(user, ["datascientists"], False, {"notebook": NOTEBOOK, **body})[1]["id"]


def container_of(jobs, engine, job_id):
    return engine.get(jobs.store.job(job_id)["container_id"])


TOO_BIG = int(MAX_OUTPUT_MB * MB) + 1
BROKEN_OUTPUTS = {
    "a directory": (archive(kind=tarfile.DIRTYPE, children=[("huge", b"0" * TOO_BIG)]),
                    "output.ipynb is a directory, not the notebook file papermill writes"),
    "deeply nested JSON": (archive(data=b"[" * 5000 + b"]" * 5000),  # deeper than Python's parser goes
                           "output.ipynb is nested too deeply to be read as a notebook"),
    "oversized": (archive(data=notebook_bytes(padding=TOO_BIG)),
                  f"output.ipynb is {len(notebook_bytes(padding=TOO_BIG))} bytes, over the limit of 0.01 MB "
                  "(jobs.max_output_mb)"),
    "a link to another job's output": (archive(kind=tarfile.SYMTYPE, link="/srv/jupyterhub/data/jobs/runs/x/output.ipynb"),
                                       "output.ipynb is a link, not the notebook file papermill writes"),
    "not JSON": (archive(data=b"\xff not json"), "output.ipynb is not JSON, so not a notebook"),
    "JSON that is no notebook": (archive(data=b'{"cells": 7}'), "output.ipynb is not a notebook"),
}


@pytest.mark.parametrize("broken", BROKEN_OUTPUTS)
def test_a_broken_output_fails_its_job_and_the_queue_goes_on_in_the_same_tick(tmp_path, broken):
    tar, reason = BROKEN_OUTPUTS[broken]
    jobs, engine = make_jobs(tmp_path, max_running=1)
    hostile, waiting = submit(jobs, "mallory"), submit(jobs, "bob")
    jobs.tick()
    assert jobs.store.job(waiting)["status"] == "queued"  # one at a time: it waits for the hostile job
    container = container_of(jobs, engine, hostile)
    container.exit(0, tar)
    jobs.tick()
    done = jobs.store.job(hostile)
    assert (done["status"], done["exit_reason"]) == ("failed", "its output notebook was refused")
    assert reason in done["error"]
    assert jobs.store.job(waiting)["status"] == "running"
    assert container.id not in engine.by_id  # removed, as any finished job's container
    assert jobs.store.read_job_file(hostile, "output.ipynb") is None
    assert b"papermill ran" in jobs.store.read_job_file(hostile, "log.txt")


def test_a_normal_output_is_kept_and_names_the_failing_cell(tmp_path):
    jobs, engine = make_jobs(tmp_path)
    job_id = submit(jobs, "alice")
    jobs.tick()
    error = {"output_type": "error", "ename": "ValueError", "evalue": "card table is empty", "traceback": []}
    container_of(jobs, engine, job_id).exit(1, archive(data=notebook_bytes(error)))
    jobs.tick()
    done = jobs.store.job(job_id)
    assert (done["status"], done["error"]) == ("failed", "ValueError: card table is empty (cell 0)")
    assert json.loads(jobs.store.read_job_file(job_id, "output.ipynb"))["cells"][0]["outputs"] == [error]


def test_a_directory_output_is_judged_by_its_header_without_downloading_its_contents(tmp_path):
    jobs, engine = make_jobs(tmp_path)
    runner = jobs.runner
    consumed = []

    def chunks():  # the archive of a directory whose contents never end
        yield archive(kind=tarfile.DIRTYPE)[:512]
        while True:
            consumed.append(1)
            yield b"\0" * 4096

    class Container:
        def get_archive(self, path):
            return chunks(), {}

    assert runner.output_notebook(Container()) == (None, "output.ipynb is a directory, not the notebook file "
                                                         "papermill writes")
    assert len(consumed) < 10


def test_whatever_one_job_raises_the_others_timeouts_cancels_and_starts_go_on(tmp_path):
    jobs, engine = make_jobs(tmp_path, max_running=3, max_running_per_user=3)
    broken, overdue, cancelled, done_ok, waiting = (submit(jobs, user) for user in
                                                    ("mallory", "alice", "bob", "carol", "dave"))
    jobs.tick()  # the first three run
    container_of(jobs, engine, broken).exit(0, RuntimeError("the engine choked on it"))
    jobs.store.update_job(overdue, started_at=time.time() - 3600)
    jobs.store.update_job(cancelled, cancel_requested=1)
    jobs.tick()
    statuses = {job_id: jobs.store.job(job_id)["status"] for job_id in (broken, overdue, cancelled, done_ok, waiting)}
    assert statuses == {broken: "failed", overdue: "timed out", cancelled: "cancelled",
                        done_ok: "running", waiting: "running"}
    failed = jobs.store.job(broken)
    assert failed["exit_reason"] == "the jobs service could not watch or collect it"
    assert failed["error"] == "RuntimeError: the engine choked on it"
    assert not [c for c in engine.by_id.values() if c.options["labels"]["org.datalab.job"] in (broken, overdue, cancelled)]


def test_an_engine_that_does_not_answer_fails_no_job_it_is_watched_again(tmp_path):
    jobs, engine = make_jobs(tmp_path)
    job = submit(jobs, "alice")
    jobs.tick()
    container_of(jobs, engine, job).exit(0, requests.ConnectionError("docker.sock: connection refused"))
    jobs.tick()
    assert jobs.store.job(job)["status"] == "running"


def test_a_job_that_cannot_start_fails_and_the_next_one_starts(tmp_path):
    jobs, engine = make_jobs(tmp_path, max_running=1)
    lost, next_one = submit(jobs, "alice"), submit(jobs, "bob")
    (jobs.store.job_dir(lost) / "input.ipynb").unlink()
    jobs.tick()
    assert jobs.store.job(lost)["status"] == "failed" and jobs.store.job(lost)["exit_reason"] == "could not start"
    assert jobs.store.job(next_one)["status"] == "running"


def test_the_log_keeps_its_tail_marked_and_docker_rotates_it(tmp_path):
    jobs, engine = make_jobs(tmp_path)  # max_log_mb = 0.001: 1048 bytes
    job_id = submit(jobs, "alice")
    jobs.tick()
    container = container_of(jobs, engine, job_id)
    assert container.options["log_config"] == {"type": "json-file", "config": {"max-size": "1k", "max-file": "3"}}
    assert container.options["mem_limit"] == container.options["memswap_limit"] == "2G"
    container.exit(0, log=[b"x" * 1000 + b"\n"] * 50 + [b"the end\n"])
    jobs.tick()
    log = jobs.store.read_job_file(job_id, "log.txt").decode()
    assert "[... 49010 bytes of earlier output dropped: a job's log keeps its last 0.001 MB (jobs.max_log_mb) ...]" in log
    assert log.endswith("the end\n") and len(log) < 1048 + 200


def test_tail_keeps_a_short_log_whole_and_cuts_a_long_one_saying_so():
    assert tail([b"a\n", b"b\n"], 1) == "a\nb\n"
    cut = tail([b"0123456789"] * 300_000, 1)  # 3 MB, in chunks that are trimmed in batches
    assert cut.startswith("[... 1951424 bytes of earlier output dropped: a job's log keeps its last 1 MB "
                          "(jobs.max_log_mb) ...]\n")
    assert cut.endswith("0123456789") and len(cut.split("\n", 1)[1]) == MB


class FakeHubAuth(HubAuth):
    """JupyterHub's HubAuth, where the hub would answer that tokens are the users' names."""

    def user_for_token(self, token, use_cache=True, session_id="", *, sync=False):
        async def model():
            return {"kind": "user", "name": token, "scopes": ["access:services!service=jobs"]}
        return model()


class JobsAPI(AsyncHTTPTestCase):
    def get_app(self):
        folder = tempfile.TemporaryDirectory(prefix="jobs-api-")
        self.addCleanup(folder.cleanup)
        self.jobs, self.engine = make_jobs(folder.name, max_queued_per_user=2, max_schedules_per_user=1)
        return app(self.jobs, FakeHubAuth(api_token="unused", api_url="http://hub.invalid/hub/api"), ["datalab-cli"])

    def call(self, method, path, body=None, user="alice"):
        data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        r = self.fetch(f"/services/jobs/api/{path}", method=method, body=data,
                       headers={"Authorization": f"token {user}"})
        return r.code, r.body

    def submit(self, user="alice", **body):
        code, answer = self.call("POST", "jobs", {"notebook": NOTEBOOK, **body}, user)
        return code, json.loads(answer)

    def test_a_token_counts_only_in_the_authorization_header(self):
        assert self.fetch("/services/jobs/api/jobs").code == 403
        assert self.fetch("/services/jobs/api/jobs?token=alice").code == 403  # a URL ends up in logs
        for scheme in ("token", "Bearer"):
            assert self.fetch("/services/jobs/api/jobs", headers={"Authorization": f"{scheme} alice"}).code == 200

    def test_bad_submissions_are_4xx_naming_the_problem(self):
        cases = [
            ("[" * 100_000 + "]" * 100_000, 400, "the request body is not JSON, or is nested too deeply"),
            ("[]", 400, "the request body must be a JSON object"),
            ({"notebook": NOTEBOOK, "memory": "0"}, 400, "memory must be a size from 6M to 2G"),
            ({"notebook": NOTEBOOK, "memory": "900G"}, 400, "memory must be a size from 6M to 2G"),
            ({"notebook": NOTEBOOK, "cpu": 4}, 400, "cpu must be a number above 0 and at most 1"),
            ({"notebook": NOTEBOOK, "as": {"name": "bob"}}, 400, "as must be a string"),
        ]
        for body, status, message in cases:
            code, answer = self.call("POST", "jobs", body if isinstance(body, str) else json.dumps(body))
            assert (code, message in json.loads(answer)["error"]) == (status, True), (str(body)[:80], answer)
        assert not self.jobs.store.jobs()

    def test_queue_and_schedule_caps_answer_429_with_the_limit(self):
        assert [self.submit()[0] for _ in range(2)] == [201, 201]
        code, answer = self.submit()
        assert code == 429 and "(jobs.max_queued_per_user = 2)" in answer["error"]
        assert self.submit(user="bob")[0] == 201
        assert self.submit(schedule="0 2 * * *")[0] == 201
        code, answer = self.submit(schedule="0 3 * * *")
        assert code == 429 and "(jobs.max_schedules_per_user = 1)" in answer["error"]

    def test_a_link_in_a_jobs_folder_is_not_followed_when_serving(self):
        code, mine = self.submit()
        code, theirs = self.submit(user="bob")
        store = self.jobs.store
        store.write_job_file(theirs["job"]["id"], "output.ipynb", '{"cells": [], "secret": "bob\'s"}')
        store.write_job_file(theirs["job"]["id"], "log.txt", "bob's log")
        for name in ("output.ipynb", "log.txt"):
            (store.job_dir(mine["job"]["id"]) / name).symlink_to(store.job_dir(theirs["job"]["id"]) / name)
        code, body = self.call("GET", f"jobs/{mine['job']['id']}/output")
        assert code == 404 and b"bob's" not in body
        code, body = self.call("GET", f"jobs/{mine['job']['id']}/logs")
        assert code == 200 and b"bob's" not in body
        assert self.call("GET", f"jobs/{theirs['job']['id']}/output", user="bob")[0] == 200


def test_a_job_runs_only_once_its_network_rules_are_set(tmp_path):
    jobs, engine = make_jobs(tmp_path)
    job = submit(jobs, "alice")
    jobs.tick()
    container = container_of(jobs, engine, job)
    assert engine.isolated == [container.id]
    assert container.options["command"][0] == "datalab-await-network"  # papermill waits for them


def test_a_job_whose_network_rules_cannot_be_set_never_runs(tmp_path):
    jobs, engine = make_jobs(tmp_path)

    def cannot_isolate(container_id):
        raise RuntimeError("network rules not set (exit 4)")

    jobs.runner.isolate = cannot_isolate
    job = submit(jobs, "alice")
    jobs.tick()
    found = jobs.store.job(job)
    assert found["status"] == "failed" and "network rules not set" in found["error"]
    assert not engine.by_id  # its container is gone: closed by default


def test_a_job_whose_owner_left_the_profiles_group_is_stopped_and_does_not_start_again(tmp_path):
    jobs, engine = make_jobs(tmp_path)
    running = submit(jobs, "alice")
    jobs.tick()
    assert jobs.store.job(running)["status"] == "running"
    jobs.users.info = lambda name: {"name": name, "groups": ["aml-team"], "admin": False}  # left datascientists
    queued = submit(jobs, "alice")  # queued when her groups still allowed it
    jobs._rights_checked.clear()
    jobs.tick()
    stopped = jobs.store.job(running)
    assert stopped["status"] == "cancelled" and stopped["exit_reason"].startswith("stopped:")
    refused = jobs.store.job(queued)
    assert refused["status"] == "failed" and "None of your groups may start" in refused["error"], refused


def test_a_running_job_holding_a_team_volume_its_owner_left_is_stopped(tmp_path):
    jobs, engine = make_jobs(tmp_path)
    job = submit(jobs, "alice")
    jobs.tick()
    container = container_of(jobs, engine, job)
    container.mounts = [{"Type": "volume", "Name": "lab-team-fraud-team", "RW": True}]
    jobs._rights_checked.clear()
    jobs.tick()
    assert jobs.store.job(job)["status"] == "cancelled"
    assert "lab-team-fraud-team" in jobs.store.job(job)["exit_reason"]
