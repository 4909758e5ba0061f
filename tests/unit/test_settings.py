import pytest

from datalab import settings as settings_mod
from datalab.settings import SettingsError


def write(tmp_path, text):
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_defaults_alone(monkeypatch):
    monkeypatch.delenv("DATALAB_SETTINGS", raising=False)
    s = settings_mod.load(settings_mod.DEFAULTS_FILE)
    assert s["hub"]["port"] == 8000
    assert s.hub_url == "http://lab.localhost:8000/"
    assert s["directory"]["builtin"] is True


def test_file_is_merged_over_defaults_table_by_table(tmp_path):
    s = settings_mod.load(write(tmp_path, '[hub]\nport = 9000\n[lab]\nname = "x"\n'))
    assert s["hub"]["port"] == 9000
    assert s["hub"]["allowed_groups"] == ("datascientists", "lab-admins")  # kept
    assert s.lab == "x" and s.source.name == "settings.toml"


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(SettingsError, match="hub.prot"):
        settings_mod.load(write(tmp_path, "[hub]\nprot = 1\n"))


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

    s = settings_mod.load(settings_mod.DEFAULTS_FILE)
    for name in ("jobs", "registry"):
        host = subdomain_hook_idna(name, s["hub"]["public_host"], "service")
        assert s.service_url(name) == f"http://{host}:8000/services/{name}/"
    one_origin = s.with_overrides({"hub": {"per_user_origins": False}})
    assert one_origin.service_url("jobs") == "http://lab.localhost:8000/services/jobs/"
