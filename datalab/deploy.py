"""Rolling a registered model version out to the scoring service.

The version is baked into an image (FROM datalab/scoring) at rollout: once
built, serving depends on nothing but the image, MLflow may be down, and
rolling back is pointing the service at the previous image. The deployment
(model, version, image, replicas, threshold) is kept in <data_dir>/scoring.json
and rendered into the stack like every other service; Swarm rolls it out
start-first, gated on /readyz, and rolls back on failure.
"""

import json
import os
import tempfile
import time
from pathlib import Path

from .docker import Docker, DockerError


class DeployError(RuntimeError):
    pass


def state_file(settings):
    return settings.data_dir / "scoring.json"


def current(settings):
    path = state_file(settings)
    return json.loads(path.read_text()) if path.exists() else None


def save(settings, deployment):
    path = state_file(settings)
    if deployment is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps(deployment, indent=2))


def bake(docker: Docker, settings, scoring_ref, name, ref, steps):
    """Fetch name@ref from the registry and build the image that serves it."""
    with tempfile.TemporaryDirectory(prefix="datalab-model-") as work:
        os.chmod(work, 0o777)  # the fetcher runs as uid 1000
        with steps.step(f"fetching {name}@{ref} from the registry"):
            proc = docker.run("run", "--rm", "--network", f"{settings.lab}_tracking",
                              "-e", "MLFLOW_TRACKING_URI=http://mlflow:5000", "-v", f"{work}:/out",
                              "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                              scoring_ref, "python3", "-m", "datalab_scoring.fetch", name, ref, "/out/model",
                              check=False, timeout=600)
            if proc.returncode != 0:
                raise DeployError((proc.stderr.strip().splitlines() or ["fetch failed"])[-1])
            fetched = json.loads(proc.stdout.strip().splitlines()[-1])
        version = fetched["version"]
        Path(work, "Dockerfile").write_text(
            f"FROM {scoring_ref}\nCOPY model /model\n"
            f"ENV SCORING_MODEL_NAME={name} SCORING_MODEL_VERSION={version}\n")
        tag = f"datalab/scoring-model:{name}-v{version}"
        with steps.step(f"baking {name} v{version} into {tag}"):
            docker.run("build", "-q", "--label", f"org.datalab.model={name}",
                       "--label", f"org.datalab.model-version={version}",
                       "--label", f"org.datalab.run-id={fetched['run_id']}", "-t", tag, work, timeout=600)
    image_id = docker.out("image", "inspect", "-f", "{{.Id}}", tag)
    image = f"{tag}-{image_id.split(':')[-1][:12]}"  # a rebuilt version is a new image: a rollout
    docker.run("tag", image_id, image)
    return {"model": name, "version": version, "run_id": fetched["run_id"], "image": image}


def wait_rollout(docker: Docker, settings, deployment, timeout=300):
    """'completed' when every replica serves deployment's image, 'rolled back' (with why) otherwise."""
    service = f"{settings.lab}_scoring"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = docker.inspect("service", service)
        if info:
            status = (info[0].get("UpdateStatus") or {}).get("State")
            spec_image = info[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
            if status in ("rollback_completed", "rollback_paused", "paused") or (
                    status is None and spec_image != deployment["image"] and info[0].get("PreviousSpec")):
                return "rolled back", task_failures(docker, service)
            if spec_image == deployment["image"] and status in (None, "completed"):
                tasks = docker.out("service", "ps", "--filter", "desired-state=running",
                                   "--format", "{{.Image}} {{.CurrentState}}", service).splitlines()
                if tasks and all(t.startswith(deployment["image"]) and " Running" in f" {t}" for t in tasks):
                    return "completed", ""
        time.sleep(1)
    raise DockerError(f"rollout of {deployment['model']} v{deployment['version']} not finished after {timeout}s")


def task_failures(docker: Docker, service):
    lines = docker.out("service", "ps", "--no-trunc", "--format", "{{.Image}} {{.CurrentState}} {{.Error}}",
                       service, check=False).splitlines()
    return "; ".join(sorted({l for l in lines if "Failed" in l or "Rejected" in l or "unhealthy" in l.lower()}))[:800]


def replica_figures(docker: Docker, settings):
    """Memory and start-up time (process start -> model warm) of the scoring tasks on this node."""
    figures = []
    ids = docker.out("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={settings.lab}_scoring").split()
    for cid in ids:
        name = docker.out("inspect", "-f", "{{.Name}}", cid).lstrip("/")
        usage = docker.out("stats", "--no-stream", "--format", "{{.MemUsage}}", cid).split("/")[0].strip()
        logs = docker.run("logs", cid, check=False)
        ready = [line for line in (logs.stdout + logs.stderr).splitlines() if " ready (" in line]
        startup = ready[-1].rsplit(" in ", 1)[-1].removesuffix(" s") if ready else None
        figures.append({"task": name.split(".")[1] if "." in name else name, "memory_mb": _megabytes(usage),
                        "startup_s": float(startup) if startup else None})
    return figures


def _megabytes(usage):
    units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "B": 1 / 2**20}
    for unit, factor in units.items():
        if usage.endswith(unit):
            return round(float(usage[: -len(unit)]) * factor, 1)
    return None
