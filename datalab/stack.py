"""The platform stack on the Swarm: render, deploy, wait, report, remove.

Swarm networking here has no IPVS (docs/architecture.md): every service uses
endpoint_mode dnsrr, and only the edges (the hub's proxy, the scoring edge)
publish a port, in host mode.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import yaml

from .docker import Docker, DockerError
from .settings import SettingsError

DOCKER_SOCKET = Path("/var/run/docker.sock")
HUB_UID = "1000"
MLFLOW_URL = "http://mlflow:5000"  # on the backend and tracking networks only
# configurable-http-proxy, a service of its own so that a hub restart drops no
# route: its REST API, the hub's (behind the proxy token).
PROXY_API_URL = "http://proxy:8001"
# The hub-managed services as notebook and job containers call them: in the hub's
# container on the lab network, each checking the caller's token with the hub (the
# proxy routes browsers by host name, which the lab network's DNS does not know).
REGISTRY_URL = "http://hub:8091/services/registry"
JOBS_URL = "http://hub:8090/services/jobs/"
CONTROLLER_DATA_DIR = "/var/lib/datalab"
LDAP_UID = "1001"
FEATURESTORE_UID = "1002"  # images/featurestore/Dockerfile
SCORING_UID = "1000"  # the notebook images' user, which the scoring image runs as
FEATURE_STORE_URL = "redis://featurestore:6379/0"  # on the features network only


def _content_key(name, data):
    return f"{name}_{hashlib.sha256(data).hexdigest()[:10]}"


def lab_network(settings):
    return f"{settings.lab}_lab"


def ldap_endpoint(settings):
    url = urlparse(settings["directory"]["url"])
    default_port = 636 if url.scheme == "ldaps" else 389
    return url.hostname, url.port or default_port


def profiles(settings, notebook_images, refs):
    """Spawn profiles ([[profiles]] settings), each with its image's built reference
    (or None) and kernel; a profile whose image the manifest lacks stops `up`."""
    found = []
    for p in settings.table("profiles"):
        if p["image"] not in notebook_images:
            raise SettingsError(f"[[profiles]] \"{p['name']}\" image: must be one of "
                                f"{', '.join(repr(n) for n in notebook_images)} (got \"{p['image']}\")")
        found.append({**p, "image": refs.get(p["image"]), "image_name": p["image"],
                      "kernel": notebook_images[p["image"]].kernel})
    return found


def refuse_unsafe(settings):
    """Settings that would turn a protection off without saying so stop `up`."""
    d = settings["directory"]
    if not d["builtin"] and bool(d["search_bind_dn"]) != bool(d["search_password_file"]):
        raise SettingsError("[directory] search_bind_dn and search_password_file go together: the hub binds as "
                            "that account, with the password in that file, to read users' groups between logins")
    if d["tls_strategy"] == "insecure" and not d["allow_insecure_tls"]:
        raise SettingsError("[directory] tls_strategy = \"insecure\" sends passwords in clear text to an "
                            "unverified directory; use \"before_bind\" (StartTLS) or \"on_connect\" (ldaps), "
                            "or set [directory] allow_insecure_tls = true to accept that")


def insecure_choices(settings):
    """Warnings for the settings that turn a protection off; `up` and `status` print them."""
    warnings = []
    d = settings["directory"]
    if not d["builtin"] and not d["search_bind_dn"]:
        warnings.append("[directory] search_bind_dn is empty: someone removed from a group in the directory keeps "
                        "its rights in the hub, its tokens and its schedules until their next login")
    if not settings["hub"]["per_user_origins"]:
        warnings.append("[hub] per_user_origins = false: every user's server shares the hub's origin, so a page "
                        "one user serves can act as any user who opens it (their servers, tokens, the registry)")
    if settings["directory"]["tls_strategy"] == "insecure":
        warnings.append("[directory] tls_strategy = \"insecure\": passwords go to the directory in clear text, "
                        "unverified (allowed by [directory] allow_insecure_tls)")
    return warnings


def host_addresses():
    """This host's IPv4 addresses (iproute2's JSON), loopback aside: its published
    ports answer on each, so user containers may reach none (netpolicy.py)."""
    try:
        shown = subprocess.run(["ip", "-json", "-4", "address", "show"], capture_output=True, text=True, timeout=10,
                               check=True).stdout
        return sorted({a["local"] for link in json.loads(shown) for a in link.get("addr_info", [])
                       if not a["local"].startswith("127.")})
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        raise DockerError(f"this host's addresses could not be listed with `ip -json address`: {e}") from None


def hub_runtime(settings, profile_list, has_ca, hub_image=""):
    refuse_unsafe(settings)
    d = settings["directory"]
    host, port = ldap_endpoint(settings)
    return {
        "hub": {
            "service_name": "hub",
            "proxy_api_url": PROXY_API_URL,
            "public_url": settings.hub_url.rstrip("/"),
            "per_user_origins": bool(settings["hub"]["per_user_origins"]),
            **{key: settings["hub"][key] for key in ("concurrent_spawn_limit", "spawn_retry_seconds",
                                                     "active_server_limit", "auth_refresh_age",
                                                     "group_sync_every")},
        },
        "ldap": {
            "host": host,
            "port": port,
            "tls_strategy": d["tls_strategy"],
            "ca_file": "/run/secrets/ldap_ca_crt" if has_ca else "",
            "bind_dn_template": list(d["bind_dn_template"]),
            "allowed_group_dns": [f"cn={g},{d['group_base']}" for g in settings["hub"]["allowed_groups"]],
            "group_search_base": d["group_base"],
            "group_membership_filter": d["group_membership_filter"],
            "group_name_attribute": d["group_name_attribute"],
            "admin_groups": list(settings["hub"]["admin_groups"]),
            # the hub's read-only account: users' groups between logins (auth.py, groupsync.py); "": none
            "search_bind_dn": f"cn=hub-reader,{d['base_dn']}" if d["builtin"] else d["search_bind_dn"],
            "search_password_file": ("/run/secrets/ldap_search_password"
                                     if d["builtin"] or d["search_password_file"] else ""),
        },
        "spawner": {
            "profiles": profile_list,
            "network": lab_network(settings),
            "prefix": settings.lab,
            "pids_limit": settings["spawner"]["pids_limit"],
            "start_timeout": settings["spawner"]["start_timeout"],
            "named_servers": settings["spawner"]["named_servers"],
            "teams": list(settings["volumes"]["teams"]),
            "team_mount": settings["volumes"]["team_mount"],
            "datasets_mount": settings["volumes"]["datasets_mount"],
            "volume_init_image": next((p["image"] for p in profile_list if p["image"]), ""),
            # sets the network rules of notebook and job containers (hub/datalab_hub/netpolicy.py)
            "netpolicy_image": hub_image,
            "internet": bool(settings["spawner"]["internet"]),
            "private_networks": list(settings["spawner"]["private_networks"]),
            "host_addresses": host_addresses(),
        },
        "culler": dict(settings["culler"]),
        "jobs": {
            **dict(settings["jobs"]),
            "data_dir": "/srv/jupyterhub/data/jobs",
            "extra_networks": [],
            "environment": {"MLFLOW_TRACKING_URI": REGISTRY_URL},
            "admin_services": ["datalab-cli"],
            "url": JOBS_URL,
        },
        "registry": {
            **settings.table("registry"),
            "teams": list(settings["volumes"]["teams"]),
            "mlflow_url": MLFLOW_URL,
            "url": REGISTRY_URL,
        },
    }


class _Files:
    """Swarm secrets and configs, named by content so a change makes a new one."""

    def __init__(self):
        self.secrets, self.configs = {}, {}

    def secret(self, name, path, uid, mode=0o400):
        key = _content_key(name, Path(path).read_bytes())
        self.secrets[key] = {"file": str(path)}
        return {"source": key, "target": name, "uid": uid, "gid": uid, "mode": mode}

    def config(self, name, path, target):
        key = _content_key(name, Path(path).read_bytes())
        self.configs[key] = {"file": str(path)}
        return {"source": key, "target": target, "mode": 0o444}


def _service(image, networks, **extra):
    spec = {
        "image": image,
        "networks": networks,
        "cap_drop": ["ALL"],
        "deploy": {
            "endpoint_mode": "dnsrr",
            "replicas": 1,
            "restart_policy": {"condition": "any", "delay": "2s"},
            "labels": {"org.datalab.component": "platform"},
        },
    }
    spec.update(extra)
    return spec


def scoring_services(settings, refs, deployment, files, secret_files):
    """The scoring edge; the scoring service: 0 replicas of the bare runtime
    until a model is deployed, so that a rollout is always a service update;
    and the feature store it keeps transactions' state in."""
    edge = _service(refs["edge"], ["scoring"], ports=[
        {"target": 8500, "published": settings["scoring"]["port"], "protocol": "tcp", "mode": "host"}])
    edge["deploy"]["update_config"] = {"order": "stop-first"}  # host-mode port (docs/architecture.md)
    deployment = deployment or {"image": refs["scoring"], "replicas": 0, "threshold": settings["scoring"]["threshold"],
                                "model": "", "version": ""}
    scoring = _service(deployment["image"], ["scoring", "features"], environment={
        "SCORING_THRESHOLD": str(deployment["threshold"]),
        "SCORING_FEATURE_STORE_URL": FEATURE_STORE_URL,
    }, secrets=[files.secret("featurestore_password", secret_files["featurestore_password"], SCORING_UID),
                files.secret("feedback_token", secret_files["feedback_token"], SCORING_UID)],
        stop_grace_period="5s")
    scoring["deploy"].update(
        replicas=int(deployment["replicas"]),
        update_config={"parallelism": 1, "delay": "1s", "order": "start-first",
                       "failure_action": "rollback", "monitor": "5s"},
        rollback_config={"parallelism": 1, "order": "start-first"},
    )
    scoring["deploy"]["labels"]["org.datalab.model"] = f"{deployment['model']}@{deployment['version']}"
    featurestore = _service(
        refs["featurestore"], ["features"],
        environment={"FEATURESTORE_MAXMEMORY": settings["features"]["maxmemory"]},
        volumes=["featurestore-data:/data"],
        secrets=[files.secret("featurestore_password", secret_files["featurestore_password"], FEATURESTORE_UID)],
        stop_grace_period="10s",  # the append-only file is flushed on the way down
    )
    # one writer of its append-only file at a time
    featurestore["deploy"]["update_config"] = {"order": "stop-first"}
    return {"scoring-edge": edge, "scoring": scoring, "featurestore": featurestore}


def controller_service(settings, refs, files, secret_files, docker_gid):
    """The promotion controller: hears MLflow's alias webhook, gates and rolls out.
    It drives the engine (bakes images, updates the scoring service) like `datalab
    deploy`, and shares the deployments folder with the host's CLI."""
    deployments = settings.data_dir / "deployments"
    in_container = settings.with_overrides({"lab": {"data_dir": CONTROLLER_DATA_DIR}})
    settings_json = settings.data_dir / "controller.json"
    settings_json.write_text(json.dumps(in_container.table(), indent=2))
    service = _service(
        refs["controller"], ["backend"],
        user=f"{HUB_UID}:{docker_gid}",
        environment={"MLFLOW_TRACKING_URI": MLFLOW_URL, "DATALAB_CONTROLLER_SETTINGS": "/etc/datalab/controller.json"},
        volumes=[f"{DOCKER_SOCKET}:{DOCKER_SOCKET}", f"{deployments}:{CONTROLLER_DATA_DIR}/deployments"],
        configs=[files.config("controller_settings", settings_json, "/etc/datalab/controller.json")],
        secrets=[files.secret("webhook_secret", secret_files["webhook_secret"], HUB_UID),
                 # handed to the one-shot export of production's labelled window (sandbox.production_window)
                 files.secret("featurestore_password", secret_files["featurestore_password"], HUB_UID)],
        stop_grace_period="3s",
    )
    return service


def render(settings, refs, profile_list, secret_files, deployment=None):
    """The stack file (compose v3 for `docker stack deploy`) as a dict."""
    data_dir = settings.data_dir
    files = _Files()
    has_ca = "ldap_ca_crt" in secret_files
    hub_json = data_dir / "hub.json"
    hub_json.write_text(json.dumps(hub_runtime(settings, profile_list, has_ca, refs["hub"]), indent=2))
    docker_gid = str(os.stat(DOCKER_SOCKET).st_gid)

    hub_secrets = [
        files.secret("cookie_secret", secret_files["cookie_secret"], HUB_UID),
        files.secret("proxy_token", secret_files["proxy_token"], HUB_UID),
        files.secret("cli_token", secret_files["cli_token"], HUB_UID),
    ]
    if has_ca:
        hub_secrets.append(files.secret("ldap_ca_crt", secret_files["ldap_ca_crt"], HUB_UID, 0o444))
    if "ldap_search_password" in secret_files:
        hub_secrets.append(files.secret("ldap_search_password", secret_files["ldap_search_password"], HUB_UID))
    services = {
        "hub": _service(
            refs["hub"],
            ["backend", "lab"],
            # The hub drives the engine through its socket: it runs as an
            # unprivileged user whose group owns the socket.
            user=f"{HUB_UID}:{docker_gid}",
            volumes=[f"{DOCKER_SOCKET}:{DOCKER_SOCKET}", "hub-data:/srv/jupyterhub/data"],
            configs=[files.config("hub_settings", hub_json, "/etc/datalab/hub.json")],
            secrets=hub_secrets,
        ),
        # The front door: users' routes live here, so they outlive a hub restart.
        # Same image as the hub (Debian's configurable-http-proxy is in it).
        "proxy": _service(
            refs["hub"],
            ["lab"],
            command=["datalab-proxy", "--default-target", "http://hub:8081",
                     "--error-target", "http://hub:8081/hub/error",
                     # per-user origins: JupyterHub's routes are host/path
                     *(["--host-routing"] if settings["hub"]["per_user_origins"] else [])],
            ports=[{"target": 8000, "published": settings["hub"]["port"], "protocol": "tcp", "mode": "host"}],
            secrets=[files.secret("proxy_token", secret_files["proxy_token"], HUB_UID)],
            healthcheck={"test": ["CMD", "curl", "-fsS", "http://127.0.0.1:8000/_chp_healthz"],
                         "interval": "5s", "timeout": "3s", "retries": 3, "start_period": "10s"},
            stop_grace_period="3s",
        ),
        "mlflow": _service(
            refs["mlflow"],
            ["backend", "tracking"],
            command=mlflow_command(settings),
            volumes=["mlflow-data:/mlflow"],
            environment=mlflow_environment(settings, secret_files),
            secrets=[files.secret("mlflow_webhook_key", secret_files["mlflow_webhook_key"], HUB_UID)] + (
                [files.secret("aws_credentials", secret_files["aws_credentials"], HUB_UID)]
                if "aws_credentials" in secret_files else []
            ),
        ),
    }
    # The hub: one writer of its SQLite database at a time. The proxy: a host-mode
    # port cannot be held by two tasks at once on one node.
    for name in ("hub", "proxy"):
        services[name]["deploy"]["update_config"] = {"order": "stop-first"}
    if settings["directory"]["builtin"]:
        services["directory"] = _service(
            refs["directory"],
            ["backend"],
            environment={"LDAP_SUFFIX": settings["directory"]["base_dn"]},
            volumes=["directory-data:/var/lib/datalab-ldap"],
            secrets=[
                files.secret(name, secret_files[name], LDAP_UID)
                for name in ("ldap_admin_password", "ldap_seed", "ldap_server_crt", "ldap_server_key", "ldap_ca_crt",
                             "ldap_search_password")
            ],
        )
    services["controller"] = controller_service(settings, refs, files, secret_files, docker_gid)
    for service in services.values():
        # their volumes, the deployments folder and the host-mode ports are on this node
        service["deploy"]["placement"] = {"constraints": [f"node.hostname == {socket.gethostname()}"]}
    services.update(scoring_services(settings, refs, deployment, files, secret_files))
    for name, service in services.items():
        memory = settings["resources"][name]
        service["deploy"]["resources"] = {"limits": {"memory": memory["memory"]},
                                          "reservations": {"memory": memory["reserve"]}}
    # the edge's host-mode port and the feature store's volume are on this node
    for name in ("scoring-edge", "featurestore"):
        services[name]["deploy"]["placement"] = services["hub"]["deploy"]["placement"]
    if settings["scoring"]["nodes"] == "home":
        services["scoring"]["deploy"]["placement"] = services["hub"]["deploy"]["placement"]
    return {
        "version": "3.8",
        "services": services,
        "networks": {
            "backend": {"driver": "overlay"},
            # Notebook containers join this one; they never see `backend`.
            "lab": {"driver": "overlay", "attachable": True},
            # MLflow for the one-shot fetchers of rollouts (users reach it through the hub).
            "tracking": {"driver": "overlay", "attachable": True},
            # The scoring edge and the scoring tasks.
            "scoring": {"driver": "overlay"},
            # The feature store and the scoring tasks (and `datalab features backfill`'s
            # one-shot loader): never a notebook or job container.
            "features": {"driver": "overlay", "attachable": True},
        },
        "volumes": {"hub-data": {}, "mlflow-data": {}, "directory-data": {}, "featurestore-data": {}},
        "secrets": files.secrets,
        "configs": files.configs,
    }


def mlflow_command(settings):
    m = settings["mlflow"]
    return [
        "start-mlflow",
        "--backend-store-uri", m["backend_store_uri"],
        "--artifacts-destination", m["artifacts_destination"],
        "--serve-artifacts",
        "--host", "0.0.0.0",
        "--port", "5000",
        "--workers", str(m["workers"]),
        "--allowed-hosts", "mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000",
    ]


def mlflow_environment(settings, secret_files):
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",  # a bank's lab does not call home
           # the alias webhook goes to the controller: http, on the lab's private network
           "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true"}
    if settings["mlflow"]["s3_endpoint_url"]:
        env["MLFLOW_S3_ENDPOINT_URL"] = settings["mlflow"]["s3_endpoint_url"]
    if "aws_credentials" in secret_files:
        env["AWS_SHARED_CREDENTIALS_FILE"] = "/run/secrets/aws_credentials"
    return env


def deploy(docker: Docker, settings, spec, steps):
    path = settings.data_dir / "stack.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with steps.step(f"deploying stack {settings.lab}"):
        docker.run("stack", "deploy", "--resolve-image", "never", "--prune", "-c", str(path), settings.lab)
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


def _local_health(docker: Docker, service_name, image, local_node):
    """Health of the service's containers on this node; "updating" while any
    still runs another image than the service's spec (a rollout under way)."""
    ids = docker.out("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service_name}").split()
    containers = docker.inspect("container", *ids) if ids else []
    if any(c["Config"]["Image"] != image for c in containers):
        return "updating"
    states = {c["State"].get("Health", {}).get("Status", c["State"]["Status"]) for c in containers}
    # tasks on other nodes: Swarm calls a task with a healthcheck running once it is healthy
    remote = docker.out("service", "ps", "--filter", "desired-state=running", "--format",
                        "{{.Node}} {{.CurrentState}}", service_name).splitlines()
    for line in remote:
        node, _, state = line.partition(" ")
        if node != local_node:
            states.add("healthy" if state.startswith("Running") else state.split(" ")[0].lower())
    if not states:
        return "no task"
    return "healthy" if states == {"healthy"} else ",".join(sorted(states))


def service_url(settings, short_name):
    if short_name == "proxy":
        return settings.hub_url
    if short_name == "hub":
        return settings.hub_url + "hub/"
    if short_name == "scoring-edge":
        return f"http://127.0.0.1:{settings['scoring']['port']}/v1/score"
    return {
        "mlflow": "http://mlflow:5000/ (lab network only)",
        "directory": f"{settings['directory']['url']} (lab network only)",
        "scoring": "tasks.scoring:8080 (behind the edge)",
        "controller": "http://controller:8080/webhook (MLflow's alias webhook)",
        "featurestore": "redis://featurestore:6379 (scoring tasks only)",
    }.get(short_name, "")


def status(docker: Docker, settings):
    """One row per service: name, state (running/desired), health, URL."""
    rows = []
    local_node = docker.out("info", "--format", "{{.Name}}")  # once per report: it is polled
    for svc in services(docker, settings):
        short = svc["Name"].removeprefix(f"{settings.lab}_")
        running, _, desired = svc["Replicas"].partition(" ")[0].partition("/")
        idle = desired == "0"  # the scoring service before a first deployment
        health = "idle" if idle else _local_health(docker, svc["Name"], svc["Image"], local_node)
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
    lab's public name (which this machine may not resolve yet)."""
    request = urllib.request.Request(f"http://127.0.0.1:{settings['hub']['port']}/hub/health",
                                     headers={"Host": f"{settings['hub']['public_host']}:{settings['hub']['port']}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status == 200
    except OSError:
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
    out = []
    for short in short_names:
        out.append(docker.out("service", "ps", "--no-trunc", "--format",
                              "{{.Name}} {{.CurrentState}} {{.Error}}", f"{settings.lab}_{short}", check=False))
    return "\n".join(out)


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


def purge_data(docker: Docker, settings, steps):
    with steps.step("deleting the lab's volumes and data directory"):
        # Swarm keeps exited task containers around; they still hold the volumes.
        exited = docker.out("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={settings.lab}").split()
        if exited:
            docker.run("rm", "-f", *exited)
        volumes = lab_volumes(docker, settings)
        if volumes:
            docker.run("volume", "rm", "-f", *volumes)
        shutil.rmtree(settings.data_dir, ignore_errors=True)
