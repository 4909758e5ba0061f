"""Settings: every setting's default (schema.py, the one model of them)
merged with the operator's file, table by table, and validated against that
model: an unknown key, a wrong type or a value outside what is allowed is a
SettingsError naming the file, table, key, what is allowed and what was given.

Settings are read once and never mutated; code that needs a variant builds a
new one with `Settings.with_overrides` (validated too).
"""

import json
import os
import tomllib
from pathlib import Path
from types import MappingProxyType

from pydantic import ValidationError

from . import schema

SITE_FILE = Path("/etc/datalab/settings.toml")


def _merge(base, override):
    """`override` over `base`, table by table (a table in `base` with no keys is a
    free-form map: replaced whole); profiles by name. What is not a setting is
    kept, for the schema to name."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(base.get(key), dict) and base[key] and isinstance(value, dict):
            merged[key] = _merge(base[key], value)
        elif key == "profiles" and isinstance(base.get(key), list) and isinstance(value, list):
            merged[key] = _merge_by_name(base[key], value)
        else:
            merged[key] = value
    return merged


def _merge_by_name(base, override):
    """[[profiles]]: an entry naming one of `base` changes the keys it gives; a new name is added."""
    merged = [dict(entry) for entry in base]
    for entry in override:
        same = next((i for i, known in enumerate(merged)
                     if isinstance(entry, dict) and known.get("name") == entry.get("name")), None)
        if same is None:
            merged.append(entry)
        else:
            merged[same] = {**merged[same], **entry}
    return merged


def _freeze(value):
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _validated(data, source):
    try:
        return schema.validate(data)
    except ValidationError as e:
        errors = e.errors()
        shown = "; ".join(schema.explain(error, data) for error in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise SettingsError(f"{source or 'settings'}: {shown}{more}") from None


class SettingsError(ValueError):
    pass


class Settings:
    """Read-only view: settings["hub"]["port"]."""

    def __init__(self, data, source=None, given=None):
        self._raw = data
        self._data = _freeze(data)
        self.source = source
        self.given = given or {}  # what the file set (the rest are defaults)

    def __getitem__(self, table):
        return self._data[table]

    def table(self, name=None):
        """A plain (mutable, JSON-ready) copy of one table, or of all settings."""
        return json.loads(json.dumps(self._raw if name is None else self._raw[name]))

    def with_overrides(self, overrides):
        return Settings(_validated(_merge(self._raw, overrides), self.source), self.source,
                        _merge(self.given, overrides))

    def origin(self, table, key):
        """"file" when the settings file set it, else "default" (for [[profiles]], `key`
        is a profile's name)."""
        given = self.given.get(table, {})
        if isinstance(given, list):
            return "file" if any(isinstance(p, dict) and p.get("name") == key for p in given) else "default"
        return "file" if key in given else "default"

    @property
    def lab(self):
        return self["lab"]["name"]

    @property
    def data_dir(self):
        return Path(self["lab"]["data_dir"])

    @property
    def hub_url(self):
        return f"{self.hub_scheme}://{self['hub']['public_host']}:{self['hub']['port']}/"

    @property
    def hub_scheme(self):
        return "https" if self["hub"]["https"] else "http"

    @property
    def scoring_url(self):
        """The scoring edge, as this machine calls it: its loopback, or over HTTPS
        with a site's certificate, the public host (the name that certificate has)."""
        if not self["scoring"]["https"]:
            return f"http://127.0.0.1:{self['scoring']['port']}"
        host = self["hub"]["public_host"] if self["hub"]["tls_cert_file"] else "127.0.0.1"
        return f"https://{host}:{self['scoring']['port']}"

    def service_url(self, name):
        """Where a hub service (jobs, registry) is reached from outside: its own origin
        under the public host (JupyterHub's "idna" subdomain scheme) with per-user origins."""
        if not self["hub"]["per_user_origins"]:
            return f"{self.hub_url}services/{name}/"
        return (f"{self.hub_scheme}://{name}--service.{self['hub']['public_host']}:{self['hub']['port']}"
                f"/services/{name}/")


def settings_file():
    env = os.environ.get("DATALAB_SETTINGS")
    if env:
        return Path(env)
    return SITE_FILE if SITE_FILE.exists() else None


def defaults():
    """Every setting at its default."""
    return Settings(schema.defaults())


def load(path=None):
    """Defaults, merged with `path` (or $DATALAB_SETTINGS, or /etc/datalab/settings.toml), validated."""
    path = Path(path) if path else settings_file()
    if path is None:
        return defaults()
    try:
        given = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"settings file {path}: {e}") from None
    return Settings(_validated(_merge(schema.defaults(), given), path), path, given)
