"""Where the lab's services answer each other, defined once: the stack file,
the hub's runtime settings (hub.json, from which the hub, its services and the
network rules read them) and the deploy code import these.

Swarm networking here has no IPVS (docs/architecture.md): services reach each
other by name through Docker's DNS (endpoint_mode dnsrr)."""

from pathlib import Path
from urllib.parse import urlsplit

DOCKER_SOCKET = Path("/var/run/docker.sock")

# The hub's API on the lab network (notebook and job containers call it) and the
# proxy's default target.
HUB_API_URL = "http://hub:8081"
# The hub-managed services as notebook and job containers call them: in the hub's
# container on the lab network, each checking the caller's token with the hub (the
# proxy routes browsers by host name, which the lab network's DNS does not know).
JOBS_URL = "http://hub:8090/services/jobs/"
REGISTRY_URL = "http://hub:8091/services/registry"
# configurable-http-proxy, a service of its own so that a hub restart drops no
# route: its REST API, the hub's (behind the proxy token).
PROXY_API_URL = "http://proxy:8001"
PROXY_PORT = 8000  # the hub's front door, published as [hub] port
PROXY_REDIRECT_PORT = 8080  # with [hub] https: plain HTTP's redirect to it, published as [hub] http_redirect_port
MLFLOW_URL = "http://mlflow:5000"  # on the backend and tracking networks only
FEATURE_STORE_URL = "redis://featurestore:6379/0"  # on the features network only
SCORING_EDGE_PORT = 8500  # published as [scoring] port
IMAGE_REGISTRY_PORT = 5000  # images/image-registry/config.yml; published as [image_registry] port
# the file of the image registry's password, where it is a Swarm secret (the controller's): datalab/image_registry.py
IMAGE_REGISTRY_PASSWORD_VARIABLE = "DATALAB_IMAGE_REGISTRY_PASSWORD_FILE"
# The scoring tasks' decision threshold, in their environment (read by scoring/datalab_scoring/server.py):
# rendered by the stack, changed by a rollout
THRESHOLD_VARIABLE = "SCORING_THRESHOLD"
# Where the hub's container finds the runtime settings `datalab up` renders (its
# environment names the file to the hub and its services: DATALAB_HUB_SETTINGS).
HUB_SETTINGS_PATH = "/etc/datalab/hub.json"
CONTROLLER_SETTINGS_PATH = "/etc/datalab/controller.json"
CONTROLLER_DATA_DIR = "/var/lib/datalab"

HUB_UID = "1000"  # images/hub/Dockerfile
CONTROLLER_UID = "1000"  # images/controller/Dockerfile; it writes the deployments folder too
LDAP_UID = "1001"  # images/directory/Dockerfile
FEATURESTORE_UID = "1002"  # images/featurestore/Dockerfile
IMAGE_REGISTRY_UID = "100"  # images/image-registry/Dockerfile: Debian's docker-registry user (checked at build)
EDGE_UID = "100"  # images/edge/Dockerfile: Debian's haproxy package's system user (the build checks it)
# The notebook images' user (jovyan; datalab_hub.containers.NOTEBOOK_UID in the hub's
# image): the scoring image and the gate's sandboxes run as it too.
NOTEBOOK_UID = "1000"


def port(url):
    return urlsplit(url).port


def lab_network(settings):
    return f"{settings.lab}_lab"
