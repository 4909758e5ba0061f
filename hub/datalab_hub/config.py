"""Turns the runtime settings that `datalab up` renders (hub.json) into
JupyterHub configuration. Pure: reads the dict, sets traits on `c`."""

import sys
from pathlib import Path

SECRETS = Path("/run/secrets")


def read_secret(name, secrets_dir=SECRETS):
    return (Path(secrets_dir) / name).read_text().strip()


def configure(c, runtime, secrets_dir=SECRETS):
    hub, ldap, spawn = runtime["hub"], runtime["ldap"], runtime["spawner"]

    c.JupyterHub.bind_url = "http://0.0.0.0:8000/"
    c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
    # Notebook containers reach the hub by its service name on the lab network.
    c.JupyterHub.hub_connect_url = f"http://{hub['service_name']}:8081"
    c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/data/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = str(Path(secrets_dir) / "cookie_secret")
    c.JupyterHub.pid_file = "/tmp/jupyterhub.pid"
    c.ConfigurableHTTPProxy.auth_token = read_secret("proxy_token", secrets_dir)
    c.ConfigurableHTTPProxy.pid_file = "/tmp/jupyterhub-proxy.pid"
    # A hub restart must not stop anybody's server.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.upgrade_db = True
    c.JupyterHub.template_vars = {"announcement_login": hub.get("login_banner", "")}

    c.JupyterHub.authenticator_class = "datalab_hub.auth.DataLabLDAPAuthenticator"
    c.Authenticator.manage_groups = True
    auth = c.DataLabLDAPAuthenticator
    auth.server_address = ldap["host"]
    auth.server_port = ldap["port"]
    auth.tls_strategy = ldap["tls_strategy"]
    if ldap.get("ca_file"):
        auth.tls_kwargs = {"ca_certs_file": ldap["ca_file"], "validate": 2}  # ssl.CERT_REQUIRED
    auth.bind_dn_template = ldap["bind_dn_template"]
    auth.allowed_groups = ldap["allowed_group_dns"]
    auth.group_search_base = ldap["group_search_base"]
    auth.group_membership_filter = ldap["group_membership_filter"]
    auth.group_name_attribute = ldap["group_name_attribute"]
    auth.admin_ldap_groups = set(ldap["admin_groups"])

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
    sp.extra_create_kwargs = {"labels": {"org.datalab.lab": spawn["prefix"]}}

    jobs, registry = runtime["jobs"], runtime["registry"]
    sp.environment = {"DATALAB_JOBS_URL": jobs["url"], "MLFLOW_TRACKING_URI": registry["url"]}
    # The server's own token may call the jobs service and the registry, as its user.
    sp.server_token_scopes = ["users:activity!user", "access:servers!server", "access:services!service=jobs",
                              "access:services!service=registry"]
    services = [
        {
            "name": "jobs",
            "url": "http://127.0.0.1:8090",
            "command": [sys.executable, "-m", "datalab_jobs.service"],
            "environment": {"DATALAB_HUB_SETTINGS": runtime.get("settings_path", "/etc/datalab/hub.json")},
        },
        {
            "name": "registry",
            "url": "http://127.0.0.1:8091",
            "command": [sys.executable, "-m", "datalab_registry.gateway"],
            "environment": {"DATALAB_HUB_SETTINGS": runtime.get("settings_path", "/etc/datalab/hub.json")},
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
        services.append({
            "name": "idle-culler",
            "command": [sys.executable, "-m", "datalab_hub.culler",
                        "--timeout", str(culler["timeout"]), "--every", str(culler["every"])],
        })
        roles.append({
            "name": "idle-culler",
            "services": ["idle-culler"],
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers", "access:servers"],
        })
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
