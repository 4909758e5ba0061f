"""The promotion gate's integrity, without an engine or MLflow: seals (digests
of a version's artifacts), the sandboxes' docker arguments and sequence (a
fake engine records them), the strict reading of what a sandbox answers, the
worker that runs inside them, and the controller's use of all of it (a fake
MLflow client). The real thing: tests/integration/test_registry_attacks.py."""

import json
import os
import subprocess
from types import SimpleNamespace

import pandas as pd
import pytest

from datalab import audit, settings as settings_mod
from datalab.docker import DockerError
from datalab_registry import controller as controller_mod, gate, gate_worker, sandbox, seals

MARK = gate_worker.MARKER
EVALUATION = {"threshold": 50.0, "transactions": 3, "frauds": 1,
              "candidate": {"average_precision": 0.9, "recall": 1.0, "false_positive_rate": 0.0, "block_rate": 0.3},
              "production": {"average_precision": 0.8, "recall": 1.0, "false_positive_rate": 0.5, "block_rate": 0.6},
              "score_psi": 0.1, "segments": {}}
SEGMENT = {"transactions": 600, "frauds": 12,
           "candidate": {"average_precision": 0.5, "recall": 0.5, "false_positive_rate": 0.01, "block_rate": 0.02},
           "production": {"average_precision": 0.7, "recall": 0.75, "false_positive_rate": 0.01, "block_rate": 0.02}}


def settings_in(tmp_path):
    s = settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path),
                                                                              "name": "lab1"}})
    (tmp_path / "deployments").mkdir(exist_ok=True)
    return s


# ---- seals ----

def test_a_seal_covers_every_files_place_and_content_and_refuses_links(tmp_path):
    model, run = tmp_path / "model", tmp_path / "run"
    (model / "data").mkdir(parents=True)
    (run / "evaluation").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}")
    (model / "data" / "weights.bin").write_bytes(b"\0" * 10)
    (run / "evaluation" / "evaluation.parquet").write_bytes(b"PAR1")
    sealed = seals.digest({"model": model, "run": run})
    assert sealed == seals.digest({"run": run, "model": model})
    (run / "evaluation" / "evaluation.parquet").write_bytes(b"PAR2")
    assert seals.digest({"model": model, "run": run}) != sealed
    (run / "evaluation" / "evaluation.parquet").write_bytes(b"PAR1")
    (run / "evaluation" / "evaluation.parquet").rename(run / "evaluation" / "other.parquet")
    assert seals.digest({"model": model, "run": run}) != sealed
    (run / "link").symlink_to("/etc/passwd")
    with pytest.raises(seals.Broken, match="is a link"):
        seals.digest({"model": model, "run": run})


def test_the_evaluation_set_is_a_file_among_the_sealed_run_artifacts(tmp_path):
    (tmp_path / "run" / "evaluation").mkdir(parents=True)
    (tmp_path / "run" / "evaluation" / "e.parquet").write_bytes(b"PAR1")
    fetched = seals.Fetched(tmp_path / "model", tmp_path / "run", "r1", "d")
    assert fetched.evaluation_set({seals.EVALUATION_TAG: "evaluation/e.parquet"}).name == "e.parquet"
    with pytest.raises(seals.Broken, match="no evaluation set"):
        fetched.evaluation_set({})
    with pytest.raises(seals.Broken, match="not a file among the run's artifacts"):
        fetched.evaluation_set({seals.EVALUATION_TAG: "../../etc/passwd"})


def test_a_version_whose_artifacts_changed_is_refused_by_name():
    version = SimpleNamespace(name="fraud", version="4", tags={seals.SEAL_TAG: "a" * 64})
    seals.verify(version, SimpleNamespace(digest="a" * 64))
    with pytest.raises(seals.Broken, match=r"the artifacts of fraud v4 are not those sealed at its registration"):
        seals.verify(version, SimpleNamespace(digest="b" * 64))


# ---- what a sandbox answers ----

def test_scores_are_read_strictly_from_the_last_line():
    assert gate.parse_scores(f"model noise\n{MARK}{json.dumps({'scores': [0, 12.5, 100]})}\n", "x") == [0, 12.5, 100]
    for bad in (f"{MARK}" + '{"scores": [NaN]}', f"{MARK}" + '{"scores": [1e999]}', f"{MARK}" + '{"scores": [101]}',
                f"{MARK}" + '{"scores": [true]}', f"{MARK}" + '{"scores": []}', f"{MARK}" + '{"scores": [1], "x": 1}',
                f"{MARK}" + '[1, 2]', "no marker at all",
                f"{MARK}" + '{"scores": [1]}\nforged afterwards by the model'):
        with pytest.raises(gate.Unreadable):
            gate.parse_scores(bad, "the candidate's scoring")


def test_the_judgement_is_read_in_its_exact_shape():
    assert gate.parse_evaluation(MARK + json.dumps(EVALUATION), 50.0, 3) == EVALUATION
    alone = {**EVALUATION, "production": None, "score_psi": None}
    assert gate.parse_evaluation(MARK + json.dumps(alone), 50.0, 3) == alone
    for bad in ({**EVALUATION, "extra": 1}, {**EVALUATION, "transactions": 4}, {**EVALUATION, "threshold": 10.0},
                {**EVALUATION, "frauds": 7}, {**EVALUATION, "frauds": 1.5}, {**EVALUATION, "score_psi": None},
                {**EVALUATION, "candidate": {**EVALUATION["candidate"], "recall": 1.2}},
                {**EVALUATION, "candidate": {**EVALUATION["candidate"], "bonus": 1.0}}):
        with pytest.raises(gate.Unreadable):
            gate.parse_evaluation(MARK + json.dumps(bad), 50.0, 3)


def test_segments_are_read_in_their_exact_shape():
    judged = {**EVALUATION, "transactions": 1000, "frauds": 20, "segments": {"night": SEGMENT}}
    assert gate.parse_evaluation(MARK + json.dumps(judged), 50.0, 1000)["segments"] == {"night": SEGMENT}
    alone = {**judged, "production": None, "score_psi": None, "segments": {"night": {**SEGMENT, "production": None}}}
    assert gate.parse_evaluation(MARK + json.dumps(alone), 50.0, 1000)["segments"]["night"]["production"] is None
    for bad in ({"night": {**SEGMENT, "transactions": 1001}}, {"night": {**SEGMENT, "frauds": 601}},
                {"night": {**SEGMENT, "production": None}}, {"night": {**SEGMENT, "extra": 1}},
                {"night": {**SEGMENT, "candidate": {**SEGMENT["candidate"], "recall": -1}}},
                {"\x1b[2Jnight": SEGMENT}, {f"s{i}": SEGMENT for i in range(gate.MAX_SEGMENTS + 1)}, ["night"]):
        with pytest.raises(gate.Unreadable):
            gate.parse_evaluation(MARK + json.dumps({**judged, "segments": bad}), 50.0, 1000)
    with pytest.raises(gate.Unreadable):  # production figures in a segment with no production to judge against
        gate.parse_evaluation(MARK + json.dumps({**alone, "segments": {"night": SEGMENT}}), 50.0, 1000)


def test_a_candidate_worse_on_a_segment_with_enough_data_is_refused_by_name(tmp_path):
    limits = settings_in(tmp_path)["gate"]
    equal = {"average_precision": 0.8, "recall": 0.7, "false_positive_rate": 0.001, "block_rate": 0.01}
    judged = {**EVALUATION, "candidate": equal, "production": equal, "score_psi": 0.0,
              "segments": {"night": SEGMENT, "weekend": {**SEGMENT, "frauds": limits["segment_min_frauds"] - 1},
                           "new customer": {**SEGMENT, "transactions": limits["segment_min_transactions"] - 1}}}
    reasons = gate.failures(judged, limits)
    assert reasons == [
        "segment 'night' (600 transactions, 12 frauds): average precision 0.500 vs 0.700 in production "
        "(drop 0.200 > 0.05)",
        "segment 'night' (600 transactions, 12 frauds): recall 0.500 vs 0.750 in production (drop 0.250 > 0.1)"]
    assert gate.failures({**judged, "segments": {"night": {**SEGMENT, "candidate": SEGMENT["production"]}}},
                         limits) == []


def test_production_labels_are_judged_on_when_there_are_enough_else_the_evaluation_set_and_why(tmp_path):
    limits = settings_in(tmp_path)["gate"]
    enough = {"labelled": limits["production_min_labelled"], "frauds": limits["production_min_frauds"],
              "features": ["TX_AMOUNT", "TX_DURING_NIGHT"], "path": "w.parquet"}
    assert gate.judged_on(enough, limits, ["TX_AMOUNT"]) == (
        gate.PRODUCTION, f"production's last 7 days: {enough['labelled']} labelled transactions, "
                         f"{enough['frauds']} frauds")
    source, why = gate.judged_on({**enough, "frauds": 3}, limits, ["TX_AMOUNT"])
    assert source == gate.EVALUATION_SET and "3 frauds (the gate needs" in why
    # enough of production's: a candidate taking what the window's features lack is refused, not judged on
    # its own team's data (nor given the labels, a field of the log but not a feature)
    for asked in (["TX_AMOUNT", "MERCHANT_RISK"], ["TX_AMOUNT", "TX_FRAUD"]):
        source, why = gate.judged_on(enough, limits, asked)
        assert source == gate.REFUSED and f"not the field(s) the candidate takes: {asked[1]}" in why
    assert gate.judged_on({**enough, "frauds": 3}, limits, ["TX_FRAUD"])[0] == gate.EVALUATION_SET
    assert gate.judged_on({"error": "the feature store could not be read"}, limits, []) == (
        gate.EVALUATION_SET, "the feature store could not be read")


# ---- the worker inside ----

def test_the_worker_judges_labels_and_scores_and_answers_what_the_controller_reads(tmp_path, monkeypatch, capsys):
    frame = pd.DataFrame({"TX_FRAUD": [0, 1, 0], "amount": [1.0, 300.0, 2.0]})
    monkeypatch.setattr(pd, "read_parquet", lambda path: frame)
    (tmp_path / "c.json").write_text(json.dumps({"scores": [10.0, 90.0, 60.0]}))
    (tmp_path / "p.json").write_text(json.dumps({"scores": [20.0, 70.0, 10.0]}))
    gate_worker.main(["judge", "e.parquet", str(tmp_path / "c.json"), "--production", str(tmp_path / "p.json"),
                      "--threshold", "50"])
    figures = gate.parse_evaluation(capsys.readouterr().out, 50.0, 3)
    assert figures["candidate"]["recall"] == 1.0 and figures["candidate"]["block_rate"] == pytest.approx(2 / 3)
    assert figures["production"]["false_positive_rate"] == 0.0 and figures["score_psi"] > 0
    assert figures["segments"] == {}  # no column a segment is defined on
    frame["TX_AMOUNT"], frame["TX_DURING_NIGHT"] = [10.0, 300.0, 60.0], [1, 1, 0]
    gate_worker.main(["judge", "e.parquet", str(tmp_path / "c.json"), "--production", str(tmp_path / "p.json"),
                      "--threshold", "50"])
    segments = gate.parse_evaluation(capsys.readouterr().out, 50.0, 3)["segments"]
    assert {name: (s["transactions"], s["frauds"]) for name, s in segments.items()} == {
        "amount < 50": (1, 0), "amount 50-150": (1, 0), "amount >= 150": (1, 1), "night": (2, 1)}
    assert segments["night"]["candidate"]["block_rate"] == 0.5 and segments["night"]["production"]["recall"] == 1.0
    (tmp_path / "c.json").write_text(json.dumps({"scores": [10.0]}))
    with pytest.raises(ValueError, match="1 candidate scores for 3 transactions"):
        gate_worker.judge("e.parquet", str(tmp_path / "c.json"), None, 50.0)


def test_the_worker_scores_with_the_scoring_runtimes_loader(monkeypatch, capsys):
    from datalab_scoring import model

    frame = pd.DataFrame({"TX_FRAUD": [0, 1], "amount": [1.0, 300.0]})
    monkeypatch.setattr(pd, "read_parquet", lambda path: frame)
    loaded = SimpleNamespace(fields=[("amount", "double")], predict=lambda rows: [r[0] / 1000 for r in rows])
    monkeypatch.setattr(model, "load", lambda path, name, version: loaded)
    gate_worker.main(["score", "/gate/model", "/gate/evaluation.parquet"])
    assert gate.parse_scores(capsys.readouterr().out, "x") == [0.1, 30.0]


# ---- the sandboxes ----

class FakeEngine:
    """Records docker commands; a sandbox answers by its command (score/judge) and image."""

    def __init__(self, answers, status="0", fail_on=None, slow=False):
        self.calls, self.answers, self.status, self.fail_on, self.slow = [], answers, status, fail_on, slow
        self.created = {}

    def run(self, *args, check=True, timeout=None, **kwargs):
        self.calls.append(args)
        if args[0] == self.fail_on:
            raise DockerError(f"docker {args[0]} failed: no such image")
        if args[0] == "create":
            self.created[args[args.index("--name") + 1]] = args
        if args[0] == "wait" and self.slow:
            raise subprocess.TimeoutExpired(args, timeout)
        stdout, stderr = "", ""
        if args[0] == "wait":
            stdout = self.status
        if args[0] == "logs":
            created = self.created[args[1]]
            stdout = self.answers[created[created.index("python3") + 1], created[created.index("python3") + 3]]
            stderr = "Traceback (most recent call last):\nValueError: the model's warm-up answered [7.0]\n"
        return subprocess.CompletedProcess(args, 0, stdout, stderr)

    def out(self, *args, **kwargs):
        return self.run(*args, **kwargs).stdout.strip()

    def creates(self):
        return [c for c in self.calls if c[0] == "create"]


SERVING = {"model": "fraud", "version": "3", "image": "datalab/scoring-model:fraud-v3-abc", "threshold": 50.0}
ANSWERS = {("datalab/scoring:new", "score"): "loading...\n" + MARK + json.dumps({"scores": [10.0, 90.0, 60.0]}),
           (SERVING["image"], "score"): MARK + json.dumps({"scores": [20.0, 70.0, 10.0]}),
           ("datalab/scoring:new", "judge"): MARK + json.dumps(EVALUATION)}


def evaluate(engine, tmp_path, serving=SERVING):
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}")
    (tmp_path / "evaluation.parquet").write_bytes(b"PAR1")
    return sandbox.evaluate(engine, settings_in(tmp_path), "datalab/scoring:new", tmp_path / "model",
                            tmp_path / "evaluation.parquet", serving, 50.0)


def test_each_model_runs_alone_with_no_network_no_credentials_and_limits(tmp_path):
    engine = FakeEngine(ANSWERS)
    assert evaluate(engine, tmp_path) == EVALUATION
    candidate, production, judge = engine.creates()
    for create in (candidate, production, judge):
        flags = list(create)
        assert flags[flags.index("--network") + 1] == "none" and "--read-only" in flags
        assert [flags[i + 1] for i, f in enumerate(flags) if f in ("--env", "-e")] == ["HOME=/tmp"]
        assert flags[flags.index("--cap-drop") + 1] == "ALL" and "no-new-privileges" in flags
        assert flags[flags.index("--memory") + 1] == "2G" and flags[flags.index("--memory-swap") + 1] == "2G"
        assert "--pids-limit" in flags and "--cpus" in flags and "max-file=1" in flags
        assert not any("docker.sock" in f or f.startswith("-v") for f in flags)
    assert candidate[candidate.index("python3") + 1:][:3] == ("datalab/scoring:new", "/gate/gate_worker.py", "score")
    # production scores in the image that serves it, from its baked /model
    assert production[production.index("python3") + 1:] == (
        SERVING["image"], "/gate/gate_worker.py", "score", "/model", "/gate/evaluation.parquet")
    assert judge[-4:] == ("--threshold", "50.0", "--production", "/gate/production.json")
    copied = {}
    for call in engine.calls:
        if call[0] == "cp":
            copied.setdefault(call[2].split(":")[0], []).append(call[2].split(":")[1])
    names = [c[c.index("--name") + 1] for c in engine.creates()]
    assert sorted(copied[names[0]]) == ["/gate/evaluation.parquet", "/gate/gate_worker.py", "/gate/model"]
    assert sorted(copied[names[1]]) == ["/gate/evaluation.parquet", "/gate/gate_worker.py"]  # nothing of the candidate
    assert sorted(copied[names[2]]) == ["/gate/candidate.json", "/gate/evaluation.parquet", "/gate/gate_worker.py",
                                        "/gate/production.json"]
    assert [c[-1] for c in engine.calls if c[0] == "rm"] == names
    assert all(n.startswith("lab1-gate-") and f"{sandbox.LABEL}=lab1" in c for n, c in zip(names, engine.creates()))


def test_a_first_promotion_is_judged_alone(tmp_path):
    engine = FakeEngine({**ANSWERS, ("datalab/scoring:new", "judge"): MARK + json.dumps(
        {**EVALUATION, "production": None, "score_psi": None})})
    assert evaluate(engine, tmp_path, serving=None)["production"] is None
    assert len(engine.creates()) == 2 and "--production" not in engine.creates()[1]


def test_a_sandbox_that_fails_runs_too_long_or_cannot_start_is_a_gate_error_and_is_removed(tmp_path):
    engine = FakeEngine(ANSWERS, status="1")
    with pytest.raises(sandbox.GateError, match=r"the candidate's scoring failed \(exit 1\): ValueError: the model's"):
        evaluate(engine, tmp_path)
    engine = FakeEngine(ANSWERS, slow=True)
    with pytest.raises(sandbox.GateError, match=f"took more than {sandbox.TIMEOUT_S} s"):
        evaluate(engine, tmp_path)
    assert engine.calls[-1][0] == "rm"
    with pytest.raises(sandbox.GateError, match="could not run: docker create failed: no such image"):
        evaluate(FakeEngine(ANSWERS, fail_on="create"), tmp_path)


WINDOW_FACTS = {"since": "2026-11-15T00:00:00+00:00", "until": "2026-11-22T00:00:00+00:00", "scored": 9000,
                "labelled": 2500, "frauds": 30, "features": ["TX_AMOUNT", "TX_DURING_NIGHT"]}
WINDOW_ANSWERS = {("datalab/scoring:new", "datalab_scoring.store_tool"): "connecting\n" + json.dumps(WINDOW_FACTS)}


def test_productions_window_is_exported_by_the_store_tool_next_to_the_store_with_the_password_copied_in(
        tmp_path, monkeypatch):
    (tmp_path / "password").write_text("s3cret")
    monkeypatch.setattr(sandbox, "STORE_PASSWORD", tmp_path / "password")
    engine = FakeEngine(WINDOW_ANSWERS)
    found = sandbox.production_window(engine, settings_in(tmp_path), "datalab/scoring:new", tmp_path)
    assert found == {**WINDOW_FACTS, "path": tmp_path / "production-window.parquet",
                     "features_path": tmp_path / "production-features.parquet"}
    (create,) = engine.creates()
    flags = list(create)
    assert flags[flags.index("--network") + 1] == "lab1_features" and "--read-only" in flags
    assert flags[flags.index("--cap-drop") + 1] == "ALL" and "no-new-privileges" in flags
    assert not any(f in ("--env", "-e", "-v", "--volume") for f in flags)  # the password is no environment
    assert flags[flags.index("--entrypoint") + 1:][:4] == ["python3", "datalab/scoring:new", "-m",
                                                           "datalab_scoring.store_tool"]
    assert flags[flags.index("--days") + 1] == "7" and flags[flags.index("--limit") + 1] == "200000"
    # the password goes in as a file of ours in a folder of ours, read by our uid (docker cp keeps owners)
    assert flags[flags.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert flags[flags.index("--password-file") + 1] == "/gate/window-inbox/password"
    name = flags[flags.index("--name") + 1]
    assert ("cp", str(tmp_path / "window-inbox"), f"{name}:/gate/window-inbox") in engine.calls
    assert ("cp", f"{name}:/gate/window-inbox/window.parquet", str(tmp_path / "production-window.parquet")) \
        in engine.calls
    assert ("cp", f"{name}:/gate/window-inbox/features.parquet", str(tmp_path / "production-features.parquet")) \
        in engine.calls
    assert engine.calls[-1][:3] == ("rm", "--force", "--volumes")
    assert not (tmp_path / "window-inbox" / "password").exists()  # no copy of it left here
    (tmp_path / "failing").mkdir()
    failed = sandbox.production_window(FakeEngine(WINDOW_ANSWERS, status="1"), settings_in(tmp_path),
                                       "datalab/scoring:new", tmp_path / "failing")
    assert failed["error"].startswith("the feature store could not be read (exit 1)")
    monkeypatch.setattr(sandbox, "STORE_PASSWORD", tmp_path / "none")
    assert "no feature store password" in sandbox.production_window(engine, settings_in(tmp_path), "x", tmp_path)["error"]


# ---- the controller ----

class FakeMlflow:
    def __init__(self, versions=(), aliases=None, webhooks=()):
        self.versions = {(v.name, str(v.version)): v for v in versions}
        self.aliases = aliases or {}
        self.hooks = list(webhooks)
        self.calls = []

    def get_model_version(self, name, version):
        return self.versions[name, str(version)]

    def search_model_versions(self, filter_string=None, max_results=None, page_token=None):
        found = [v for v in self.versions.values() if not filter_string or filter_string == f"name='{v.name}'"]
        return _Page(found)

    def get_registered_model(self, name):
        return SimpleNamespace(aliases=dict(self.aliases.get(name, {})))

    def search_registered_models(self, max_results=None):
        return [SimpleNamespace(name=name, aliases=dict(aliases)) for name, aliases in self.aliases.items()]

    def delete_model_version_tag(self, name, version, key):
        self.calls.append(("untag", name, str(version), key))
        self.versions[name, str(version)].tags.pop(key, None)

    def get_run(self, run_id):
        return SimpleNamespace(data=SimpleNamespace(tags={seals.EVALUATION_TAG: "evaluation/e.parquet"}))

    def set_model_version_tag(self, name, version, key, value):
        self.calls.append(("tag", name, str(version), key, value))
        self.versions[name, str(version)].tags[key] = value

    def set_registered_model_alias(self, name, alias, version):
        self.calls.append(("alias", name, alias, version))
        self.aliases.setdefault(name, {})[alias] = version

    def delete_registered_model_alias(self, name, alias):
        self.calls.append(("unalias", name, alias))
        self.aliases.get(name, {}).pop(alias, None)

    def list_webhooks(self):
        return list(self.hooks)

    def create_webhook(self, **spec):
        self.calls.append(("create_webhook", spec["url"]))
        self.hooks.append(SimpleNamespace(webhook_id="w1", status="ACTIVE", **spec))

    def update_webhook(self, webhook_id, **spec):
        self.calls.append(("update_webhook", webhook_id))

    def delete_webhook(self, webhook_id):
        self.calls.append(("delete_webhook", webhook_id))
        self.hooks = [h for h in self.hooks if h.webhook_id != webhook_id]


class _Page(list):
    token = None


def version(number, tags=None, status="READY"):
    return SimpleNamespace(name="fraud", version=str(number), run_id=f"r{number}", tags=dict(tags or {}),
                           status=status, aliases=[])


def test_the_controller_seals_each_ready_version_once_and_a_candidate_at_first_sight(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(seals, "fetch",
                        lambda v, work: fetched.append(v.version) or SimpleNamespace(digest="d" + v.version))
    client = FakeMlflow([version(1, {seals.SEAL_TAG: "d1"}), version(2), version(3, status="PENDING_REGISTRATION")])
    ctl = controller_mod.Controller(settings_in(tmp_path), client, docker=None)
    ctl.seal_new_versions()
    ctl.seal_new_versions()
    assert fetched == ["2"] and client.versions["fraud", "2"].tags[seals.SEAL_TAG] == "d2"
    assert ctl.verified("fraud", "3", tmp_path).digest == "d3"  # first sight: sealed now
    assert client.versions["fraud", "3"].tags[seals.SEAL_TAG] == "d3"
    client.versions["fraud", "2"].tags[seals.SEAL_TAG] = "changed since"
    with pytest.raises(seals.Broken, match="fraud v2 are not those sealed"):
        ctl.verified("fraud", "2", tmp_path)


def test_a_candidate_whose_artifacts_changed_is_rejected_before_any_of_its_code_runs(tmp_path, monkeypatch):
    s = settings_in(tmp_path)
    client = FakeMlflow([version(1, {seals.SEAL_TAG: "d1"}), version(2, {seals.SEAL_TAG: "sealed"})],
                        aliases={"fraud": {"production": "2"}})
    monkeypatch.setattr(controller_mod.images, "current_ref", lambda docker, name: "datalab/scoring:new")
    monkeypatch.setattr(seals, "fetch", lambda v, work: seals.Fetched(tmp_path, tmp_path, v.run_id, "overwritten"))
    monkeypatch.setattr(sandbox, "evaluate", lambda *a: pytest.fail("a sandbox ran on unsealed artifacts"))
    ctl = controller_mod.Controller(s, client, docker=None)
    state = {"accepted": {"fraud": "1"}, "in_progress": None}
    ctl.promote(state, {"model": "fraud", "version": "2", "step": "gate"})
    record = audit.records(s)[-1]
    assert record["outcome"] == "rejected" and "fraud v2 are not those sealed" in record["reasons"][0]
    assert client.aliases["fraud"]["production"] == "1"


def test_a_restarted_controller_follows_the_rollout_it_had_issued_without_gating_or_issuing_it_again(
        tmp_path, monkeypatch):
    """The controller died after issuing a rollout: its successor finds the attempt in
    promotions.json, runs no gate, updates no service, and records the outcome once."""
    s = settings_in(tmp_path)
    client = FakeMlflow([version(1, {seals.SEAL_TAG: "d1"}), version(2, {seals.SEAL_TAG: "d2"})],
                        aliases={"fraud": {"production": "2"}})
    target = {"model": "fraud", "version": "2", "run_id": "r2", "image": "datalab/scoring-model:fraud-v2-b",
              "replicas": 2, "threshold": 50.0}
    in_progress = {"model": "fraud", "version": "2", "step": "rolling out", "issued": True, "started_at": "t",
                   "t0": 0, "from": "fraud v1", "by": "alice", "serving": None, "rollout_t0": 0, "target": target,
                   "gate": {"candidate": {"average_precision": 0.7}, "transactions": 5000}}
    (tmp_path / "deployments" / "promotions.json").write_text(json.dumps(
        {"accepted": {"fraud": "1"}, "in_progress": in_progress}))
    monkeypatch.setattr(sandbox, "evaluate", lambda *a, **k: pytest.fail("a restart ran the gate again"))
    monkeypatch.setattr(controller_mod.deploy, "start_rollout", lambda *a: pytest.fail("a restart issued it again"))
    followed = []
    monkeypatch.setattr(controller_mod.deploy, "rollout",
                        lambda docker, settings, t, started=False: followed.append((t["image"], started))
                        or ("completed", ""))
    ctl = controller_mod.Controller(s, client, docker=None)
    ctl.reconcile()
    ctl.reconcile()  # the next poll: nothing left to do
    assert followed == [(target["image"], True)]
    assert [(r["version"], r["outcome"]) for r in audit.records(s)] == [("2", "deployed")]
    state = json.loads((tmp_path / "deployments" / "promotions.json").read_text())
    assert state == {"accepted": {"fraud": "2"}, "in_progress": None}
    assert client.versions["fraud", "2"].tags["datalab.deployed_by"] == "alice"


def test_the_alias_is_removed_when_the_version_accepted_before_is_gone(tmp_path):
    client = FakeMlflow([version(2, {seals.SEAL_TAG: "d2"})], aliases={"fraud": {"production": "2"}})
    ctl = controller_mod.Controller(settings_in(tmp_path), client, docker=None)
    record = {"model": "fraud", "version": "2", "started_at": "t", "t0": 0, "from": "fraud v1", "by": "alice"}
    ctl.undo({"accepted": {"fraud": "1"}, "in_progress": None}, record, "rejected", ["worse"])
    assert ("unalias", "fraud", "production") in client.calls and "production" not in client.aliases["fraud"]


def test_webhooks_are_the_platforms_and_every_change_is_audited(tmp_path):
    s = settings_in(tmp_path)
    foreign = SimpleNamespace(webhook_id="w0", name="exfiltrate", url="http://attacker.example/", events=[],
                              status="ACTIVE", description="")
    client = FakeMlflow(webhooks=[foreign])
    controller_mod.ensure_webhook(client, s, "http://controller:8080/webhook", "s3cret")
    assert client.calls == [("delete_webhook", "w0"), ("create_webhook", "http://controller:8080/webhook")]
    controller_mod.ensure_webhook(client, s, "http://controller:8080/webhook", "s3cret")  # as it is: nothing
    controller_mod.ensure_webhook(client, s, "http://controller:8080/webhook", "rotated")
    assert client.calls[-1] == ("update_webhook", "w1")
    records = audit.records(s)
    assert [(r["kind"], r["outcome"]) for r in records] == [
        ("platform", "webhook removed"), ("platform", "webhook registered"), ("platform", "webhook updated")]
    assert all(r["model"] == "" and r["version"] == "" for r in records)  # never taken for a promotion


def test_the_controller_judges_on_productions_window_and_says_so_else_on_the_evaluation_set(tmp_path, monkeypatch):
    s = settings_in(tmp_path)
    ctl = controller_mod.Controller(s, FakeMlflow(), docker=None)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text(
        "signature:\n  inputs: '[{\"type\": \"double\", \"name\": \"TX_AMOUNT\"}]'\n")
    (tmp_path / "run" / "evaluation").mkdir(parents=True)
    (tmp_path / "run" / "evaluation" / "e.parquet").write_bytes(b"PAR1")
    candidate = seals.Fetched(tmp_path / "model", tmp_path / "run", "r1", "d")
    assert candidate.input_fields() == ["TX_AMOUNT"]
    with open(tmp_path / "model" / "MLmodel", "a") as grown:  # a hostile team's MLmodel, too big to read
        grown.write("#" * seals.LARGEST_MLMODEL)
    assert candidate.input_fields() == []
    (tmp_path / "model" / "MLmodel").write_text(
        "signature:\n  inputs: '[{\"type\": \"double\", \"name\": \"TX_AMOUNT\"}]'\n")
    window = {**WINDOW_FACTS, "path": tmp_path / "production-window.parquet",
              "features_path": tmp_path / "production-features.parquet"}
    monkeypatch.setattr(sandbox, "production_window", lambda *a: window)
    path, scored, judged = ctl.judged_on(candidate, "datalab/scoring:new", tmp_path)
    assert (path, scored) == (window["path"], window["features_path"])  # the models see the features alone
    assert judged["source"] == "production" and judged["labelled"] == 2500
    monkeypatch.setattr(sandbox, "production_window", lambda *a: {**window, "labelled": 12})
    path, scored, judged = ctl.judged_on(candidate, "datalab/scoring:new", tmp_path)
    assert path.name == "e.parquet" and scored is None
    assert judged["source"] == "evaluation set" and "12 labelled" in judged["why"]
    monkeypatch.setattr(sandbox, "production_window", lambda *a: {**window, "features": ["TX_DURING_NIGHT"]})
    with pytest.raises(sandbox.GateError, match="not the field.s. the candidate takes: TX_AMOUNT"):
        ctl.judged_on(candidate, "datalab/scoring:new", tmp_path)


def test_on_productions_window_the_models_are_given_its_features_and_only_the_judge_its_labels(tmp_path):
    engine = FakeEngine(ANSWERS)
    (tmp_path / "model").mkdir()
    (tmp_path / "window.parquet").write_bytes(b"PAR1 labels")
    (tmp_path / "features.parquet").write_bytes(b"PAR1 features")
    sandbox.evaluate(engine, settings_in(tmp_path), "datalab/scoring:new", tmp_path / "model",
                     tmp_path / "window.parquet", SERVING, 50.0, scored_set=tmp_path / "features.parquet")
    names = [c[c.index("--name") + 1] for c in engine.creates()]
    given = {name: {c[1] for c in engine.calls if c[0] == "cp" and c[2] == f"{name}:/gate/evaluation.parquet"}
             for name in names}
    candidate, production, judge = names
    assert given[candidate] == given[production] == {str(tmp_path / "features.parquet")}
    assert given[judge] == {str(tmp_path / "window.parquet")}


def test_the_audit_shows_what_a_promotion_was_judged_on_and_its_segments():
    from datalab import cli_models

    record = {"at": "t", "model": "fraud", "version": "2", "from": "fraud v1", "by": "alice", "outcome": "rejected",
              "reasons": ["segment 'night' ..."], "rollout_s": None,
              "gate": {**EVALUATION, "segments": {"night": SEGMENT},
                       "judged_on": {"source": "production", "why": "production's last 7 days: 2500 labelled"}}}
    shown = cli_models.audit_line(record).splitlines()
    assert shown[1].strip() == "judged on production: production's last 7 days: 2500 labelled"
    assert shown[2].split() == ["segment", "transactions", "frauds", "AP", "recall", "block", "rate"]
    assert shown[3].split() == ["night", "600", "12", "0.500", "/", "0.700", "0.500", "/", "0.750",
                                "0.020", "/", "0.020"]
