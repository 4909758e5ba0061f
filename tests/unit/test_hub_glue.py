"""The hub glue (hub/datalab_hub) without a hub: config mapping and the
authenticator's refusals before and around LDAP."""

import asyncio
import json
import math
import os
import socket
import ssl
from urllib.parse import urlsplit

import pytest
from tornado import web
from traitlets.config import Config

from datalab import hubsettings, manifest, settings as settings_mod
from datalab_hub.auth import DataLabLDAPAuthenticator
from datalab_hub.config import configure
from jupyterhub.utils import subdomain_hook_idna


def runtime(tmp_path):
    s = settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path)}})
    return json.loads(json.dumps(hubsettings.hub_runtime(s, hubsettings.profiles(settings_mod.defaults(), manifest.load(), {"python": "datalab/python:abc"}), has_ca=True)))


def test_configure_maps_runtime_settings_onto_traits(tmp_path):
    (tmp_path / "proxy_token").write_text("tok\n")
    (tmp_path / "cli_token").write_text("cli\n")
    c = Config()
    configure(c, runtime(tmp_path), secrets_dir=tmp_path)
    assert c.ConfigurableHTTPProxy.auth_token == "tok"
    assert c.ConfigurableHTTPProxy.should_start is False  # the stack's own proxy service
    assert c.ConfigurableHTTPProxy.api_url == "http://proxy:8001"
    assert c.JupyterHub.bind_url == "http://0.0.0.0:8000/"  # the proxy's port, from hub.json
    # 0: three starting per two cores; then 40 waiting their turn, counted in JupyterHub's limit
    assert c.DataLabSpawner.starts_at_once == math.ceil(1.5 * len(os.sched_getaffinity(0)))
    assert c.JupyterHub.concurrent_spawn_limit == c.DataLabSpawner.starts_at_once + 40
    assert c.JupyterHub.tornado_settings["spawn_throttle_retry_range"] == (2, 6)
    # per-user origins: alice.lab.localhost, registry--service.lab.localhost
    assert c.JupyterHub.subdomain_host == "http://lab.localhost:8000"
    assert c.JupyterHub.subdomain_hook is subdomain_hook_idna
    assert c.JupyterHub.cleanup_servers is False
    assert c.JupyterHub.hub_connect_url == "http://hub:8081"
    assert c.DataLabLDAPAuthenticator.allowed_groups == [
        "cn=datascientists,ou=groups,dc=datalab,dc=example", "cn=lab-admins,ou=groups,dc=datalab,dc=example"]
    assert c.DataLabLDAPAuthenticator.tls_strategy == "before_bind"
    assert c.DataLabLDAPAuthenticator.admin_ldap_groups == {"lab-admins"}
    assert c.DataLabSpawner.network_name == "datalab_lab"
    assert c.DataLabSpawner.image == "datalab/python:abc"  # first built profile
    assert [p["name"] for p in c.DataLabSpawner.profiles] == list(manifest.load())
    assert c.DataLabSpawner.pull_policy == "never"
    assert c.JupyterHub.allow_named_servers is True
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"jobs", "registry", "datalab-cli", "idle-culler", "group-sync"}
    assert services["datalab-cli"]["api_token"] == "cli"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    # the culler reads the hub's activity records and stops servers; it may not call them
    assert set(roles["idle-culler"]["scopes"]) == {"list:users", "read:users:activity", "read:servers", "delete:servers"}
    assert services["idle-culler"]["command"][1:3] == ["-m", "jupyterhub_idle_culler"]
    # the proxy, in its own container, reaches the services by the hub's name
    assert services["jobs"]["url"] == "http://hub:8090" and services["registry"]["url"] == "http://hub:8091"
    assert "access:services!service=jobs" in roles["user"]["scopes"]
    assert "access:services!service=jobs" in c.DataLabSpawner.server_token_scopes
    # one definition of each address (datalab/endpoints.py): what servers may call on the lab
    # network is exactly where the hub and its services listen
    assert sorted({urlsplit(u).port for u in (c.JupyterHub.hub_bind_url, services["jobs"]["url"],
                                               services["registry"]["url"])}) == c.DataLabSpawner.hub_ports
    assert c.DataLabSpawner.environment["DATALAB_JOBS_URL"].startswith(services["jobs"]["url"] + "/")


def test_over_https_the_hubs_cookies_are_secure_and_host_prefixed(tmp_path):
    (tmp_path / "proxy_token").write_text("tok\n")
    (tmp_path / "cli_token").write_text("cli\n")
    s = settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path)}, "hub": {"https": True}})
    c = Config()
    configure(c, json.loads(json.dumps(hubsettings.hub_runtime(s, [], has_ca=True))), secrets_dir=tmp_path)
    assert c.JupyterHub.subdomain_host == "https://lab.localhost:8000"
    assert c.JupyterHub.cookie_host_prefix_enabled is True
    assert c.JupyterHub.tornado_settings["xsrf_cookie_kwargs"] == {"secure": True}
    hsts = c.JupyterHub.tornado_settings["headers"]["Strict-Transport-Security"]
    assert hsts == "max-age=31536000; includeSubDomains"  # users' origins are subdomains of the hub's
    plain = Config()
    configure(plain, runtime(tmp_path), secrets_dir=tmp_path)
    assert plain.JupyterHub.cookie_host_prefix_enabled is False  # a __Host- cookie needs HTTPS
    assert "xsrf_cookie_kwargs" not in plain.JupyterHub.tornado_settings
    assert "headers" not in plain.JupyterHub.tornado_settings  # HSTS on plain HTTP would lock browsers out


def authenticator(port):
    return DataLabLDAPAuthenticator(
        server_address="127.0.0.1", server_port=port, tls_strategy="insecure",
        bind_dn_template=["uid={username},ou=people,dc=x"],
    )


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_overlong_name_is_refused_without_contacting_the_directory():
    # the port is closed: reaching it would raise, not return None
    auth = authenticator(closed_port())
    assert asyncio.run(auth.authenticate(None, {"username": "a" * 65, "password": "x"})) is None


@pytest.mark.parametrize("name", ["*", "alice)(uid=*", "alice\x00", "uid=alice,dc=x"])
def test_injection_shaped_names_are_refused_before_any_bind(name):
    auth = authenticator(closed_port())
    assert asyncio.run(auth.authenticate(None, {"username": name, "password": "x"})) is None


def test_unreachable_directory_is_a_503_with_a_clear_message():
    auth = authenticator(closed_port())
    with pytest.raises(web.HTTPError) as err:
        asyncio.run(auth.authenticate(None, {"username": "alice", "password": "x"}))
    assert err.value.status_code == 503
    assert "directory service cannot be reached" in err.value.log_message


def test_directory_certificate_is_verified_with_or_without_a_ca_file(tmp_path):
    (tmp_path / "proxy_token").write_text("tok\n")
    (tmp_path / "cli_token").write_text("cli\n")
    with_ca = runtime(tmp_path)
    c = Config()
    configure(c, with_ca, secrets_dir=tmp_path)
    assert c.DataLabLDAPAuthenticator.tls_kwargs == {"validate": ssl.CERT_REQUIRED,
                                                     "ca_certs_file": "/run/secrets/ldap_ca_crt"}
    # an external directory without a CA file: the system's trust store, never CERT_NONE
    with_ca["ldap"]["ca_file"] = ""
    c = Config()
    configure(c, with_ca, secrets_dir=tmp_path)
    assert c.DataLabLDAPAuthenticator.tls_kwargs == {"validate": ssl.CERT_REQUIRED}


def test_plain_ldap_is_refused_unless_a_named_setting_accepts_it_and_then_warns(tmp_path):
    s = settings_mod.defaults().with_overrides(
        {"lab": {"data_dir": str(tmp_path)}, "directory": {"tls_strategy": "insecure"}})
    with pytest.raises(settings_mod.SettingsError, match="allow_insecure_tls"):
        hubsettings.refuse_unsafe(s)
    with pytest.raises(settings_mod.SettingsError):
        hubsettings.hub_runtime(s, [], has_ca=False)
    accepted = s.with_overrides({"directory": {"allow_insecure_tls": True}})
    hubsettings.refuse_unsafe(accepted)
    assert hubsettings.hub_runtime(accepted, [], has_ca=False)["ldap"]["tls_strategy"] == "insecure"
    assert any("tls_strategy" in w and "clear text" in w for w in hubsettings.insecure_choices(accepted))
    # the defaults: a lab to try on one machine, its front door plain HTTP, and said so
    assert [w.split(":")[0] for w in hubsettings.insecure_choices(settings_mod.defaults())] == ["[hub] https = false"]
    https = settings_mod.defaults().with_overrides({"hub": {"https": True}})
    assert hubsettings.insecure_choices(https) == []


def test_the_hubs_certificate_and_key_go_together_and_https_needs_two_ports(tmp_path):
    s = settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path)}})
    with pytest.raises(settings_mod.SettingsError, match="tls_cert_file and tls_key_file go together"):
        hubsettings.refuse_unsafe(s.with_overrides({"hub": {"https": True, "tls_cert_file": "/etc/hub.crt"}}))
    with pytest.raises(settings_mod.SettingsError, match="http_redirect_port must differ from port"):
        hubsettings.refuse_unsafe(s.with_overrides({"hub": {"https": True, "http_redirect_port": 8000}}))


def test_one_origin_for_all_only_when_the_settings_say_so_and_then_it_warns(tmp_path):
    (tmp_path / "proxy_token").write_text("tok\n")
    (tmp_path / "cli_token").write_text("cli\n")
    one = runtime(tmp_path)
    one["hub"]["per_user_origins"] = False
    c = Config()
    configure(c, one, secrets_dir=tmp_path)
    assert "subdomain_host" not in c.JupyterHub
    s = settings_mod.defaults().with_overrides({"hub": {"per_user_origins": False}})
    assert any("per_user_origins = false" in w for w in hubsettings.insecure_choices(s))


def test_configured_roles_are_exactly_those_docs_security_md_justifies(tmp_path):
    """A widened scope must be a reviewed change of docs/security.md."""
    import re
    from pathlib import Path

    table = Path(__file__).resolve().parents[2] / "docs" / "security.md"
    documented = {}
    for line in table.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[\w-]+`", cells[0]) and cells[2].startswith("`"):
            documented[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[2]))
    (tmp_path / "proxy_token").write_text("tok\n")
    (tmp_path / "cli_token").write_text("cli\n")
    c = Config()
    configure(c, runtime(tmp_path), secrets_dir=tmp_path)
    configured = {r["name"]: set(r["scopes"]) for r in c.JupyterHub.load_roles}
    configured["server"] = set(c.DataLabSpawner.server_token_scopes)
    assert configured == documented


def test_groups_are_read_again_between_logins(tmp_path):
    (tmp_path / "proxy_token").write_text("tok\n")
    (tmp_path / "cli_token").write_text("cli\n")
    c = Config()
    configure(c, runtime(tmp_path), secrets_dir=tmp_path)
    auth = c.DataLabLDAPAuthenticator
    assert auth.search_bind_dn == "cn=hub-reader,dc=datalab,dc=example"
    assert auth.search_password_file == "/run/secrets/ldap_search_password"
    assert auth.auth_refresh_age == 300
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["group-sync"]["command"][1:] == ["-m", "datalab_hub.groupsync"]
    no_reader = runtime(tmp_path)
    no_reader["ldap"]["search_bind_dn"] = ""
    c = Config()
    configure(c, no_reader, secrets_dir=tmp_path)
    assert "group-sync" not in {s["name"] for s in c.JupyterHub.services}
    assert "group-sync" not in {r["name"] for r in c.JupyterHub.load_roles}


def test_the_spawn_limit_is_the_settings_or_three_per_two_cores():
    from datalab_hub.config import spawn_limit

    assert spawn_limit(0, cores=2) == 3 and spawn_limit(0, cores=16) == 24 and spawn_limit(0, cores=1) == 2
    assert spawn_limit(8, cores=2) == 8
