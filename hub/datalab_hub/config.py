"""Turns the runtime settings that `datalab up` renders (hub.json) into
JupyterHub configuration: reads the dict (and the log level and settings path
the stack put in the hub's environment, to hand them on to its services), sets
traits on `c`."""

import json
import math
import os
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

from jupyterhub.utils import subdomain_hook_idna

from . import netpolicy

SECRETS = Path("/run/secrets")


def runtime_settings():
    """The runtime settings `datalab up` rendered (hub.json), from the file the
    stack names in the hub's environment and hands on to the hub's services."""
    return json.loads(Path(os.environ["DATALAB_HUB_SETTINGS"]).read_text())


def service_port():
    """The port of this hub-managed service: JupyterHub gives it its URL."""
    return urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port


def _origin(url):
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# A server's start is about half CPU-bound Python and half the engine's work and waits: two
# starts per core keep the cores busy; more only make every start of a wave finish late.
STARTS_PER_CORE = 1.5  # bench/README.md: 3 at once on 2 cores beat 2 and 4 once starts waited in line


def spawn_limit(setting, cores=None):
    """Servers starting at once: the setting, or with 0, three per two CPU cores this process
    may use (the hub's node: its users' servers start there)."""
    return int(setting) or math.ceil(STARTS_PER_CORE * (cores or len(os.sched_getaffinity(0))))


def read_secret(name, secrets_dir=SECRETS):
    return (Path(secrets_dir) / name).read_text().strip()


# The hub's tornado settings behind an HTTPS front door: the _xsrf cookie Secure like the
# login cookies (JupyterHub sets those by itself), and HSTS: a browser that has seen the hub
# over HTTPS uses nothing else for it and every user's origin under it for a year (no
# plain-HTTP first request a network attacker could answer, or set cookies through).
HTTPS_ONLY = {"xsrf_cookie_kwargs": {"secure": True},
              "headers": {"Strict-Transport-Security": "max-age=31536000; includeSubDomains"}}


def configure(c, runtime, secrets_dir=SECRETS):
    hub, ldap, spawn = runtime["hub"], runtime["ldap"], runtime["spawner"]

    c.JupyterHub.bind_url = hub["bind_url"]
    c.Application.log_level = os.environ.get("DATALAB_LOG_LEVEL") or "INFO"  # [lab] log_level, as its services
    if hub["per_user_origins"]:
        # Each user's server on an origin of its own (alice.<host>), and each service
        # (registry--service.<host>): a page one user serves cannot read the hub's or
        # anyone else's cookies or call their APIs as the user who opens it.
        c.JupyterHub.subdomain_host = hub["public_url"]
        # the callable: JupyterHub 5.5 does not resolve its own default name "idna"
        c.JupyterHub.subdomain_hook = subdomain_hook_idna
        # Over HTTPS, the login cookies take the __Host- prefix: one user's origin (a subdomain)
        # cannot set them for the hub's ("cookie tossing", docs/security.md)
        c.JupyterHub.cookie_host_prefix_enabled = hub["public_url"].startswith("https:")
    c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{urlsplit(hub['api_url']).port}"
    # Notebook containers reach the hub by its service name on the lab network.
    c.JupyterHub.hub_connect_url = hub["api_url"]
    c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/data/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = str(Path(secrets_dir) / "cookie_secret")
    c.JupyterHub.pid_file = "/tmp/jupyterhub.pid"
    # The proxy is a service of its own (JupyterHub's external-proxy setup): a hub
    # restart leaves every user's route in place, so running servers stay reachable.
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = hub["proxy_api_url"]
    c.ConfigurableHTTPProxy.auth_token = read_secret("proxy_token", secrets_dir)
    # Routes are checked against the database at every activity pass: a restarted
    # proxy (an empty route table) gets its users' routes back within a minute.
    c.JupyterHub.last_activity_interval = 60
    # A hub restart must not stop anybody's server.
    c.JupyterHub.cleanup_servers = False
    # A login wave is served in turns rather than all at once: so many start, the next
    # wait in line (the spawner's turns), and past the line JupyterHub says "try again in N s".
    starts_at_once = spawn_limit(hub["concurrent_spawn_limit"])
    c.DataLabSpawner.starts_at_once = starts_at_once
    c.JupyterHub.concurrent_spawn_limit = starts_at_once + int(hub["spawn_queue"])
    # (JupyterHub 5.5's spawn_throttle_retry_range is not a config option; its handlers
    # read it from the tornado settings, which these update)
    c.JupyterHub.tornado_settings = {
        "spawn_throttle_retry_range": tuple(int(seconds) for seconds in hub["spawn_retry_seconds"]),
        **(HTTPS_ONLY if hub["public_url"].startswith("https:") else {})}
    c.JupyterHub.active_server_limit = int(hub["active_server_limit"])
    c.JupyterHub.upgrade_db = True
    c.JupyterHub.template_vars = {"announcement_login": hub.get("login_banner", "")}

    c.JupyterHub.authenticator_class = "datalab_hub.auth.DataLabLDAPAuthenticator"
    c.Authenticator.manage_groups = True
    auth = c.DataLabLDAPAuthenticator
    auth.server_address = ldap["host"]
    auth.server_port = ldap["port"]
    auth.tls_strategy = ldap["tls_strategy"]
    # The directory's certificate is always checked: against the CA file when there is
    # one, else against the system's trust store (ldap3's own default is CERT_NONE).
    auth.tls_kwargs = {"validate": ssl.CERT_REQUIRED,
                       **({"ca_certs_file": ldap["ca_file"]} if ldap.get("ca_file") else {})}
    auth.bind_dn_template = ldap["bind_dn_template"]
    auth.allowed_groups = ldap["allowed_group_dns"]
    auth.group_search_base = ldap["group_search_base"]
    auth.group_membership_filter = ldap["group_membership_filter"]
    auth.group_name_attribute = ldap["group_name_attribute"]
    auth.admin_ldap_groups = set(ldap["admin_groups"])
    auth.search_bind_dn = ldap["search_bind_dn"]
    auth.search_password_file = ldap["search_password_file"]
    # A user's groups and admin flag are read from the directory again at their first
    # request to the hub after auth_refresh_age seconds. (Not forced before every spawn,
    # JupyterHub's refresh_pre_spawn: under a 20-user login wave some spawns then never
    # reached the spawner; group-sync stops a server whose mounts a lost group gave.)
    auth.auth_refresh_age = int(hub["auth_refresh_age"])

    c.JupyterHub.spawner_class = "datalab_hub.spawner.DataLabSpawner"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = int(spawn["named_servers"])
    sp = c.DataLabSpawner
    sp.profiles = spawn["profiles"]
    sp.image = next((p["image"] for p in spawn["profiles"] if p.get("image")), "")
    sp.pull_policy = "never"
    sp.network_name = spawn["network"]
    sp.use_internal_ip = True
    sp.prefix = spawn["prefix"]
    sp.remove = True  # the container goes on stop; the user's volume stays
    sp.notebook_dir = "/home/jovyan"
    sp.default_url = "/lab"
    sp.pids_limit = int(spawn["pids_limit"])
    sp.start_timeout = int(spawn["start_timeout"])
    sp.http_timeout = int(spawn["start_timeout"])
    sp.team_groups = spawn["teams"]
    sp.team_mount_template = spawn["team_mount"]
    sp.datasets_mount = spawn["datasets_mount"]
    sp.volume_init_image = spawn["volume_init_image"]
    sp.netpolicy_image = spawn["netpolicy_image"]
    sp.internet = bool(spawn["internet"])
    sp.private_networks = list(spawn["private_networks"])
    sp.host_addresses = list(spawn["host_addresses"])
    sp.hub_ports = list(spawn["hub_ports"])
    # the server starts once its network rules are set (netpolicy.py)
    sp.cmd = list(netpolicy.SERVER_COMMAND)
    sp.extra_create_kwargs = {"labels": {"org.datalab.lab": spawn["prefix"]}}

    jobs, registry = runtime["jobs"], runtime["registry"]
    sp.environment = {"DATALAB_JOBS_URL": jobs["url"], "MLFLOW_TRACKING_URI": registry["url"],
                      # how often a server tells the hub of its activity (the culler's only source)
                      "JUPYTERHUB_ACTIVITY_INTERVAL": str(int(runtime["culler"]["activity_interval"]))}
    # The server's own token may call the jobs service and the registry, as its user.
    sp.server_token_scopes = ["users:activity!user", "access:servers!server", "access:services!service=jobs",
                              "access:services!service=registry"]
    # The proxy, in its own container, reaches the services in the hub's container by its name.
    settings_env = {name: os.environ.get(name, "") for name in ("DATALAB_HUB_SETTINGS", "DATALAB_LOG_LEVEL")}
    services = [
        {
            "name": "jobs",
            "url": _origin(jobs["url"]),
            "command": [sys.executable, "-m", "datalab_jobs.service"],
            "environment": settings_env,
        },
        {
            "name": "registry",
            "url": _origin(registry["url"]),
            "command": [sys.executable, "-m", "datalab_registry.gateway"],
            "environment": settings_env,
            "oauth_no_confirm": True,
        },
        {"name": "datalab-cli", "api_token": read_secret("cli_token", secrets_dir)},
    ]
    roles = [
        {"name": "user", "scopes": ["self", "access:services!service=jobs", "access:services!service=registry"]},
        # jobs: the submitter's groups, and a registry-only token of theirs for each job
        {"name": "jobs", "services": ["jobs"], "scopes": [
            "read:users", "read:users:groups", "list:users", "tokens", "access:services!service=registry"]},
        {"name": "registry", "services": ["registry"], "scopes": ["read:users", "read:users:groups", "list:users"]},
        # the CLI: `datalab jobs --as`, and `datalab promote --as` (a short-lived token of that user)
        {"name": "datalab-cli", "services": ["datalab-cli"], "scopes": [
            "access:services!service=jobs", "read:users", "list:users", "tokens",
            "access:services!service=registry"]},
    ]
    culler = runtime["culler"]
    if int(culler["timeout"]) > 0:
        # jupyterhub-idle-culler decides on the hub's activity records alone and never
        # calls a user's server: no platform credential reaches user-controlled code.
        # Busy kernels reach those records through the notebook images' datalab_activity.
        services.append({
            "name": "idle-culler",
            "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                        f"--timeout={int(culler['timeout'])}", f"--cull-every={int(culler['every'])}"],
        })
        roles.append({
            "name": "idle-culler",
            "services": ["idle-culler"],
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        })
    if ldap["search_bind_dn"]:
        # Users who do not come to the hub (a schedule, an MLflow client) get the directory's
        # groups too, within hub.group_sync_every seconds (hub/datalab_hub/groupsync.py).
        services.append({
            "name": "group-sync",
            "command": [sys.executable, "-m", "datalab_hub.groupsync"],
            "environment": settings_env,
        })
        roles.append({
            "name": "group-sync",
            "services": ["group-sync"],
            "scopes": ["list:users", "read:users:groups", "read:servers", "delete:servers", "groups",
                       "delete:users"],
        })
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
