"""Jupyter server extension: a kernel busy with a long, silent computation is
activity.

The hub's idle culler (jupyterhub-idle-culler) reads activity from the hub
alone and never calls a user's server, so that no platform credential reaches
user-controlled code. The hub hears of a server's activity from
jupyterhub-singleuser, which reports `last_activity()` every
JUPYTERHUB_ACTIVITY_INTERVAL seconds; that counts kernel messages, but a cell
training for an hour without printing sends none. This extension marks
"activity now" while any kernel is busy, through jupyter_server's hook (every
setting named `*_last_activity` counts), twice per reporting interval.
"""

import os
from datetime import datetime, timezone

from tornado.ioloop import PeriodicCallback

SETTING = "datalab_busy_kernels_last_activity"


def _jupyter_server_extension_points():
    return [{"module": "datalab_activity"}]


def _load_jupyter_server_extension(serverapp):
    kernels = serverapp.kernel_manager
    settings = serverapp.web_app.settings

    def mark_busy_kernels():
        if any(getattr(kernels.get_kernel(kid), "execution_state", None) == "busy"
               for kid in kernels.list_kernel_ids()):
            settings[SETTING] = datetime.now(timezone.utc)

    report_every = int(os.environ.get("JUPYTERHUB_ACTIVITY_INTERVAL") or 300)
    PeriodicCallback(mark_busy_kernels, 1000 * max(1, report_every // 2)).start()
