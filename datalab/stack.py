"""The stack file: the platform's services, networks, volumes, secrets and
configs, for `docker stack deploy` (swarm.py deploys it).

Swarm networking here has no IPVS (docs/architecture.md): every service uses
endpoint_mode dnsrr, and only the edges (the hub's proxy, the scoring edge)
publish a port, in host mode.
"""

import hashlib
import json
import os
import socket
from pathlib import Path

from . import image_registry
from .endpoints import (CONTROLLER_DATA_DIR, CONTROLLER_SETTINGS_PATH, CONTROLLER_UID, DOCKER_SOCKET, EDGE_UID,
                        FEATURE_STORE_URL, FEATURESTORE_UID, HUB_API_URL, HUB_SETTINGS_PATH, HUB_UID,
                        IMAGE_REGISTRY_PASSWORD_VARIABLE, IMAGE_REGISTRY_PORT, IMAGE_REGISTRY_UID, LDAP_UID,
                        MLFLOW_URL, NOTEBOOK_UID, PROXY_API_URL, PROXY_PORT, PROXY_REDIRECT_PORT, SCORING_EDGE_PORT,
                        THRESHOLD_VARIABLE, port)
from .hubsettings import hub_runtime


def _content_key(name, data):
    return f"{name}_{hashlib.sha256(data).hexdigest()[:10]}"


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
        {"target": SCORING_EDGE_PORT, "published": settings["scoring"]["port"], "protocol": "tcp", "mode": "host"}])
    if settings["scoring"]["https"]:  # HTTPS only (images/edge/haproxy.cfg)
        edge["secrets"] = [files.secret("scoring_edge_pem", secret_files["scoring_edge_pem"], EDGE_UID)]
        edge["environment"] = {"EDGE_TLS_PEM": "/run/secrets/scoring_edge_pem"}
    edge["deploy"]["update_config"] = {"order": "stop-first"}  # host-mode port (docs/architecture.md)
    deployment = deployment or {"image": refs["scoring"], "replicas": 0, "threshold": settings["scoring"]["threshold"],
                                "model": "", "version": ""}
    scoring = _service(deployment["image"], ["scoring", "features"], environment={
        "DATALAB_LOG_LEVEL": settings["lab"]["log_level"],
        THRESHOLD_VARIABLE: str(deployment["threshold"]),
        "SCORING_FEATURE_STORE_URL": FEATURE_STORE_URL,
    }, secrets=[files.secret("featurestore_password", secret_files["featurestore_password"], NOTEBOOK_UID),
                files.secret("feedback_token", secret_files["feedback_token"], NOTEBOOK_UID)],
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


def proxy_service(settings, refs, files, secret_files):
    """The front door: users' routes live here, so they outlive a hub restart. Same
    image as the hub (Debian's configurable-http-proxy is in it). With [hub] https it
    terminates TLS, and answers plain HTTP on http_redirect_port with a redirect."""
    hub = settings["hub"]
    command = ["datalab-proxy", "--port", str(PROXY_PORT), "--api-port", str(port(PROXY_API_URL)),
               "--default-target", HUB_API_URL, "--error-target", f"{HUB_API_URL}/hub/error",
               # per-user origins: JupyterHub's routes are host/path
               *(["--host-routing"] if hub["per_user_origins"] else [])]
    ports = [{"target": PROXY_PORT, "published": hub["port"], "protocol": "tcp", "mode": "host"}]
    secrets = [files.secret("proxy_token", secret_files["proxy_token"], HUB_UID)]
    health = ["curl", "-fsS", f"http://127.0.0.1:{PROXY_PORT}/_chp_healthz"]
    if hub["https"]:
        command += ["--ssl-cert", "/run/secrets/hub_tls_crt", "--ssl-key", "/run/secrets/hub_tls_key"]
        secrets += [files.secret("hub_tls_crt", secret_files["hub_tls_crt"], HUB_UID, 0o444),
                    files.secret("hub_tls_key", secret_files["hub_tls_key"], HUB_UID)]
        if hub["http_redirect_port"]:
            command += ["--redirect-port", str(PROXY_REDIRECT_PORT), "--redirect-to", str(hub["port"])]
            ports.append({"target": PROXY_REDIRECT_PORT, "published": hub["http_redirect_port"], "protocol": "tcp",
                          "mode": "host"})
        # the certificate names the public host, not the loopback: the check asks whether the proxy answers
        health = ["curl", "-fsSk", f"https://127.0.0.1:{PROXY_PORT}/_chp_healthz"]
    return _service(
        refs["hub"],
        ["lab"],
        command=command,
        ports=ports,
        secrets=secrets,
        healthcheck={"test": ["CMD", *health],
                     "interval": "5s", "timeout": "3s", "retries": 3, "start_period": "10s"},
        stop_grace_period="3s",
    )


def controller_service(settings, refs, files, secret_files, docker_gid):
    """The promotion controller: hears MLflow's alias webhook, gates and rolls out.
    It drives the engine (bakes images, updates the scoring service) like `datalab
    deploy`, and shares the deployments folder with the host's CLI."""
    deployments = settings.data_dir / "deployments"
    in_container = settings.with_overrides({"lab": {"data_dir": CONTROLLER_DATA_DIR}})
    settings_json = settings.data_dir / "controller.json"
    settings_json.write_text(json.dumps(in_container.table(), indent=2))
    # it publishes the model images it bakes (datalab/image_registry.py)
    registry_password = files.secret("image_registry_password", secret_files["image_registry_password"],
                                     CONTROLLER_UID)
    service = _service(
        refs["controller"], ["backend"],
        user=f"{CONTROLLER_UID}:{docker_gid}",
        environment={"MLFLOW_TRACKING_URI": MLFLOW_URL, "DATALAB_CONTROLLER_SETTINGS": CONTROLLER_SETTINGS_PATH,
                     "DATALAB_LOG_LEVEL": settings["lab"]["log_level"],
                     IMAGE_REGISTRY_PASSWORD_VARIABLE: f"/run/secrets/{registry_password['target']}"},
        volumes=[f"{DOCKER_SOCKET}:{DOCKER_SOCKET}", f"{deployments}:{CONTROLLER_DATA_DIR}/deployments"],
        configs=[files.config("controller_settings", settings_json, CONTROLLER_SETTINGS_PATH)],
        secrets=[files.secret("webhook_secret", secret_files["webhook_secret"], CONTROLLER_UID),
                 # handed to the one-shot export of production's labelled window (sandbox.production_window)
                 files.secret("featurestore_password", secret_files["featurestore_password"], CONTROLLER_UID),
                 registry_password],
        stop_grace_period="3s",
    )
    return service


def image_registry_service(settings, refs, files, secret_files):
    """The image registry nodes pull model images from (datalab/image_registry.py): HTTPS
    with the lab CA's certificate, one account, its blobs on a volume of this node."""
    service = _service(
        refs["image-registry"], ["image-registry"],
        ports=[{"target": IMAGE_REGISTRY_PORT, "published": settings["image_registry"]["port"], "protocol": "tcp",
                "mode": "host"}],
        volumes=[f"image-registry-data:{image_registry.STORAGE}"],
        secrets=[files.secret("registry_password", secret_files["image_registry_password"], IMAGE_REGISTRY_UID),
                 files.secret("registry_tls_crt", secret_files["image_registry_tls_crt"], IMAGE_REGISTRY_UID, 0o444),
                 files.secret("registry_tls_key", secret_files["image_registry_tls_key"], IMAGE_REGISTRY_UID)],
        stop_grace_period="5s",
    )
    service["deploy"]["update_config"] = {"order": "stop-first"}  # a host-mode port, and one writer of its blobs
    return service


def stack_file(settings):
    """Where the stack file `docker stack deploy` reads is written (datalab/swarm.py)."""
    return settings.data_dir / "stack.yml"


def hub_settings_file(settings):
    """Where the hub's runtime settings (hub.json) are written, for the stack's config."""
    return settings.data_dir / "hub.json"


def render(settings, refs, profile_list, secret_files, deployment=None):
    """The stack file (compose v3 for `docker stack deploy`) as a dict."""
    files = _Files()
    has_ca = "ldap_ca_crt" in secret_files
    hub_json = hub_settings_file(settings)
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
            environment={"DATALAB_HUB_SETTINGS": HUB_SETTINGS_PATH, "DATALAB_LOG_LEVEL": settings["lab"]["log_level"]},
            configs=[files.config("hub_settings", hub_json, HUB_SETTINGS_PATH)],
            secrets=hub_secrets,
        ),
        "proxy": proxy_service(settings, refs, files, secret_files),
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
    services["image-registry"] = image_registry_service(settings, refs, files, secret_files)
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
            # The image registry's own: nothing reaches it but through its published port.
            "image-registry": {"driver": "overlay"},
        },
        "volumes": {"hub-data": {}, "mlflow-data": {}, "directory-data": {}, "featurestore-data": {},
                    "image-registry-data": {}},
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
        "--port", str(port(MLFLOW_URL)),
        "--workers", str(m["workers"]),
        "--allowed-hosts", ",".join(f"{host},{host}:{port(MLFLOW_URL)}" for host in ("mlflow", "localhost", "127.0.0.1")),
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
