"""The registry gateway's route table (model_registry/datalab_registry/routes.py)
against MLflow's own: the routes the MLflow server of the lab's image
registers, read from its Flask app and the FastAPI app that wraps it (what
`mlflow server` runs under uvicorn). Every one must be classified, and the
table must name no route MLflow does not have: an upgrade of MLflow that adds
a route fails here until the route is classified (until then, the gateway
refuses it).

It needs the MLflow image the lab runs, not the lab's services: it takes the
`lab` fixture because that is what builds the images (`datalab up`), and it
fails rather than skips when there is no image."""

import json
import re

import pytest

from datalab import images
from datalab_registry import routes

pytestmark = pytest.mark.integration

# Runs in the MLflow image, network-less: MLflow's route table as JSON.
LIST_ROUTES = """
import json
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app

found, mounts = [], []

def walk(table, prefix=""):
    for route in table:
        included = getattr(route, "include_context", None)  # FastAPI's lazily included routers
        if included is not None:
            walk(included.included_router.routes, prefix + included.prefix)
        elif type(route).__name__ == "Mount":
            mounts.append([prefix + route.path, getattr(route.app, "app", None) is flask_app])
        elif getattr(route, "methods", None):  # (a websocket route has none: the gateway passes no websocket)
            found.extend([m, prefix + route.path] for m in route.methods)

walk(app.routes)
found.extend([m, rule.rule] for rule in flask_app.url_map.iter_rules() for m in rule.methods)
print(json.dumps({"routes": found, "mounts": mounts}))
"""


def flask_spelling(path):
    """FastAPI's {name} and {name:path} as Flask's <name> and <path:name>, the table's spelling."""
    return re.sub(r"\{(\w+)\}", r"<\1>", re.sub(r"\{(\w+):path\}", r"<path:\1>", path))


@pytest.fixture(scope="module")
def mlflow_routes(lab):
    ref = images.current_ref(lab.docker, "mlflow")
    assert ref, "no datalab/mlflow image: `datalab up` (or `datalab images build mlflow`) builds it"
    out = lab.docker.out("run", "--rm", "--network", "none", "--entrypoint", "python3", ref, "-c", LIST_ROUTES,
                         timeout=300)
    found = json.loads(out.splitlines()[-1])
    # HEAD and OPTIONS come with every rule: the gateway answers HEAD as GET and refuses OPTIONS
    return {(m, flask_spelling(p)) for m, p in found["routes"] if m not in ("HEAD", "OPTIONS")}, found["mounts"]


def test_every_route_of_mlflow_is_classified_and_the_table_names_no_other(mlflow_routes):
    served, _ = mlflow_routes
    unclassified = sorted(served - set(routes.ROUTES))
    assert not unclassified, ("MLflow routes the gateway refuses until they are classified in "
                              f"model_registry/datalab_registry/routes.py: {unclassified}")
    stale = sorted(set(routes.ROUTES) - served)
    assert not stale, f"routes.py classifies routes this MLflow does not have: {stale}"


def test_nothing_is_served_beside_the_routes_read_here(mlflow_routes):
    # a sub-application mounted elsewhere would hide its routes from this test
    _, mounts = mlflow_routes
    assert mounts == [["", True]], f"MLflow's ASGI app mounts more than its Flask app at the root: {mounts}"
