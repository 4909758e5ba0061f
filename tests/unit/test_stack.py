import json
import os
import socket

from datalab import credentials, endpoints, hubsettings, settings as settings_mod, stack

from datalab import manifest

REFS = {n: f"datalab/{n}:abc" for n in ("directory", "mlflow", "hub", "controller", "edge", "featurestore",
                                        "image-registry", "scoring", "python", "datascience", "tensorflow")}
PROFILES = hubsettings.profiles(settings_mod.defaults(), manifest.load(), REFS)


def rendered(tmp_path, monkeypatch, **overrides):
    monkeypatch.setattr(stack, "DOCKER_SOCKET", tmp_path / "docker.sock")
    (tmp_path / "docker.sock").write_text("")
    s = settings_mod.defaults().with_overrides(
        {"lab": {"data_dir": str(tmp_path), "name": "lab1"}, **overrides}
    )
    files = credentials.ensure(s)
    return s, stack.render(s, REFS, PROFILES, files)


def test_services_are_dnsrr_and_only_the_edges_publish_in_host_mode(tmp_path, monkeypatch):
    _, spec = rendered(tmp_path, monkeypatch)
    for name, svc in spec["services"].items():
        assert svc["deploy"]["endpoint_mode"] == "dnsrr", name
        assert svc["cap_drop"] == ["ALL"], name
        if name not in ("proxy", "scoring-edge", "image-registry"):
            assert "ports" not in svc, name
    # the hub's proxy is the front door, a service of its own: a hub restart keeps every route
    assert spec["services"]["proxy"]["ports"] == [{"target": 8000, "published": 8000, "protocol": "tcp", "mode": "host"}]
    # the proxy listens where the stack publishes and where the hub's config calls its API
    command = spec["services"]["proxy"]["command"]
    assert command[command.index("--port") + 1] == "8000" and command[command.index("--api-port") + 1] == "8001"
    assert spec["services"]["scoring-edge"]["ports"] == [{"target": 8500, "published": 8500, "protocol": "tcp", "mode": "host"}]
    assert spec["services"]["image-registry"]["ports"] == [
        {"target": 5000, "published": 5000, "protocol": "tcp", "mode": "host"}]
    # nothing deployed yet: the bare runtime at 0 replicas, so that a rollout is a service update
    assert spec["services"]["scoring"]["deploy"]["replicas"] == 0
    assert spec["services"]["scoring"]["image"] == REFS["scoring"]


def test_a_deployment_is_a_start_first_service_that_rolls_back(tmp_path, monkeypatch):
    s, _ = rendered(tmp_path, monkeypatch)
    deployment = {"model": "fraud", "version": "3", "image": "datalab/scoring-model:fraud-v3-abc",
                  "replicas": 2, "threshold": 70.0}
    spec = stack.render(s, REFS, PROFILES, credentials.ensure(s), deployment)
    svc = spec["services"]["scoring"]
    assert svc["image"] == deployment["image"] and svc["deploy"]["replicas"] == 2
    assert svc["environment"] == {"SCORING_THRESHOLD": "70.0", "SCORING_FEATURE_STORE_URL": endpoints.FEATURE_STORE_URL,
                                  "DATALAB_LOG_LEVEL": "INFO"}  # [lab] log_level
    assert svc["deploy"]["update_config"]["order"] == "start-first"
    assert svc["deploy"]["update_config"]["failure_action"] == "rollback"
    assert svc["networks"] == ["scoring", "features"] and "ports" not in svc
    assert spec["networks"]["lab"]["attachable"] is True
    # notebooks join only `lab`: MLflow and the directory are not on it
    assert spec["services"]["hub"]["networks"] == ["backend", "lab"]
    assert spec["services"]["proxy"]["networks"] == ["lab"]
    assert spec["services"]["directory"]["networks"] == ["backend"]
    assert spec["services"]["mlflow"]["networks"] == ["backend", "tracking"]  # tracking: the rollouts' fetchers


def test_hub_runs_unprivileged_in_the_sockets_group(tmp_path, monkeypatch):
    _, spec = rendered(tmp_path, monkeypatch)
    gid = os.stat(tmp_path / "docker.sock").st_gid
    assert spec["services"]["hub"]["user"] == f"1000:{gid}"


def test_secret_names_follow_content_so_rotation_makes_new_ones(tmp_path, monkeypatch):
    s, spec = rendered(tmp_path, monkeypatch)
    before = set(spec["secrets"])
    (tmp_path / "secrets" / "cookie_secret").write_text("rotated")
    after = set(stack.render(s, REFS, PROFILES, credentials.ensure(s))["secrets"])
    changed = before ^ after
    assert len(changed) == 2 and all(k.startswith("cookie_secret_") for k in changed)


def test_corporate_directory_drops_the_builtin_one(tmp_path, monkeypatch):
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("CA")
    s, spec = rendered(tmp_path, monkeypatch, directory={
        "builtin": False, "url": "ldaps://ldap.corp.example", "tls_strategy": "on_connect", "ca_file": str(ca),
        "group_base": "ou=Groups,dc=corp",
    })
    assert "directory" not in spec["services"]
    runtime = hubsettings.hub_runtime(s, PROFILES, has_ca=True)["ldap"]
    assert (runtime["host"], runtime["port"]) == ("ldap.corp.example", 636)
    assert runtime["allowed_group_dns"] == ["cn=datascientists,ou=Groups,dc=corp", "cn=lab-admins,ou=Groups,dc=corp"]


def test_mlflow_takes_postgres_and_s3_from_settings(tmp_path, monkeypatch):
    creds = tmp_path / "aws"
    creds.write_text("[default]\n")
    _, spec = rendered(tmp_path, monkeypatch, mlflow={
        "backend_store_uri": "postgresql://u@db/mlflow", "artifacts_destination": "s3://bucket/mlflow",
        "s3_endpoint_url": "http://minio:9000", "aws_credentials_file": str(creds),
    })
    svc = spec["services"]["mlflow"]
    assert svc["command"][svc["command"].index("--backend-store-uri") + 1] == "postgresql://u@db/mlflow"
    assert svc["command"][svc["command"].index("--artifacts-destination") + 1] == "s3://bucket/mlflow"
    assert svc["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert svc["environment"]["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/aws_credentials"
    assert [x["target"] for x in svc["secrets"]] == ["mlflow_webhook_key", "aws_credentials"]
    # the webhook key reaches MLflow as a secret file, never as a value in the service's spec
    assert not any("ENCRYPTION_KEY" in k for k in svc["environment"])


def test_the_controller_shares_the_deployments_folder_and_drives_the_engine(tmp_path, monkeypatch):
    s, spec = rendered(tmp_path, monkeypatch)
    svc = spec["services"]["controller"]
    assert f"{tmp_path}/deployments:/var/lib/datalab/deployments" in svc["volumes"]
    assert svc["user"].startswith("1000:") and svc["cap_drop"] == ["ALL"] and svc["networks"] == ["backend"]
    # the store's password, for the one-shot export of production's labelled window; the controller
    # itself stays off the features network
    # and the image registry's, to publish the model images it bakes
    assert [x["target"] for x in svc["secrets"]] == ["webhook_secret", "featurestore_password",
                                                     "image_registry_password"]
    assert svc["environment"][endpoints.IMAGE_REGISTRY_PASSWORD_VARIABLE] == "/run/secrets/image_registry_password"
    inside = json.loads((tmp_path / "controller.json").read_text())
    assert inside["lab"]["data_dir"] == "/var/lib/datalab" and inside["lab"]["name"] == "lab1"


def test_the_image_registry_serves_tls_from_the_lab_ca_with_one_account_on_a_volume_of_the_home_node(
        tmp_path, monkeypatch):
    s, spec = rendered(tmp_path, monkeypatch, lab={"data_dir": str(tmp_path), "name": "lab1",
                                                   "advertise_addr": "10.0.0.11"})
    svc = spec["services"]["image-registry"]
    secrets = {x["target"]: x for x in svc["secrets"]}
    assert set(secrets) == {"registry_password", "registry_tls_crt", "registry_tls_key"}
    assert all(x["uid"] == endpoints.IMAGE_REGISTRY_UID for x in secrets.values())
    assert secrets["registry_password"]["mode"] == 0o400 and secrets["registry_tls_key"]["mode"] == 0o400
    assert svc["volumes"] == ["image-registry-data:/var/lib/docker-registry"]
    assert svc["networks"] == ["image-registry"] and svc["cap_drop"] == ["ALL"]
    assert svc["deploy"]["placement"] == spec["services"]["hub"]["deploy"]["placement"]
    assert svc["deploy"]["update_config"] == {"order": "stop-first"}  # a host-mode port
    # the certificate names the address the nodes pull from, and is the lab CA's
    from cryptography import x509

    crt = x509.load_pem_x509_certificate((tmp_path / "secrets" / "image-registry-tls.crt").read_bytes())
    names = {str(n.value) for n in crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
    assert names == {"10.0.0.11", "localhost", "127.0.0.1"}
    ca = x509.load_pem_x509_certificate((tmp_path / "secrets" / "ca.crt").read_bytes())
    assert crt.issuer == ca.subject
    # the stack names the account's password by content, never its value
    assert (tmp_path / "secrets" / "image_registry_password").read_text() not in json.dumps(spec)


def test_profiles_follow_the_manifest_and_say_what_is_not_built():
    by_name = {p["name"]: p for p in PROFILES}
    assert list(by_name) == list(manifest.load())
    assert by_name["tensorflow"]["image"] == "datalab/tensorflow:abc"
    assert by_name["tensorflow-gpu"]["image"] is None  # on request only
    assert by_name["tensorflow-gpu"]["gpus"] == 1 and by_name["tensorflow-gpu"]["groups"] == ["gpu-users"]


def test_platform_services_stay_on_the_home_node_and_scoring_goes_where_settings_say(tmp_path, monkeypatch):
    home = f"node.hostname == {socket.gethostname()}"
    _, spec = rendered(tmp_path, monkeypatch)
    for name, svc in spec["services"].items():
        assert svc["deploy"]["placement"]["constraints"] == [home], name
    _, spread = rendered(tmp_path, monkeypatch, scoring={"nodes": "all"})
    assert "placement" not in spread["services"]["scoring"]["deploy"]
    assert spread["services"]["scoring-edge"]["deploy"]["placement"]["constraints"] == [home]


def test_the_proxy_gets_its_token_as_a_secret_and_the_hub_drives_it_from_outside(tmp_path, monkeypatch):
    s, spec = rendered(tmp_path, monkeypatch)
    proxy = spec["services"]["proxy"]
    assert [x["target"] for x in proxy["secrets"]] == ["proxy_token"]
    assert "environment" not in proxy  # the token is read from the secret inside the container
    assert proxy["deploy"]["update_config"]["order"] == "stop-first"  # host-mode port
    runtime = json.loads((tmp_path / "hub.json").read_text())
    assert runtime["hub"]["proxy_api_url"] == "http://proxy:8001"
    assert runtime["hub"]["concurrent_spawn_limit"] == s["hub"]["concurrent_spawn_limit"]
    # what notebook and job containers call: the services in the hub's container (the proxy
    # routes by host name with per-user origins, which the lab network's DNS does not know)
    assert runtime["registry"]["url"] == "http://hub:8091/services/registry"
    assert runtime["jobs"]["url"] == "http://hub:8090/services/jobs/"
    assert "--host-routing" in proxy["command"] and runtime["hub"]["per_user_origins"] is True
    assert runtime["hub"]["public_url"] == "http://lab.localhost:8000"
    _, one_origin = rendered(tmp_path, monkeypatch, hub={"per_user_origins": False})
    assert "--host-routing" not in one_origin["services"]["proxy"]["command"]


def test_every_platform_service_has_a_memory_limit_and_reservation(tmp_path, monkeypatch):
    _, spec = rendered(tmp_path, monkeypatch, resources={"mlflow": {"memory": "8G"}})
    for name, svc in spec["services"].items():
        resources = svc["deploy"]["resources"]
        assert resources["limits"]["memory"] and resources["reservations"]["memory"], name
    assert spec["services"]["mlflow"]["deploy"]["resources"] == {"limits": {"memory": "8G"},
                                                                  "reservations": {"memory": "1G"}}


def test_the_hubs_directory_reader_reaches_the_hub_and_the_directory_only(tmp_path, monkeypatch):
    _, spec = rendered(tmp_path, monkeypatch)
    holders = {name for name, svc in spec["services"].items()
               if "ldap_search_password" in [x["target"] for x in svc.get("secrets", [])]}
    assert holders == {"hub", "directory"}  # the directory sets the account's password at start
    ldap = json.loads((tmp_path / "hub.json").read_text())["ldap"]
    assert ldap["search_bind_dn"] == "cn=hub-reader,dc=datalab,dc=example"
    assert ldap["search_password_file"] == "/run/secrets/ldap_search_password"


def test_a_corporate_directory_names_its_reader_or_is_warned(tmp_path, monkeypatch):
    import pytest

    corporate = {"builtin": False, "url": "ldaps://ldap.corp.example", "tls_strategy": "on_connect"}
    secret = tmp_path / "reader-password"
    secret.write_text("pw")
    s, spec = rendered(tmp_path, monkeypatch, directory={
        **corporate, "search_bind_dn": "cn=datalab,ou=Services,dc=corp", "search_password_file": str(secret)})
    assert "ldap_search_password" in [x["target"] for x in spec["services"]["hub"]["secrets"]]
    assert hubsettings.hub_runtime(s, PROFILES, has_ca=False)["ldap"]["search_bind_dn"] == "cn=datalab,ou=Services,dc=corp"
    assert not any("search_bind_dn" in w for w in hubsettings.insecure_choices(s))
    s, spec = rendered(tmp_path, monkeypatch, directory=corporate)
    assert hubsettings.hub_runtime(s, PROFILES, has_ca=False)["ldap"]["search_bind_dn"] == ""
    assert any("search_bind_dn is empty" in w for w in hubsettings.insecure_choices(s))
    half = s.with_overrides({"directory": {"search_bind_dn": "cn=datalab,ou=Services,dc=corp"}})
    with pytest.raises(settings_mod.SettingsError, match="go together"):
        hubsettings.refuse_unsafe(half)


def test_the_feature_store_is_reached_by_scoring_only_and_keeps_its_state(tmp_path, monkeypatch):
    _, spec = rendered(tmp_path, monkeypatch)
    services = spec["services"]
    on_features = sorted(name for name, svc in services.items() if "features" in svc["networks"])
    assert on_features == ["featurestore", "scoring"]  # never the lab network notebooks and jobs are on
    store = services["featurestore"]
    assert store["networks"] == ["features"] and "ports" not in store
    assert store["volumes"] == ["featurestore-data:/data"] and "featurestore-data" in spec["volumes"]
    assert store["environment"] == {"FEATURESTORE_MAXMEMORY": "640mb"}  # noeviction: images/featurestore
    assert store["deploy"]["resources"]["limits"]["memory"] == "1G"
    assert [s["target"] for s in store["secrets"]] == ["featurestore_password"]
    assert sorted(s["target"] for s in services["scoring"]["secrets"]) == ["featurestore_password", "feedback_token"]
    assert not any("password" in str(v).lower() for v in services["scoring"]["environment"].values())


def test_private_networks_opened_to_servers_reach_the_hub(tmp_path, monkeypatch):
    rendered(tmp_path, monkeypatch, spawner={"private_networks": ["10.20.0.0/16"]})
    spawner = json.loads((tmp_path / "hub.json").read_text())["spawner"]
    assert spawner["private_networks"] == ["10.20.0.0/16"]
    # this host's own addresses, closed to servers and jobs with the Swarm nodes'
    assert spawner["host_addresses"] == hubsettings.host_addresses() and spawner["host_addresses"]
    assert not any(a.startswith("127.") for a in spawner["host_addresses"])


def test_profiles_are_settings_naming_manifest_images():
    import pytest

    site = settings_mod.defaults().with_overrides({"profiles": [
        {"name": "fraud-analytics", "description": "TF, 8 GB", "image": "tensorflow", "cpu": 2.0, "memory": "8G",
         "groups": ["GRP-Fraud-Analytics"], "environment": {"FRAUD_DESK": "analytics"}},
        {"name": "tensorflow-gpu", "groups": []}]})
    found = {p["name"]: p for p in hubsettings.profiles(site, manifest.load(), REFS)}
    assert list(found) == ["python", "datascience", "tensorflow", "tensorflow-gpu", "fraud-analytics"]
    analytics = found["fraud-analytics"]
    assert (analytics["image"], analytics["image_name"], analytics["kernel"]) == (
        REFS["tensorflow"], "tensorflow", "tensorflow-2.21-cpu")
    assert analytics["memory"] == "8G" and analytics["environment"] == {"FRAUD_DESK": "analytics"}
    assert found["tensorflow-gpu"]["groups"] == [] and found["tensorflow-gpu"]["memory"] == "16G"  # the rest kept
    wrong = site.with_overrides({"profiles": [{"name": "fraud-analytics", "image": "pytorch"}]})
    with pytest.raises(settings_mod.SettingsError, match=r'\[\[profiles\]\] "fraud-analytics" image: must be one of'):
        hubsettings.profiles(wrong, manifest.load(), REFS)


def test_with_https_the_proxy_terminates_tls_and_redirects_plain_http(tmp_path, monkeypatch):
    s, spec = rendered(tmp_path, monkeypatch, hub={"https": True, "port": 8443, "http_redirect_port": 8081})
    proxy = spec["services"]["proxy"]
    command = proxy["command"]
    assert command[command.index("--ssl-cert") + 1] == "/run/secrets/hub_tls_crt"
    assert command[command.index("--ssl-key") + 1] == "/run/secrets/hub_tls_key"
    # plain HTTP on its own port, sent on to the public HTTPS port
    assert command[command.index("--redirect-to") + 1] == "8443"
    assert proxy["ports"] == [
        {"target": endpoints.PROXY_PORT, "published": 8443, "protocol": "tcp", "mode": "host"},
        {"target": endpoints.PROXY_REDIRECT_PORT, "published": 8081, "protocol": "tcp", "mode": "host"}]
    assert command[command.index("--redirect-port") + 1] == str(endpoints.PROXY_REDIRECT_PORT)
    assert {x["target"] for x in proxy["secrets"]} == {"proxy_token", "hub_tls_crt", "hub_tls_key"}
    key = next(x for x in proxy["secrets"] if x["target"] == "hub_tls_key")
    assert key["mode"] == 0o400  # the key: the proxy's user alone
    assert "https://" in proxy["healthcheck"]["test"][-1]
    assert s.hub_url == "https://lab.localhost:8443/"
    assert s.service_url("registry") == "https://registry--service.lab.localhost:8443/services/registry/"
    hub_json = json.loads((tmp_path / "hub.json").read_text())
    assert hub_json["hub"]["public_url"] == "https://lab.localhost:8443"  # JupyterHub's subdomain_host
    # no redirect port: HTTPS alone
    _, spec = rendered(tmp_path, monkeypatch, hub={"https": True, "http_redirect_port": 0})
    assert "--redirect-port" not in spec["services"]["proxy"]["command"]
    assert len(spec["services"]["proxy"]["ports"]) == 1


def test_with_scoring_https_the_edge_serves_tls_only_with_the_certificate_as_its_own_secret(tmp_path, monkeypatch):
    s, spec = rendered(tmp_path, monkeypatch, scoring={"https": True})
    edge = spec["services"]["scoring-edge"]
    (secret,) = edge["secrets"]
    assert secret["target"] == "scoring_edge_pem" and secret["uid"] == endpoints.EDGE_UID and secret["mode"] == 0o400
    assert edge["environment"] == {"EDGE_TLS_PEM": "/run/secrets/scoring_edge_pem"}  # haproxy.cfg's TLS bind
    assert s.scoring_url == f"https://127.0.0.1:{s['scoring']['port']}"  # a name the lab CA's certificate has
    _, plain = rendered(tmp_path, monkeypatch)
    assert "secrets" not in plain["services"]["scoring-edge"] and "environment" not in plain["services"]["scoring-edge"]
    config = (credentials.REPO / "images" / "edge" / "haproxy.cfg").read_text()
    assert '.if defined(EDGE_TLS_PEM)\n    bind :8500 ssl crt "${EDGE_TLS_PEM}"' in config
