"""The running stack on the Swarm: deploy the stack file, wait for it, report
on it, remove it."""

import hashlib
import json
import shutil
import time

import urllib3
import yaml
from datalab_client import http

from . import credentials, image_registry, stack
from .docker import Docker, DockerError
from .endpoints import FEATURE_STORE_URL, MLFLOW_URL


def deploy(docker: Docker, settings, spec, steps):
    path = stack.stack_file(settings)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with steps.step(f"deploying stack {settings.lab}"):
        # with the image registry's account, which Swarm hands to the nodes that pull a model image
        docker.run("stack", "deploy", "--resolve-image", "never", "--prune", "--with-registry-auth", "-c", str(path),
                   settings.lab, env={"DOCKER_CONFIG": str(image_registry.client_config(settings))})
    prune_unused(docker, settings)


def prune_unused(docker: Docker, settings):
    """Remove earlier versions of this lab's secrets and configs (in-use ones stay)."""
    for kind in ("secret", "config"):
        names = docker.out(kind, "ls", "--format", "{{.Name}}",
                           "--filter", f"label=com.docker.stack.namespace={settings.lab}").split()
        for name in names:
            docker.run(kind, "rm", name, check=False)


def fingerprint(docker: Docker, settings):
    """{service: hash of its spec}: what a deploy changed, since Swarm bumps a
    service's version on every `stack deploy`, changed or not."""
    names = [svc["Name"] for svc in services(docker, settings)]
    found = docker.inspect("service", *names) if names else []
    return {svc["Spec"]["Name"]: hashlib.sha256(json.dumps(svc["Spec"], sort_keys=True).encode()).hexdigest()
            for svc in found}


def services(docker: Docker, settings):
    lines = docker.out("service", "ls", "--format", "{{json .}}",
                       "--filter", f"label=com.docker.stack.namespace={settings.lab}").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _local_health(docker: Docker, service_name, image, local_node_id):
    """Health of the service's containers on this node; "updating" while any
    still runs another image than the service's spec (a rollout under way)."""
    ids = docker.local_containers(service_name)
    containers = docker.inspect("container", *ids) if ids else []
    if any(c["Config"]["Image"] != image for c in containers):
        return "updating"
    states = {c["State"].get("Health", {}).get("Status", c["State"]["Status"]) for c in containers}
    # tasks on other nodes: Swarm calls a task with a healthcheck running once it is healthy
    for task in docker.tasks(service_name, running=True):
        if task.get("NodeID") != local_node_id:
            state = task["Status"]["State"]
            states.add("healthy" if state == "running" else state)
    if not states:
        return "no task"
    return "healthy" if states == {"healthy"} else ",".join(sorted(states))


def service_url(settings, short_name):
    if short_name == "proxy":
        return settings.hub_url
    if short_name == "hub":
        return settings.hub_url + "hub/"
    if short_name == "scoring-edge":
        return f"{settings.scoring_url}/v1/score"
    return {
        "mlflow": f"{MLFLOW_URL}/ (lab network only)",
        "directory": f"{settings['directory']['url']} (lab network only)",
        "scoring": "tasks.scoring:8080 (behind the edge)",
        "controller": "http://controller:8080/webhook (MLflow's alias webhook)",
        "featurestore": f"{FEATURE_STORE_URL} (scoring tasks only)",
        "image-registry": f"https://{image_registry.address(settings)}/v2/ (model images; the lab's account)",
    }.get(short_name, "")


def status(docker: Docker, settings):
    """One row per service: name, state (running/desired), health, URL."""
    rows = []
    local_node_id = docker.out("info", "--format", "{{.Swarm.NodeID}}")  # once per report: it is polled
    for svc in services(docker, settings):
        short = svc["Name"].removeprefix(f"{settings.lab}_")
        running, _, desired = svc["Replicas"].partition(" ")[0].partition("/")
        idle = desired == "0"  # the scoring service before a first deployment
        health = "idle" if idle else _local_health(docker, svc["Name"], svc["Image"], local_node_id)
        rows.append({
            "service": short,
            "state": "scaled to 0" if idle else "running" if running == desired else f"{running}/{desired} running",
            "replicas": svc["Replicas"],
            "health": health,
            "url": service_url(settings, short),
            "image": svc["Image"],
        })
    return rows


def hub_answers(settings, timeout=3):
    """The hub answers through its proxy, asked on this machine's loopback under the
    lab's public name (which this machine may not resolve yet); over HTTPS, its
    certificate checked for that name."""
    host, port = settings["hub"]["public_host"], settings["hub"]["port"]
    if settings["hub"]["https"]:
        ca = credentials.lab_ca_file(settings)
        pool = urllib3.HTTPSConnectionPool("127.0.0.1", port, server_hostname=host, assert_hostname=host,
                                           ca_certs=str(ca) if ca else None, retries=False, timeout=timeout)
        try:
            return pool.request("GET", "/hub/health", headers={"Host": f"{host}:{port}"}).status == 200
        except urllib3.exceptions.HTTPError:
            return False
    try:
        return http.request("GET", f"http://127.0.0.1:{port}/hub/health", timeout=timeout,
                            headers={"Host": f"{host}:{port}"}, retries=False).status == 200
    except http.HTTPError:
        return False


def wait_healthy(docker: Docker, settings, steps, timeout=300):
    with steps.step("waiting for every service to be healthy"):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            rows = status(docker, settings)
            pending = [r["service"] for r in rows
                       if r["health"] != "idle" and (r["state"] != "running" or r["health"] != "healthy")]
            if rows and not pending and hub_answers(settings):
                return rows
            if pending != last:
                steps.info(f"  waiting for: {', '.join(pending) or 'hub URL'}")
                last = pending
            if time.monotonic() > deadline:
                raise DockerError(f"services not healthy after {timeout}s: {pending}\n" + task_errors(docker, settings, pending))
            time.sleep(2)


def task_errors(docker: Docker, settings, short_names):
    return "\n".join(f"{settings.lab}_{short}.{t.get('Slot', '')} {t['Status']['State']} {t['Status'].get('Err', '')}"
                     for short in short_names for t in docker.tasks(f"{settings.lab}_{short}"))


def lab_containers(docker: Docker, settings):
    """Notebook containers the hub spawned for this lab."""
    return docker.out("ps", "-aq", "--filter", f"label=org.datalab.lab={settings.lab}").split()


def remove(docker: Docker, settings, steps):
    with steps.step(f"removing stack {settings.lab} (data kept)"):
        containers = lab_containers(docker, settings)
        if containers:
            docker.run("rm", "-f", *containers)
        docker.run("stack", "rm", settings.lab, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = docker.out("network", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={settings.lab}")
            tasks = docker.out("ps", "-q", "--filter", f"label=com.docker.stack.namespace={settings.lab}")
            if not left and not tasks:
                break
            time.sleep(1)


def lab_volumes(docker: Docker, settings):
    """The stack's volumes and the ones named after the lab (homes, teams, datasets)."""
    found = set(docker.out("volume", "ls", "-q", "--filter",
                           f"label=com.docker.stack.namespace={settings.lab}").split())
    prefix = f"{settings.lab}-"
    found.update(v for v in docker.out("volume", "ls", "-q", "--filter", f"name={prefix}").split()
                 if v.startswith(prefix))
    return sorted(found)


def remove_containers(docker: Docker, settings, timeout=60):
    """Remove the stack's containers: Swarm keeps exited tasks' containers around, and they
    still hold the volumes. Swarm may be removing some itself just after the stack went
    ("removal ... is already in progress"): those are waited for."""
    deadline = time.monotonic() + timeout
    while left := docker.out("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={settings.lab}").split():
        if time.monotonic() > deadline:
            raise DockerError(f"containers of lab '{settings.lab}' still there after {timeout} s: {' '.join(left)}")
        docker.run("rm", "-f", *left, check=False)
        time.sleep(0.5)


def purge_data(docker: Docker, settings, steps):
    with steps.step("deleting the lab's volumes and data directory"):
        remove_containers(docker, settings)
        volumes = lab_volumes(docker, settings)
        if volumes:
            docker.run("volume", "rm", "-f", *volumes)
        image_registry.untrust(settings)  # the CA goes with the secrets folder
        shutil.rmtree(settings.data_dir, ignore_errors=True)
