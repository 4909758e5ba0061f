"""Rollouts (datalab/deploy.py) against a scripted engine: what is saved as
serving, when, and what a failure says. The real rollouts: tests/integration
(test_scoring.py, test_registry.py)."""

import contextlib
import shutil
import time

import pytest

from datalab import deploy, settings as settings_mod
from datalab.docker import Docker, DockerError

OLD = "datalab/scoring-model:fraud-v1-aaaaaaaaaaaa"
NEW = "datalab/scoring-model:fraud-v2-bbbbbbbbbbbb"
TARGET = {"model": "fraud", "version": "2", "run_id": "r2", "image": NEW, "replicas": 2, "threshold": 50}


class Engine:
    """The scoring service as `docker service inspect` and `docker service ps` show it,
    moving on one step at each look."""

    current = None  # the engine docker.engine_api() answers with, in these tests

    def __init__(self, script):
        Engine.current = self
        self.script = list(script)  # (spec image, update state, [(task image, task state), ...]) per look
        self.now = self.script[0]
        self.updates = []
        self.env = ["DATALAB_LOG_LEVEL=INFO", "SCORING_THRESHOLD=50"]  # as `datalab up` renders it

    def inspect(self, kind, name):
        self.now = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        spec_image, state, _ = self.now
        return [{"ID": "svc1", "Version": {"Index": 7},
                 "Spec": {"Name": "dltest_scoring", "Labels": {"com.docker.stack.namespace": "dltest"},
                          "TaskTemplate": {"ContainerSpec": {"Image": spec_image, "Env": list(self.env)}}},
                 "UpdateStatus": {"State": state} if state else None}]

    def update_service(self, service, version, task_template=None, labels=None, mode=None, **kwargs):
        """The engine API's update (docker.engine_api): the spec as the engine stores it."""
        assert (service, version, kwargs) == ("svc1", 7, {"fetch_current_spec": True})
        self.updates.append({"image": task_template["ContainerSpec"]["Image"], "labels": labels, "mode": mode})
        self.env = task_template["ContainerSpec"]["Env"]

    def tasks(self, service, running=False):
        return [{"Spec": {"ContainerSpec": {"Image": f"{image}@sha256:0f0f"}}, "Status": {"State": state, "Err": ""}}
                for image, state in self.now[2]]

    def run(self, *args, check=True, **kwargs):
        self.updates.append(args)


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setattr(deploy.time, "sleep", lambda seconds: None)
    for module in (deploy, deploy.image_registry):  # each calls the engine API it imported
        monkeypatch.setattr(module, "engine_api", lambda: Engine.current)
    settings = settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path)}})
    deploy.deployments_dir(settings).mkdir(parents=True)
    deploy.save(settings, {**TARGET, "version": "1", "image": OLD})
    return settings


def test_a_rollout_is_saved_as_serving_once_every_replica_runs_the_new_image(lab):
    engine = Engine([(NEW, "updating", [(OLD, "running"), (NEW, "running")]),
                     (NEW, "completed", [(NEW, "running"), (NEW, "running")])])
    assert deploy.rollout(engine, lab, TARGET, timeout=30) == ("completed", "")
    assert deploy.current(lab)["image"] == NEW
    assert engine.updates == [{"image": NEW, "mode": {"Replicated": {"Replicas": 2}},
                               "labels": {"com.docker.stack.namespace": "dltest", "org.datalab.model": "fraud@2",
                                          "com.docker.stack.image": NEW}}]


def test_a_rollout_keeps_the_environment_sorted_as_datalab_up_renders_it(lab):
    # `docker service update --env-add` wrote it back in random order: the next `datalab up`
    # then saw a changed service (and restarted its tasks) for the order alone
    engine = Engine([(NEW, "completed", [(NEW, "running"), (NEW, "running")])])
    engine.env = ["DATALAB_LOG_LEVEL=INFO", "SCORING_FEATURE_STORE_URL=redis://featurestore:6379/0",
                  "SCORING_THRESHOLD=50"]
    deploy.start_rollout(engine, lab, {**TARGET, "threshold": 70})
    assert engine.env == ["DATALAB_LOG_LEVEL=INFO", "SCORING_FEATURE_STORE_URL=redis://featurestore:6379/0",
                          "SCORING_THRESHOLD=70"]
    deploy.start_rollout(engine, lab, {**TARGET, "threshold": 5})
    assert engine.env == sorted(engine.env) and engine.env[-1] == "SCORING_THRESHOLD=5"


def test_a_rollback_by_swarm_keeps_the_previous_version_on_record(lab):
    engine = Engine([(NEW, "updating", [(OLD, "running")]),
                     (OLD, "rollback_completed", [(OLD, "running"), (NEW, "failed")])])
    outcome, why = deploy.rollout(engine, lab, TARGET, timeout=30)
    assert (outcome, why) == ("rolled back", f"{NEW} failed: ")
    assert deploy.current(lab)["image"] == OLD


def test_a_rollout_that_times_out_says_which_images_serve(lab, monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(deploy.time, "monotonic", lambda: next(clock))
    engine = Engine([(NEW, "updating", [(OLD, "running"), (NEW, "starting")])])
    with pytest.raises(DockerError) as failure:
        deploy.rollout(engine, lab, TARGET, timeout=30)
    assert str(failure.value) == (f"rollout of fraud v2 not finished after 30s; serving now: {OLD} × 1 "
                                  "(Swarm goes on with the update: datalab scoring status)")
    assert deploy.current(lab)["image"] == OLD


def test_a_replicas_start_up_time_is_its_own_metric_not_a_log_line(lab):
    class Replicas:
        def local_containers(self, service):
            return ["c1"] if service == f"{lab.lab}_scoring" else []

        def out(self, *args, check=True):
            return {"inspect": "/dltest_scoring.1.abc", "stats": "812.4MiB / 2GiB"}[args[0]]

        def read_bounded(self, *args, limit, timeout):
            assert args[:2] == ("exec", "c1") and "http://127.0.0.1:8080/metrics" in args
            assert limit <= 1 << 20 and timeout <= 10
            return self.page

    replicas = Replicas()
    replicas.page = "# HELP scoring_model_load_seconds ...\nscoring_model_load_seconds 7.84\nscoring_model_info 1.0\n"
    assert deploy.replica_figures(replicas, lab) == [{"task": "1", "memory_mb": 812.4, "startup_s": 7.8}]
    # the replica runs the team's model code: whatever it answers, the status is shown without it
    for hostile in ("scoring_model_load_seconds nan\n", "scoring_model_load_seconds -1\n",
                    "scoring_model_load_seconds lots\n", "scoring_model_load_seconds \n", "\x00" * 100):
        replicas.page = hostile
        assert deploy.replica_figures(replicas, lab) == [{"task": "1", "memory_mb": 812.4, "startup_s": None}]


def test_a_bounded_read_stops_at_its_limit_and_at_its_time(tmp_path):
    endless = Docker.__new__(Docker)
    endless.cli = "yes"  # `yes exec ...`: an answer that never ends
    assert len(endless.read_bounded("exec", "c1", limit=1000, timeout=5)) == 1000
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    endless.cli = str(silent)
    started = time.monotonic()
    assert endless.read_bounded("exec", "c1", limit=1000, timeout=0.5) == ""
    assert time.monotonic() - started < 5


def test_a_version_is_baked_again_only_if_the_registry_holds_the_very_model_that_served(lab, tmp_path, monkeypatch):
    """A registered model deleted and registered again restarts at version 1: the name and
    number on record would then fetch a model no gate judged."""
    served = tmp_path / "served" / "model"
    (served / "artifacts").mkdir(parents=True)
    (served / "MLmodel").write_text("flavors: {}\n")
    (served / "artifacts" / "weights.bin").write_bytes(b"\x01\x02")
    record = {**TARGET, "version": "1", "image": OLD, "model_digest": deploy.model_digest(served)}
    in_registry = tmp_path / "registry"

    @contextlib.contextmanager
    def fetched(docker, settings, scoring_ref, name, ref):
        yield {"name": name, "version": ref, "run_id": "r1"}, in_registry

    monkeypatch.setattr(deploy, "fetched", fetched)
    monkeypatch.setattr(deploy, "bake", lambda docker, settings, ref, answer, work: {"baked": answer["version"]})
    shutil.copytree(served, in_registry / "model")
    assert deploy.rebake(None, lab, "datalab/scoring:x", record) == {"baked": "1"}
    (in_registry / "model" / "artifacts" / "weights.bin").write_bytes(b"\x01\x03")  # another model, same number
    with pytest.raises(deploy.DeployError, match="not the model that served"):
        deploy.rebake(None, lab, "datalab/scoring:x", record)
    with pytest.raises(deploy.DeployError, match="no model digest on record"):
        deploy.rebake(None, lab, "datalab/scoring:x", {**record, "model_digest": ""})


def test_a_models_links_are_digested_as_links_never_read_through(tmp_path):
    """The model's files are the team's; the digest runs as the host's root."""
    secret = tmp_path / "host-secret"
    secret.write_text("one")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights").symlink_to(secret)
    before = deploy.model_digest(model)
    secret.write_text("two")
    assert deploy.model_digest(model) == before
    (model / "weights").unlink()
    (model / "weights").write_text("one")  # a file with the link target's content is another model
    assert deploy.model_digest(model) != before


def test_a_task_runs_its_tag_whatever_digest_swarm_pinned_and_a_registry_reference_whole():
    def task(image):
        return {"Spec": {"ContainerSpec": {"Image": image}}}

    assert deploy.task_image(task("datalab/scoring-model:fraud-v1-abc@sha256:" + "0" * 64)) == \
        "datalab/scoring-model:fraud-v1-abc"
    by_digest = "10.0.0.11:5000/datalab/scoring-model@sha256:" + "1" * 64
    assert deploy.task_image(task(by_digest)) == by_digest
    assert deploy.task_image(task("127.0.0.1:5000/datalab/scoring:abc")) == "127.0.0.1:5000/datalab/scoring:abc"


def test_a_rollout_to_the_image_registry_carries_its_account_for_the_nodes_that_pull(lab):
    from datalab import credentials, image_registry

    credentials.ensure(lab)
    published = f"{image_registry.address(lab)}/datalab/scoring-model@sha256:" + "2" * 64
    engine = Engine([(published, "completed", [])])
    logins = []
    engine.login = lambda username, password, registry, reauth: logins.append((username, registry))
    deploy.start_rollout(engine, lab, {**TARGET, "image": published})
    # the update goes through the client logged in (docker-py sends its X-Registry-Auth with it)
    assert logins == [("datalab", image_registry.address(lab))] and engine.updates[-1]["image"] == published
    logins.clear()
    deploy.start_rollout(engine, lab, TARGET)  # a local image: no registry asked
    assert logins == []
