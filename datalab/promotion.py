"""Promotions from the host's shell: set the production alias through the
registry gateway as a given user (exactly what the MLflow UI does for them),
then follow the controller's decision in the audit log.
"""

import time

from datalab_client import http

from . import audit, credentials


class PromotionError(RuntimeError):
    pass


def _call(url, token, method, body=None, scheme="token"):
    try:
        return http.call(method, url, token, body, scheme=scheme) or {}
    except http.HTTPError as e:
        raise PromotionError(str(e)) from None


def user_token(settings, user, minutes=10):
    """A short-lived registry-only token of `user`, issued with the lab's CLI token."""
    found = _call(f"{settings.hub_url}hub/api/users/{user}/tokens", credentials.cli_token(settings), "POST", {
        "scopes": ["access:services!service=registry"], "expires_in": minutes * 60,
        "note": "datalab promote (CLI)"})
    return found["token"]


def registry_api(settings, token, method, endpoint, body=None):
    return _call(f"{settings.service_url('registry')}api/2.0/mlflow/{endpoint}", token, method, body,
                 scheme="Bearer")


def set_production_alias(settings, user, model, version):
    token = user_token(settings, user)
    registry_api(settings, token, "POST", "registered-models/alias",
                 {"name": model, "alias": settings["registry"]["production_alias"], "version": str(version)})


def wait_outcome(settings, model, version, seen, timeout=600):
    """The first audit record for model/version after the `seen` first ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in audit.records(settings)[seen:]:
            if record["model"] == model and record["version"] == str(version):
                return record
        time.sleep(1)
    raise PromotionError(f"no decision on {model} v{version} after {timeout} s (datalab logs controller)")
