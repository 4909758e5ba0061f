"""The jobs service: a JupyterHub-managed service that queues, runs, watches
and schedules notebook jobs (queue.py) behind a REST API (api.py). This module
wires them to the hub's runtime settings, the Docker engine and the hub."""

import asyncio
import logging
import os

import docker
from jupyterhub.services.auth import HubAuth
from tornado import ioloop

from datalab_client import logs
from datalab_hub import netpolicy
from datalab_hub.config import runtime_settings, service_port
from datalab_hub.identity import HubUsers
from datalab_hub.volumes import volume_mounts

from .api import app
from .queue import Jobs
from .runner import Runner
from .store import Store

log = logging.getLogger("datalab.jobs")


def main():
    logs.configure()
    settings = runtime_settings()
    spawn = settings["spawner"]
    store = Store(settings["jobs"]["data_dir"])

    def volumes(user, groups, admin):
        return volume_mounts(spawn, user, groups, admin)

    engine = docker.from_env()
    subnet = netpolicy.lab_subnet(engine.api, spawn["network"])

    def isolate(container_id):  # as notebook servers: the hub and its services, no other user
        netpolicy.apply(engine.api, container_id, spawn["netpolicy_image"], subnet, spawn["hub_ports"],
                        internet=spawn["internet"],
                        private_allowed=spawn["private_networks"], host_addresses=spawn["host_addresses"])

    runner = Runner(spawn["prefix"], [spawn["network"]] + settings["jobs"]["extra_networks"], volumes,
                    settings["jobs"]["environment"], pids_limit=int(spawn["pids_limit"]),
                    max_log_mb=settings["jobs"]["max_log_mb"], max_output_mb=settings["jobs"]["max_output_mb"],
                    isolate=isolate, client=engine)
    hub_auth = HubAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60)
    jobs = Jobs(settings, store, runner, HubUsers(hub_auth.api_url, hub_auth.api_token))
    jobs.recover()

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/jobs/")
    app(jobs, hub_auth, settings["jobs"]["admin_services"], prefix).listen(
        service_port(), "0.0.0.0")

    busy = asyncio.Lock()

    async def tick():
        if busy.locked():
            return
        async with busy:
            try:
                await asyncio.to_thread(jobs.tick)
            except Exception:
                log.exception("jobs loop")

    ioloop.PeriodicCallback(tick, 500).start()
    log.info("jobs service listening on %s", prefix)
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
