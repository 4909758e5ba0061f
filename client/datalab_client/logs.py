"""One log format and one log level for DataLab's services (the jobs service,
the registry gateway, group sync, the controller, scoring), as JupyterHub
writes its own: `[I 2026-11-22 13:23:34.213 datalab.jobs] message`.

The level is the lab's `[lab] log_level` setting, which the stack hands every
service as DATALAB_LOG_LEVEL (the hub's own log follows it too)."""

import logging
import os

FORMAT = "[%(levelname)1.1s %(asctime)s.%(msecs)03d %(name)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LEVEL_VARIABLE = "DATALAB_LOG_LEVEL"


def level(env=os.environ):
    return (env.get(LEVEL_VARIABLE) or "INFO").upper()


def configure(env=os.environ):
    logging.basicConfig(level=level(env), format=FORMAT, datefmt=DATE_FORMAT, force=True)
