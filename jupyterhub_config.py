# JupyterHub configuration for DataLab, loaded inside the hub container.
# Everything site-specific comes from the runtime settings `datalab up`
# renders from the lab's settings file (the stack mounts it and names it in
# DATALAB_HUB_SETTINGS); the mapping onto JupyterHub's traits lives in
# hub/datalab_hub/config.py.
from datalab_hub.config import configure, runtime_settings

configure(c, runtime_settings())  # noqa: F821 (c is JupyterHub's config object)
