"""The gate's sandboxes: one-shot containers in which a model's own code runs
with nothing to reach. No network at all (`--network none`: MLflow, the
controller, the Docker socket and the internet are out of reach), no
credentials (no environment but HOME), a read-only root, every capability
dropped, limits on CPU, memory, processes and time, and an output capped by
Docker's log rotation. Inputs are files copied in; the answer is one line of
stdout, read strictly (gate.parse_*).

Three sandboxes per promotion, so that no model's code touches another's
figures: the candidate scores the evaluation set in the scoring image; the
version in production scores it in its own baked image (the bits that serve,
whatever became of its registry entry); then DataLab's code alone
(gate_worker.py judge, datalab_scoring.evaluate) turns labels and scores into
the gate's figures.

The labelled transactions, when production's own: exported before any
model's code runs by the scoring image's store tool (DataLab's code) in a
one-shot container on the feature store's network, handed the store's
password as a copied file (production_window).
"""

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from datalab.docker import DockerError
from datalab.endpoints import NOTEBOOK_UID

from . import gate

WORKER = Path(__file__).with_name("gate_worker.py")
INBOX = "/gate"
TIMEOUT_S = 600
CPUS = "1"
PIDS = 256  # threads count: TensorFlow's pools fit
SCRATCH = "512m"  # /tmp, a tmpfs (inside the memory limit)
OUTPUT = "32m"  # stdout and stderr together, as Docker keeps them
LABEL = "org.datalab.gate"  # = the lab's name
STORE_PASSWORD = Path("/run/secrets/featurestore_password")  # the controller's secret


class GateError(RuntimeError):
    """A sandbox failed, ran out of time, or answered nothing readable: the candidate is rejected."""


def evaluate(docker, settings, scoring_ref, model_dir, evaluation_set, serving, threshold, scored_set=None):
    """The gate's figures for the candidate (model_dir) on evaluation_set, with
    the version serving (deploy.current()'s record, or None) scored in its image.
    `scored_set`: what the models are given to score, when not the whole of
    evaluation_set (production's window: its features, not its labels)."""
    # the gate loads what a replica loads
    limits = {"lab": settings.lab, "memory": settings["resources"]["scoring"]["memory"]}
    evaluation = {"evaluation.parquet": evaluation_set}
    to_score = {"evaluation.parquet": scored_set or evaluation_set}
    with tempfile.TemporaryDirectory(prefix="datalab-gate-scores-") as scratch:
        what = "the candidate's scoring"
        candidate = gate.parse_scores(run(docker, scoring_ref, {**to_score, "model": model_dir},
                                          ["score", f"{INBOX}/model", f"{INBOX}/evaluation.parquet"], what,
                                          **limits), what)
        scores = {**evaluation, "candidate.json": _written(scratch, "candidate.json", candidate)}
        judge = ["judge", f"{INBOX}/evaluation.parquet", f"{INBOX}/candidate.json", "--threshold", str(threshold)]
        if serving:
            what = f"the production version's scoring (image {serving['image']})"
            production = gate.parse_scores(run(docker, serving["image"], to_score,
                                               ["score", "/model", f"{INBOX}/evaluation.parquet"], what, **limits),
                                           what)
            scores["production.json"] = _written(scratch, "production.json", production)
            judge += ["--production", f"{INBOX}/production.json"]
        return gate.parse_evaluation(run(docker, scoring_ref, scores, judge, "the judgement", **limits),
                                     threshold, len(candidate))


def production_window(docker, settings, scoring_ref, folder):
    """Production's labelled transactions of the last [gate] production_window_days
    (datalab_scoring.store_tool window): the export's facts with "path", the parquet
    file written in `folder` (for the judge), and "features_path", their features
    alone (for the models); or {"error": why} when the store could not be read."""
    lab = settings.lab
    name = f"{lab}-window-{uuid.uuid4().hex[:12]}"
    if not STORE_PASSWORD.is_file():
        return {"error": "the controller holds no feature store password"}
    # `docker cp` keeps owners: a folder of ours (0700), the password in it (0400), read and
    # written in the container by our uid, with no capability at all
    inbox = Path(folder, "window-inbox")
    inbox.mkdir(mode=0o700)
    shutil.copyfile(STORE_PASSWORD, inbox / "password")
    (inbox / "password").chmod(0o400)
    inside = f"{INBOX}/{inbox.name}"
    try:
        docker.run("create", "--name", name, "--network", f"{lab}_features", "--read-only", "--tmpfs", "/tmp",
                   "--mount", f"type=volume,dst={INBOX}", "--user", f"{os.getuid()}:{os.getgid()}",
                   "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                   "--pids-limit", str(PIDS), "--cpus", CPUS, "--memory", settings["resources"]["scoring"]["memory"],
                   "--label", f"{LABEL}={lab}", "--entrypoint", "python3", scoring_ref,
                   "-m", "datalab_scoring.store_tool", "--password-file", f"{inside}/password", "window",
                   "--days", f"{settings['gate']['production_window_days']:g}",
                   "--limit", str(settings["gate"]["production_max_transactions"]),
                   "--out", f"{inside}/window.parquet", "--features-out", f"{inside}/features.parquet")
        docker.run("cp", str(inbox), f"{name}:{inside}")
        (inbox / "password").unlink()
        docker.run("start", name)
        status = docker.out("wait", name, timeout=TIMEOUT_S)
        logs = docker.run("logs", name, check=False, timeout=120)
        if status != "0":
            last = next((line for line in reversed(logs.stderr.splitlines()) if line.strip()), "no message")
            return {"error": f"the feature store could not be read (exit {status}): {_printable(last)[:300]}"}
        facts = json.loads(logs.stdout.strip().splitlines()[-1])
        path, features = Path(folder, "production-window.parquet"), Path(folder, "production-features.parquet")
        docker.run("cp", f"{name}:{inside}/window.parquet", str(path), timeout=600)
        docker.run("cp", f"{name}:{inside}/features.parquet", str(features), timeout=600)
        return {**facts, "path": path, "features_path": features}
    except subprocess.TimeoutExpired:
        return {"error": f"reading the feature store took more than {TIMEOUT_S} s"}
    except (DockerError, ValueError, IndexError) as e:
        return {"error": f"the feature store could not be read: {_printable(str(e))[:300]}"}
    finally:
        docker.run("rm", "--force", "--volumes", name, check=False)
        (inbox / "password").unlink(missing_ok=True)


def remove_leftovers(docker, lab):
    """Sandboxes of this lab that a killed controller left behind."""
    left = docker.out("ps", "--all", "--quiet", "--filter", f"label={LABEL}={lab}").split()
    if left:
        docker.run("rm", "--force", "--volumes", *left, check=False)


def _written(folder, name, scores):
    path = Path(folder, name)
    path.write_text(json.dumps({"scores": scores}))
    return path


def sandbox_args(name, image, argv, lab, memory):
    """`docker create` arguments of a sandbox."""
    return ["create", "--name", name, "--network", "none", "--read-only",
            "--tmpfs", f"/tmp:rw,noexec,nosuid,size={SCRATCH}",
            # the inbox: a volume, so that `docker cp` fills it though the root is read-only;
            # its files are root's, read-only to the sandbox's user
            "--mount", f"type=volume,dst={INBOX}", "--user", f"{NOTEBOOK_UID}:{NOTEBOOK_UID}", "--env", "HOME=/tmp",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", str(PIDS),
            "--cpus", CPUS, "--memory", memory, "--memory-swap", memory,
            "--log-driver", "json-file", "--log-opt", f"max-size={OUTPUT}", "--log-opt", "max-file=1",
            "--label", f"{LABEL}={lab}",
            "--entrypoint", "python3", image, f"{INBOX}/{WORKER.name}", *argv]


def run(docker, image, inputs, argv, what, lab, memory):
    """Run gate_worker.py `argv` in a sandbox of `image` with inputs ({name in the
    inbox: local path}); its stdout, or GateError."""
    name = f"{lab}-gate-{uuid.uuid4().hex[:12]}"
    try:
        docker.run(*sandbox_args(name, image, argv, lab, memory))
        for target, source in {**inputs, WORKER.name: WORKER}.items():
            if source is not WORKER:  # (installed world-readable, and not ours to chmod)
                _readable(Path(source))
            docker.run("cp", str(source), f"{name}:{INBOX}/{target}", timeout=600)
        docker.run("start", name)
        try:
            status = docker.out("wait", name, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise GateError(f"{what} took more than {TIMEOUT_S} s") from None
        logs = docker.run("logs", name, check=False, timeout=120)
    except DockerError as e:
        raise GateError(f"{what} could not run: {e}") from None
    finally:
        docker.run("rm", "--force", "--volumes", name, check=False)
    if status != "0":
        last = next((line for line in reversed(logs.stderr.splitlines()) if line.strip()), "no message")
        raise GateError(f"{what} failed (exit {status}): {_printable(last)[:500]}")
    return logs.stdout


def _readable(path):
    """docker cp keeps modes: the sandbox's user must read what it is given."""
    for entry in [path, *(path.rglob("*") if path.is_dir() else [])]:
        entry.chmod(0o755 if entry.is_dir() else 0o644)


def _printable(text):
    return "".join(c if c.isprintable() else "?" for c in text)
