"""The hub's runtime settings (hub.json): what `datalab up` renders from the
lab's settings for the hub, its services and its spawner
(hub/datalab_hub/config.py turns them into JupyterHub configuration), and the
checks of the settings that would turn a protection off."""

import json
import subprocess
from urllib.parse import urlparse

from .docker import DockerError
from .endpoints import (HUB_API_URL, JOBS_URL, MLFLOW_URL, PROXY_API_URL, PROXY_PORT, REGISTRY_URL, lab_network,
                        port)
from .settings import SettingsError


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
    hub = settings["hub"]
    if bool(hub["tls_cert_file"]) != bool(hub["tls_key_file"]):
        raise SettingsError("[hub] tls_cert_file and tls_key_file go together (both empty: a certificate from "
                            "the lab's CA)")
    if hub["https"] and hub["http_redirect_port"] == hub["port"]:
        raise SettingsError(f"[hub] http_redirect_port must differ from port ({hub['port']}): one port cannot "
                            "answer both HTTPS and plain HTTP")
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
    if not settings["hub"]["https"]:
        warnings.append("[hub] https = false: passwords and session cookies reach the hub in clear text from "
                        "anywhere but this machine")
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
    ldap_host, ldap_port = ldap_endpoint(settings)
    return {
        "hub": {
            "api_url": HUB_API_URL,
            "proxy_api_url": PROXY_API_URL,
            # where the proxy listens: JupyterHub takes its public port (and base URL) from it
            "bind_url": f"http://0.0.0.0:{PROXY_PORT}/",
            "public_url": settings.hub_url.rstrip("/"),
            "per_user_origins": bool(settings["hub"]["per_user_origins"]),
            **{key: settings["hub"][key] for key in ("concurrent_spawn_limit", "spawn_queue", "spawn_retry_seconds",
                                                     "active_server_limit", "auth_refresh_age",
                                                     "group_sync_every")},
        },
        "ldap": {
            "host": ldap_host,
            "port": ldap_port,
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
            # what notebook and job containers may call on the lab network: the hub's API and services
            "hub_ports": sorted({port(HUB_API_URL), port(JOBS_URL), port(REGISTRY_URL)}),
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
