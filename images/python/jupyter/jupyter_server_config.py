# The notebook server behind the hub's HTTPS front door ([hub] https): its _xsrf
# cookie Secure like the hub's (JupyterHub sets its login cookies Secure itself).
# JupyterHub hands every server its public URL; the path is what jupyter_server
# gives that cookie by default.
import os

if os.environ.get("JUPYTERHUB_PUBLIC_URL", "").startswith("https:"):
    c.ServerApp.tornado_settings = {  # noqa: F821 - `c`: the config jupyter_server loads this file into
        "xsrf_cookie_kwargs": {"path": os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/"), "secure": True}}
