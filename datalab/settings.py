"""Settings: the documented defaults merged with the operator's file.

Settings are read once and never mutated; code that needs a variant builds a
new one with `Settings.with_overrides`.
"""

import json
import os
import tomllib
from pathlib import Path
from types import MappingProxyType

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
SITE_FILE = Path("/etc/datalab/settings.toml")


def _merge(base, override, path=""):
    merged = dict(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            raise SettingsError(f"unknown setting '{where}' (see datalab/defaults.toml)")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise SettingsError(f"setting '{where}' must be a table")
            # An empty table in the defaults is a free-form map (e.g. team -> group).
            merged[key] = _merge(base[key], value, where + ".") if base[key] else dict(value)
        else:
            merged[key] = value
    return merged


def _freeze(value):
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class SettingsError(ValueError):
    pass


class Settings:
    """Read-only view: settings["hub"]["port"] or settings.get("hub.port")."""

    def __init__(self, data, source=None):
        self._raw = data
        self._data = _freeze(data)
        self.source = source

    def __getitem__(self, table):
        return self._data[table]

    def get(self, dotted):
        value = self._data
        for part in dotted.split("."):
            value = value[part]
        return value

    def table(self, name=None):
        """A plain (mutable, JSON-ready) copy of one table, or of all settings."""
        return json.loads(json.dumps(self._raw if name is None else self._raw[name]))

    def with_overrides(self, overrides):
        return Settings(_merge(self._raw, overrides), self.source)

    @property
    def lab(self):
        return self["lab"]["name"]

    @property
    def data_dir(self):
        return Path(self["lab"]["data_dir"])

    @property
    def hub_url(self):
        return f"http://{self['hub']['public_host']}:{self['hub']['port']}/"

    def service_url(self, name):
        """Where a hub service (jobs, registry) is reached from outside: its own origin
        under the public host (JupyterHub's "idna" subdomain scheme) with per-user origins."""
        if not self["hub"]["per_user_origins"]:
            return f"{self.hub_url}services/{name}/"
        return f"http://{name}--service.{self['hub']['public_host']}:{self['hub']['port']}/services/{name}/"


def settings_file():
    env = os.environ.get("DATALAB_SETTINGS")
    if env:
        return Path(env)
    return SITE_FILE if SITE_FILE.exists() else None


def load(path=None):
    """Defaults, merged with `path` (or $DATALAB_SETTINGS, or /etc/datalab/settings.toml)."""
    defaults = tomllib.loads(DEFAULTS_FILE.read_text())
    path = Path(path) if path else settings_file()
    if path is None:
        return Settings(defaults)
    try:
        override = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"settings file {path}: {e}") from None
    return Settings(_merge(defaults, override), path)
