import pytest

from datalab import settings as settings_mod
from datalab.settings import SettingsError


def write(tmp_path, text):
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_defaults_alone(monkeypatch):
    monkeypatch.delenv("DATALAB_SETTINGS", raising=False)
    monkeypatch.setattr(settings_mod, "SITE_FILE", settings_mod.Path("/nonexistent/settings.toml"))
    s = settings_mod.load()
    assert s["hub"]["port"] == 8000
    assert s.hub_url == "http://lab.localhost:8000/"
    assert s["directory"]["builtin"] is True


def test_file_is_merged_over_defaults_table_by_table(tmp_path):
    s = settings_mod.load(write(tmp_path, '[hub]\nport = 9000\n[lab]\nname = "x"\n'))
    assert s["hub"]["port"] == 9000
    assert s["hub"]["allowed_groups"] == ("datascientists", "lab-admins")  # kept
    assert s.lab == "x" and s.source.name == "settings.toml"


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "[hub]\nprot = 1\n")
    with pytest.raises(SettingsError) as e:
        settings_mod.load(path)
    assert str(e.value) == f"{path}: [hub] prot: no such setting (docs/settings.md lists them all)"
    with pytest.raises(SettingsError, match=r"\[hubb\]: no such setting"):
        settings_mod.load(write(tmp_path, "[hubb]\nport = 1\n"))


@pytest.mark.parametrize("text, message", [
    # a security setting that failed open: anything but "none" read as "read"
    ('[registry]\nothers = "None"', '[registry] others: must be one of "read", "none" (got "None")'),
    ('[directory]\ntls_strategy = "starttls"',
     '[directory] tls_strategy: must be one of "before_bind", "on_connect", "insecure" (got "starttls")'),
    ('[spawner]\ninternet = "false"', '[spawner] internet: input should be a valid boolean (got "false")'),
    ('[hub]\nport = "8000"', '[hub] port: input should be a valid integer (got "8000")'),
    ('[hub]\nport = 70000', "[hub] port: input should be less than or equal to 65535 (got 70000)"),
    ('[gate]\nmin_recall = 1.5', "[gate] min_recall: input should be less than or equal to 1 (got 1.5)"),
    ('[spawner]\nprivate_networks = ["mirror.corp"]',
     "[spawner] private_networks: 'mirror.corp' is not an IPv4 address range such as \"10.20.0.0/16\""),
    ('[spawner]\nprivate_networks = ["fd00::/8"]',
     "[spawner] private_networks: 'fd00::/8' is not an IPv4 address range such as \"10.20.0.0/16\""),
    # with internet = false, this would have opened the whole internet
    ('[spawner]\nprivate_networks = ["0.0.0.0/0"]',
     "[spawner] private_networks: '0.0.0.0/0' is not within private address space (10.0.0.0/8, 172.16.0.0/12, "
     "192.168.0.0/16, 169.254.0.0/16, 100.64.0.0/10)"),
    ('[spawner]\nprivate_networks = "10.0.0.0/8"',
     '[spawner] private_networks: input should be a valid list (got "10.0.0.0/8")'),
    ('[resources]\nhub = { memory = "lots" }',
     """[resources] hub.memory: string should match pattern '^[0-9]+(\\.[0-9]+)?[KMG]$' (got "lots")"""),
    ('[lab]\nname = "Data Lab"', """[lab] name: string should match pattern '^[a-z][a-z0-9-]{0,30}$' (got "Data Lab")"""),
])
def test_a_wrong_value_is_one_line_naming_file_table_key_what_is_allowed_and_what_was_given(tmp_path, text,
                                                                                              message):
    path = write(tmp_path, text + "\n")
    with pytest.raises(SettingsError) as e:
        settings_mod.load(path)
    assert str(e.value) == f"{path}: {message}"


def test_several_errors_are_all_named_on_the_line(tmp_path):
    with pytest.raises(SettingsError, match=r"\[hub\] port: .*; \[hub\] prot: no such setting"):
        settings_mod.load(write(tmp_path, '[hub]\nport = "x"\nprot = 1\n'))


def test_where_each_value_came_from(tmp_path):
    s = settings_mod.load(write(tmp_path, '[resources]\nhub = { memory = "3G" }\n[hub]\nport = 9000\n'))
    assert s["resources"]["hub"] == {"memory": "3G", "reserve": "512M"}  # the rest of a table kept
    assert (s.origin("hub", "port"), s.origin("hub", "public_host"), s.origin("resources", "hub")) == (
        "file", "default", "file")
    assert s.with_overrides({"hub": {"public_host": "lab.bank.example"}}).origin("hub", "public_host") == "file"


def test_overrides_are_validated_too():
    with pytest.raises(SettingsError, match=r"\[registry\] others: must be one of"):
        settings_mod.defaults().with_overrides({"registry": {"others": "all"}})


def test_the_settings_reference_is_generated_from_the_model_and_current():
    from datalab import schema

    reference = (settings_mod.Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    assert reference == schema.reference(), "docs/settings.md is stale: datalab settings docs > docs/settings.md"
    for table, field in schema.Schema.model_fields.items():
        model = schema.Profile if table == "profiles" else field.annotation
        for name, sub in model.model_fields.items():
            assert sub.description, f"[{table}] {name} has no help"
            assert f"| `{sub.alias or name}` |" in reference


def test_malformed_file_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path, "[hub\n")
    with pytest.raises(SettingsError, match=str(path)):
        settings_mod.load(path)


def test_settings_are_read_only(tmp_path):
    s = settings_mod.load(write(tmp_path, ""))
    with pytest.raises(TypeError):
        s["hub"]["port"] = 1
    variant = s.with_overrides({"hub": {"port": 1}})
    assert variant["hub"]["port"] == 1 and s["hub"]["port"] == 8000


def test_env_var_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DATALAB_SETTINGS", str(write(tmp_path, "[hub]\nport = 7\n")))
    assert settings_mod.load()["hub"]["port"] == 7


def test_service_urls_follow_jupyterhubs_own_subdomain_scheme():
    from jupyterhub.utils import subdomain_hook_idna

    s = settings_mod.defaults()
    for name in ("jobs", "registry"):
        host = subdomain_hook_idna(name, s["hub"]["public_host"], "service")
        assert s.service_url(name) == f"http://{host}:8000/services/{name}/"
    one_origin = s.with_overrides({"hub": {"per_user_origins": False}})
    assert one_origin.service_url("jobs") == "http://lab.localhost:8000/services/jobs/"


def test_the_example_multi_node_sites_settings_are_valid(tmp_path):
    """What ansible/ renders into /etc/datalab/settings.toml for the example site."""
    import yaml

    from datalab import schema

    inventory = settings_mod.Path(__file__).resolve().parents[2] / "ansible/inventories/example/group_vars/all.yml"
    site = yaml.safe_load(inventory.read_text())["datalab_settings"]
    merged = settings_mod._merge(schema.defaults(), {**site, "build": {"source": "present"}})
    assert schema.validate(merged)["directory"]["tls_strategy"] == "on_connect"


def test_the_readmes_corporate_directory_example_is_valid_and_gives_its_group_profiles(tmp_path):
    readme = (settings_mod.Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("### Using your corporate directory")[1].split("```toml")[1].split("```")[0]
    site = settings_mod.load(write(tmp_path, example))
    mine = [p["name"] for p in site["profiles"] if "fraud-analytics" in p["groups"]]
    assert mine == ["python", "fraud-tensorflow"]


def test_the_private_ranges_are_the_network_policys():
    from datalab import schema
    from datalab_hub import netpolicy

    assert schema.PRIVATE_NETWORKS == netpolicy.PRIVATE_NETWORKS
