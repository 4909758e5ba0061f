# JupyterHub configuration for DataLab, loaded inside the hub container.
# Everything site-specific comes from the runtime settings `datalab up`
# renders from the lab's settings file (mounted as /etc/datalab/hub.json);
# the mapping onto JupyterHub's traits lives in hub/datalab_hub/config.py.
import json
import os

from datalab_hub.config import configure

with open(os.environ.get("DATALAB_HUB_SETTINGS", "/etc/datalab/hub.json")) as f:
    configure(c, json.load(f))  # noqa: F821 (c is JupyterHub's config object)
