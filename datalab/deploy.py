"""Rolling a registered model version out to the scoring service.

The version is baked into an image (FROM datalab/scoring) at rollout: once
built, serving depends on nothing but the image, MLflow may be down, and
rolling back is pointing the service at the previous image. The scoring
service always exists in the stack (0 replicas until a first deployment); a
rollout is an update of its image, replicas and threshold (the engine's API,
through the Docker SDK), start-first and gated on /startedz (the model
loaded), which Swarm rolls back on failure. What
serves is kept in <data_dir>/deployments/scoring.json, so that `datalab up`
renders the same service again. `datalab deploy` and the promotion
controller both go through rollout() here.
"""

import contextlib
import copy
import hashlib
import json
import math
import os
import tempfile
import time
import uuid
from pathlib import Path

import docker as docker_sdk
from prometheus_client.parser import text_string_to_metric_families

from . import image_registry, images
from .docker import Docker, DockerError, engine_api
from .endpoints import CONTROLLER_UID, MLFLOW_URL, NOTEBOOK_UID, THRESHOLD_VARIABLE


class DeployError(RuntimeError):
    pass


def deployments_dir(settings):
    return settings.data_dir / "deployments"


def state_file(settings):
    return deployments_dir(settings) / "scoring.json"


def ensure_deployments_dir(settings):
    path = deployments_dir(settings)
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for item in [path, *path.iterdir()]:
            os.chown(item, int(CONTROLLER_UID), int(CONTROLLER_UID))
    return path


def promotion_under_way(settings):
    """The controller's attempt in progress ({"model", "version", "step", ...}) or None."""
    path = deployments_dir(settings) / "promotions.json"
    try:
        return json.loads(path.read_text()).get("in_progress") if path.exists() else None
    except ValueError:
        return None


def wait_for_promotion(settings, steps, timeout=900):
    """Let the controller finish what it is doing before the scoring service is touched
    (re-rendering it mid-rollout would look to the controller like a rollback)."""
    found = promotion_under_way(settings)
    if not found:
        return
    with steps.step(f"waiting for the promotion of {found['model']} v{found['version']} to finish"):
        deadline = time.monotonic() + timeout
        while promotion_under_way(settings):
            if time.monotonic() > deadline:
                raise DeployError(f"a promotion is still under way after {timeout} s (datalab logs controller)")
            time.sleep(2)


def current(settings):
    path = state_file(settings)
    return json.loads(path.read_text()) if path.exists() else None


def save(settings, deployment):
    path = state_file(settings)
    if deployment is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(deployment, indent=2))
    tmp.replace(path)


@contextlib.contextmanager
def fetched(docker: Docker, settings, scoring_ref, name, ref):
    """Fetch name@ref from the registry in a one-shot container of the scoring
    image; yields (the fetcher's answer, a folder holding model/)."""
    container = f"{settings.lab}-fetch-{uuid.uuid4().hex[:10]}"
    command = ["python3", "-m", "datalab_scoring.fetch", name, ref, "/tmp/fetched/model"]
    try:
        proc = docker.run("run", "--name", container, "--network", f"{settings.lab}_tracking",
                          "-e", f"MLFLOW_TRACKING_URI={MLFLOW_URL}", "--cap-drop", "ALL",
                          "--security-opt", "no-new-privileges", scoring_ref, *command, check=False, timeout=900)
        if proc.returncode != 0:
            raise DeployError((proc.stderr.strip().splitlines() or ["fetch failed"])[-1])
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        with tempfile.TemporaryDirectory(prefix="datalab-model-") as work:
            docker.run("cp", f"{container}:/tmp/fetched/model", str(Path(work) / "model"), timeout=600)
            yield answer, Path(work)
    finally:
        docker.run("rm", "-f", container, check=False)


def model_digest(model_dir):
    """sha256 over the model folder's files (relative paths and bytes): what a
    version served, so that baking it again can prove it is the same model. A
    symbolic link counts as its target's name, never read through: the files are
    the team's, and this runs as the host's root."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_symlink() or p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        content = b"link:" + os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        digest.update(hashlib.sha256(content).digest())
    return f"sha256:{digest.hexdigest()}"


def bake(docker: Docker, settings, scoring_ref, answer, work):
    """Build the image that serves the fetched version (work/model) and publish it to the
    lab's image registry: the record and the service name it there, by digest."""
    name, version = answer["name"], answer["version"]
    digest = model_digest(Path(work) / "model")
    Path(work, "Dockerfile").write_text(
        f"FROM {scoring_ref}\nCOPY --chown={NOTEBOOK_UID}:{NOTEBOOK_UID} model /model\n"
        f"ENV SCORING_MODEL_NAME={name} SCORING_MODEL_VERSION={version}\n")
    tag = f"{images.MODEL_REPOSITORY}:{name}-v{version}"
    docker.run("build", "-q", "--label", f"org.datalab.model={name}",
               "--label", f"org.datalab.model-version={version}",
               "--label", f"org.datalab.run-id={answer['run_id']}", "--label", f"org.datalab.model-digest={digest}",
               "-t", tag, str(work), timeout=600)
    baked = {"model": name, "version": version, "run_id": answer["run_id"], "model_digest": digest, "image": tag}
    return {**baked, "image": image_registry.publish(settings, tag_model_image(docker, baked))}


def tag_model_image(docker: Docker, baked):
    """Tag the image of a version as <model>-v<version>-<image ID>: a rebuilt version is a new
    image (and so a rollout), and an image pulled back by digest gets a name again."""
    image_id = docker.out("image", "inspect", "-f", "{{.Id}}", baked["image"])
    image = f"{images.MODEL_REPOSITORY}:{baked['model']}-v{baked['version']}-{image_id.split(':')[-1][:12]}"
    docker.run("tag", image_id, image)
    return image


def rebake(docker: Docker, settings, scoring_ref, deployment):
    """Bake the version `deployment` records again from the registry, only if the
    registry still holds the very model it served (its digest): a registered
    model deleted and registered again restarts at version 1, so a name and a
    number alone could bring back a model no gate ever judged."""
    name, version = deployment["model"], str(deployment["version"])
    if not deployment.get("model_digest"):
        raise DeployError(f"{name} v{version} has no model digest on record (served from an image baked "
                          "elsewhere, or by an older DataLab): it cannot be proved the same, so it is not "
                          "baked again")
    with fetched(docker, settings, scoring_ref, name, version) as (answer, work):
        digest = model_digest(work / "model")
        if digest != deployment["model_digest"]:
            raise DeployError(f"the registry's {name} v{version} is not the model that served (its files "
                              f"changed: {digest[:19]}, {deployment['model_digest'][:19]} on record); promote "
                              "or deploy a version again")
        return bake(docker, settings, scoring_ref, answer, work)


def prepare(docker: Docker, settings, scoring_ref, name, ref):
    """Fetch name@ref, then bake it: (the fetcher's answer, baked image dict)."""
    with fetched(docker, settings, scoring_ref, name, ref) as (answer, work):
        return answer, bake(docker, settings, scoring_ref, answer, work)


def baked_image(docker: Docker, image):
    """A model image baked before (on another lab, loaded here): what it serves, from its labels."""
    found = docker.inspect("image", image)
    labels = (found[0]["Config"].get("Labels") or {}) if found else {}
    if "org.datalab.model" not in labels:
        raise DeployError(f"{image} is not a model image baked by DataLab (no such image here, or no "
                          "org.datalab.model label)")
    return {"model": labels["org.datalab.model"], "version": labels["org.datalab.model-version"],
            "run_id": labels.get("org.datalab.run-id", ""), "model_digest": labels.get("org.datalab.model-digest", ""),
            "image": image}


def scoring_service(settings):
    return f"{settings.lab}_scoring"


def start_rollout(docker: Docker, settings, target):
    """Point the scoring service at target (returns at once; wait_rollout follows it)."""
    found = docker.inspect("service", scoring_service(settings))
    if not found:
        raise DeployError(f"no scoring service in lab {settings.lab}: run `datalab up` first")
    service, spec = found[0], found[0]["Spec"]
    task_template = copy.deepcopy(spec["TaskTemplate"])
    container = task_template["ContainerSpec"]
    container["Image"] = target["image"]
    # The environment sorted, as `datalab up` renders it: `docker service update --env-add`
    # wrote it back in Go's map order (random), and the next `up` found the service changed
    # (and restarted its tasks) for the order alone. Through the engine's API the list goes
    # as given, and the image as named (by digest already: nothing resolves it again).
    container["Env"] = sorted([entry for entry in container.get("Env") or []
                               if not entry.startswith(f"{THRESHOLD_VARIABLE}=")]
                              + [f"{THRESHOLD_VARIABLE}={target['threshold']}"])
    labels = {**(spec.get("Labels") or {}), "org.datalab.model": f"{target['model']}@{target['version']}",
              "com.docker.stack.image": target["image"]}
    # logged in to the lab's image registry: the update carries its account to the nodes that pull
    engine = image_registry.api(settings) if image_registry.is_published(settings, target["image"]) else engine_api()
    try:
        engine.update_service(service["ID"], service["Version"]["Index"], task_template=task_template,
                              labels=labels, mode={"Replicated": {"Replicas": int(target["replicas"])}},
                              fetch_current_spec=True)
    except docker_sdk.errors.DockerException as e:
        raise DockerError(f"the scoring service's update was refused: {e}") from None


def service_image(docker: Docker, settings):
    found = docker.inspect("service", scoring_service(settings))
    return found[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] if found else None


def rollout(docker: Docker, settings, target, timeout=300, started=False):
    """Roll target out; ('completed', '') and target saved as what serves, or
    ('rolled back', why) with the previous deployment still serving and saved."""
    if not started:
        start_rollout(docker, settings, target)
    outcome, why = wait_rollout(docker, settings, target, timeout=timeout)
    if outcome == "completed":
        save(settings, target)
    return outcome, why


def wait_rollout(docker: Docker, settings, deployment, timeout=300):
    """'completed' when every replica serves deployment's image, 'rolled back' (with why) otherwise."""
    service = scoring_service(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = docker.inspect("service", service)
        if info:
            status = (info[0].get("UpdateStatus") or {}).get("State")
            spec_image = info[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
            # The spec was just set to the target: only Swarm's rollback sets it back.
            # (An UpdateStatus left over from an earlier rollout says nothing yet.)
            if spec_image != deployment["image"]:
                return "rolled back", task_failures(docker, service)
            if status in (None, "completed"):
                tasks = docker.tasks(service, running=True)
                if tasks and all(task_image(t).startswith(deployment["image"]) and t["Status"]["State"] == "running"
                                 for t in tasks):
                    return "completed", ""
        time.sleep(1)
    raise DockerError(f"rollout of {deployment['model']} v{deployment['version']} not finished after {timeout}s; "
                      f"serving now: {serving_images(docker, service) or 'no replica'} "
                      "(Swarm goes on with the update: datalab scoring status)")


def task_image(task):
    """The image a task runs, without the digest Swarm may pin to a tag (a reference by
    digest alone, as the image registry's, is kept whole)."""
    image = task["Spec"]["ContainerSpec"]["Image"]
    name = image.partition("@")[0]
    return name if ":" in name.rsplit("/", 1)[-1] else image


def serving_images(docker: Docker, service):
    """The images the service's running tasks serve: "IMAGE × N, ..." (during an update, the old and the new)."""
    counts = {}
    for task in docker.tasks(service, running=True):
        if task["Status"]["State"] == "running":
            counts[task_image(task)] = counts.get(task_image(task), 0) + 1
    return ", ".join(f"{image} × {n}" for image, n in sorted(counts.items()))


def task_failures(docker: Docker, service):
    """Why the service's tasks failed, as the engine says (failed or rejected, or an unhealthy exit)."""
    found = {f"{task_image(t)} {t['Status']['State']}: {t['Status'].get('Err', '')}" for t in docker.tasks(service)
             if t["Status"]["State"] in ("failed", "rejected") or "unhealthy" in t["Status"].get("Err", "")}
    return "; ".join(sorted(found))[:800]


def replica_figures(docker: Docker, settings):
    """Memory and start-up time (process start -> model warm) of the scoring tasks on this node:
    the memory from the engine's statistics, the start-up from the replica's own metric
    (scoring_model_load_seconds, read on its loopback: the scoring network is not the host's)."""
    figures = []
    for cid in docker.local_containers(f"{settings.lab}_scoring"):
        name = docker.out("inspect", "-f", "{{.Name}}", cid).lstrip("/")
        usage = docker.out("stats", "--no-stream", "--format", "{{.MemUsage}}", cid).split("/")[0].strip()
        # the replica runs the team's model code, which may answer anything there
        metrics = docker.read_bounded("exec", cid, "curl", "-fsS", "--max-time", "5",
                                      "http://127.0.0.1:8080/metrics", limit=METRICS_LIMIT, timeout=6)
        startup = _gauge(metrics, "scoring_model_load_seconds")
        figures.append({"task": name.split(".")[1] if "." in name else name, "memory_mb": _megabytes(usage),
                        "startup_s": round(startup, 1) if startup else None})
    return figures


METRICS_LIMIT = 1 << 20  # bytes of a replica's /metrics read at most: the real page is a few KiB


def _gauge(metrics, name):
    """A gauge's value from Prometheus text, or 0.0 when it is missing, the page
    does not parse, or the value is not a finite non-negative number."""
    try:
        for family in text_string_to_metric_families(metrics):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value if math.isfinite(sample.value) and sample.value >= 0 else 0.0
    except (ValueError, IndexError, TypeError):  # the parser's complaints about a malformed page
        return 0.0
    return 0.0


def _megabytes(usage):
    units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "B": 1 / 2**20}
    for unit, factor in units.items():
        if usage.endswith(unit):
            return round(float(usage[: -len(unit)]) * factor, 1)
    return None
