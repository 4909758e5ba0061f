"""The jobs service: a JupyterHub service (REST under /services/jobs/) that
queues, runs, watches and schedules notebook jobs.

Callers authenticate with a JupyterHub token (`Authorization: token ...`):
a user sees and cancels only their own jobs; hub admins and the lab's CLI
service see all, and may submit on behalf of a user (`as`).
"""

import asyncio
import json
import logging
import os
import re
import time
from pathlib import Path

from croniter import croniter
from jupyterhub.services.auth import HubAuth
from tornado import ioloop, web

from datalab_hub import profiles as profile_policy
from datalab_hub.identity import HubUsers
from datalab_hub.volumes import volume_mounts

from .params import ParameterError, check
from .runner import Runner, error_of
from .store import FINAL, Store

log = logging.getLogger("datalab.jobs")
ACCESS_SCOPES = {"access:services", "access:services!service=jobs"}
REGISTRY_SCOPE = "access:services!service=registry"


def number(body, key, kind, default):
    """body[key] as an int or float (default when absent), else a 400 naming it."""
    value = body.get(key)
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise web.HTTPError(400, f"{key} must be a number, got {value!r}") from None


class Jobs:
    """Queue, limits, watching and schedules; the HTTP handlers call into it."""

    def __init__(self, settings, store, runner, users):
        self.settings = settings["jobs"]
        self.profiles = settings["spawner"]["profiles"]
        self.store = store
        self.runner = runner
        self.users = users  # datalab_hub.identity.HubUsers

    def user_info(self, name):
        """{"name", "groups", "admin"} as the hub knows them now, or None."""
        return self.users.info(name)

    def registry_environment(self, job):
        """The MLflow client in the job runs as its user, through the registry gateway,
        with a token good for the registry only and for no longer than the job may run."""
        token = self.users.issue_token(job["user"], [REGISTRY_SCOPE], job["timeout_s"] + 600,
                                       f"job {job['id']}: MLflow as {job['user']}")
        return {"MLFLOW_TRACKING_TOKEN": token}

    # ---- submit ----
    def submit(self, user, groups, admin, body):
        notebook = body.get("notebook")
        if not isinstance(notebook, dict) or "cells" not in notebook:
            raise web.HTTPError(400, "`notebook` must be the notebook's JSON (an object with `cells`)")
        try:
            profile = profile_policy.require_built(
                profile_policy.choose(self.profiles, groups, body.get("profile") or self.default_profile(notebook, groups)))
        except profile_policy.ProfileError as e:
            raise web.HTTPError(e.status, e.message) from None
        if profile["gpus"] and not self.runner.has_gpu_runtime():
            raise web.HTTPError(503, f"Profile '{profile['name']}' needs GPUs, but this lab's Docker engine "
                                     "has no GPU runtime.")
        try:
            params = check(notebook, body.get("params") or {})
        except ParameterError as e:
            raise web.HTTPError(400, str(e)) from None
        timeout = number(body, "timeout", int, self.settings["default_timeout"])
        if not 0 < timeout <= self.settings["max_timeout"]:
            raise web.HTTPError(400, f"timeout must be between 1 and {self.settings['max_timeout']} seconds")
        retries = number(body, "retries", int, 0)
        if not 0 <= retries <= 5:
            raise web.HTTPError(400, "retries must be between 0 and 5")
        cpu = number(body, "cpu", float, profile["cpu"])
        if cpu <= 0 or cpu > self.settings["max_cpu"]:
            raise web.HTTPError(400, f"cpu must be > 0 and at most {self.settings['max_cpu']}")
        memory = str(body.get("memory") or profile["memory"])
        if not re.fullmatch(r"\d+(\.\d+)?[kKmMgG]?", memory):
            raise web.HTTPError(400, f"memory must look like 512M or 4G, got {memory!r}")
        common = dict(user=user, notebook=notebook, notebook_name=body.get("notebook_name") or "notebook.ipynb",
                      profile=profile, params=params, cpu=cpu, memory=memory, timeout_s=timeout, retries=retries)
        if body.get("schedule"):
            cron = body["schedule"]
            if not croniter.is_valid(cron):
                raise web.HTTPError(400, f"schedule {cron!r} is not a cron expression (e.g. '0 2 * * *')")
            common["profile"] = profile
            return "schedule", self.store.add_schedule(cron=cron, next_run_at=self.next_run(cron), **common)
        return "job", self.store.add_job(**common)

    def default_profile(self, notebook, groups):
        """The profile whose kernel the notebook was saved with, if the user may use it."""
        kernel = notebook.get("metadata", {}).get("kernelspec", {}).get("name")
        for p in profile_policy.allowed(self.profiles, groups):
            if p["kernel"] == kernel and p.get("image"):
                return p["name"]
        return None

    @staticmethod
    def next_run(cron, after=None):
        return croniter(cron, after or time.time()).get_next(float)

    # ---- the loop ----
    def tick(self):
        now = time.time()
        for schedule in self.store.schedules():
            if schedule["next_run_at"] <= now:
                self.fire(schedule, now)
        for job in self.store.jobs(status=("running",)):
            self.watch(job, now)
        self.start_queued()

    def fire(self, schedule, now):
        notebook = json.loads(self.store.schedule_notebook(schedule["id"]).read_text())
        profile = next((p for p in self.profiles if p["name"] == schedule["profile"]), None)
        self.store.update_schedule(schedule["id"], next_run_at=self.next_run(schedule["cron"], now))
        if not profile or not profile.get("image"):
            log.error("schedule %s: profile %s is gone; not fired", schedule["id"], schedule["profile"])
            return
        job = self.store.add_job(user=schedule["user"], notebook=notebook, notebook_name=schedule["notebook_name"],
                                 profile=profile, params=schedule["params"], cpu=schedule["cpu"],
                                 memory=schedule["memory"], timeout_s=schedule["timeout_s"],
                                 retries=schedule["retries"], schedule_id=schedule["id"])
        self.store.update_schedule(schedule["id"], last_job_id=job["id"])
        log.info("schedule %s fired job %s for %s", schedule["id"], job["id"], schedule["user"])

    def start_queued(self):
        running = self.store.jobs(status=("running",))
        per_user = {}
        for job in running:
            per_user[job["user"]] = per_user.get(job["user"], 0) + 1
        for job in self.store.jobs(status=("queued",)):
            if len(running) >= self.settings["max_running"]:
                return
            if per_user.get(job["user"], 0) >= self.settings["max_running_per_user"]:
                continue
            self.start(job)
            running.append(job)
            per_user[job["user"]] = per_user.get(job["user"], 0) + 1

    def start(self, job):
        who = self.user_info(job["user"]) or {"groups": [], "admin": False}
        notebook = json.loads((self.store.job_dir(job["id"]) / "input.ipynb").read_text())
        attempt = job["attempt"] + 1
        try:
            container_id = self.runner.start({**job, "attempt": attempt}, notebook, who["groups"], who["admin"],
                                             self.registry_environment(job))
        except Exception as e:  # a job that cannot start fails, with the reason; the queue goes on
            log.exception("job %s could not start", job["id"])
            self.store.update_job(job["id"], status="failed", exit_reason="could not start",
                                  error=str(e)[:2000], finished_at=time.time(), attempt=attempt)
            return
        self.store.update_job(job["id"], status="running", attempt=attempt, container_id=container_id,
                              started_at=job["started_at"] or time.time())
        log.info("job %s (%s) started, attempt %d", job["id"], job["user"], attempt)

    def watch(self, job, now):
        running, exit_code = self.runner.state(job["container_id"])
        if running:
            if now - job["started_at"] > job["timeout_s"]:
                self.runner.stop(job["container_id"], grace=1)
                self.finish(job, "timed out", f"stopped after its {job['timeout_s']} s timeout")
            elif job["cancel_requested"]:
                self.runner.stop(job["container_id"])
                self.finish(job, "cancelled", "cancelled by its owner or an admin")
            return
        if exit_code is None:
            self.store.update_job(job["id"], status="failed", exit_reason="container lost",
                                  error="the job's container disappeared", finished_at=now)
            return
        if job["cancel_requested"]:
            self.finish(job, "cancelled", "cancelled by its owner or an admin")
        elif exit_code == 0:
            self.finish(job, "succeeded", "all cells ran")
        else:
            self.finish(job, "failed", f"papermill exited with {exit_code}")

    def finish(self, job, status, reason):
        log_text, output = self.runner.collect(job["container_id"])
        run_dir = self.store.job_dir(job["id"])
        with open(run_dir / "log.txt", "a") as f:
            f.write(f"----- attempt {job['attempt']} -----\n{log_text}")
        error = None
        if output is not None:
            (run_dir / "output.ipynb").write_text(json.dumps(output))
            error = error_of(output)
        if status == "failed" and job["attempt"] <= job["retries"]:
            log.info("job %s failed (%s); retrying", job["id"], error or reason)
            self.store.update_job(job["id"], status="queued", container_id=None, error=error)
            return
        if status == "failed" and not error:
            error = log_text.strip().splitlines()[-1][:2000] if log_text.strip() else reason
        self.store.update_job(job["id"], status=status, exit_reason=reason, error=error,
                              finished_at=time.time())
        log.info("job %s %s: %s", job["id"], status, error or reason)

    def recover(self):
        """After a restart: running jobs whose containers are gone failed."""
        for job in self.store.jobs(status=("running",)):
            running, exit_code = self.runner.state(job["container_id"])
            if not running and exit_code is None:
                self.store.update_job(job["id"], status="failed", exit_reason="lost",
                                      error="the container was gone when the jobs service restarted",
                                      finished_at=time.time())


# ---------------------------------------------------------------- HTTP
class Handler(web.RequestHandler):
    @property
    def jobs(self):
        return self.settings["jobs"]

    async def prepare(self):
        token = self.request.headers.get("Authorization", "").removeprefix("token ").removeprefix("Bearer ").strip()
        model = await self.settings["hub_auth"].user_for_token(token, sync=False) if token else None
        if not model or not (ACCESS_SCOPES & set(model.get("scopes", []))):
            raise web.HTTPError(403, "a JupyterHub token with access to the jobs service is required")
        if model.get("kind") == "service":
            if model["name"] not in self.settings["admin_services"]:
                raise web.HTTPError(403, f"service {model['name']} may not use the jobs service")
            self.identity = {"name": None, "admin": True, "groups": []}
        else:
            # groups and admin as the hub knows them now (a user's token may not carry them)
            self.identity = await self.user_model(model["name"])

    async def user_model(self, name):
        found = await asyncio.to_thread(self.jobs.user_info, name)
        if found is None:
            raise web.HTTPError(400, f"no user {name!r} in the hub (a user exists once they have logged in)")
        return found

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.finish({"error": message, "status": status_code})

    def body(self):
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None

    def visible(self, record):
        if not record or not (self.identity["admin"] or record["user"] == self.identity["name"]):
            raise web.HTTPError(404, "no such job")
        return record

    def job(self, job_id):
        return self.visible(self.jobs.store.job(job_id))


class JobsHandler(Handler):
    def get(self):
        everyone = self.identity["admin"] and self.get_argument("all", "") == "1"
        user = None if everyone else (self.get_argument("user", None) if self.identity["admin"] else self.identity["name"])
        self.finish({"jobs": self.jobs.store.jobs(user=user)})

    async def post(self):
        body = self.body()
        user, groups, admin = self.identity["name"], self.identity["groups"], self.identity["admin"]
        if body.get("as") and body["as"] != user:
            if not self.identity["admin"]:
                raise web.HTTPError(403, "only admins may submit jobs as another user")
            model = await self.user_model(body["as"])
            user, groups, admin = model["name"], model["groups"], model["admin"]
        if not user:
            raise web.HTTPError(400, "say which user the job runs as (`as`)")
        kind, record = self.jobs.submit(user, groups, admin, body)
        self.set_status(201)
        self.finish({kind: record})


class JobHandler(Handler):
    def get(self, job_id):
        self.finish(self.job(job_id))


class CancelHandler(Handler):
    def post(self, job_id):
        job = self.job(job_id)
        if job["status"] in FINAL:
            raise web.HTTPError(409, f"job {job_id} is already {job['status']}")
        if job["status"] == "queued":
            job = self.jobs.store.update_job(job_id, status="cancelled", exit_reason="cancelled before it started",
                                             finished_at=time.time(), cancel_requested=1)
        else:
            job = self.jobs.store.update_job(job_id, cancel_requested=1)
        self.finish(job)


class LogsHandler(Handler):
    async def get(self, job_id):
        job = self.job(job_id)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        saved = self.jobs.store.job_dir(job_id) / "log.txt"
        if saved.exists():
            self.write(saved.read_text())
        follow = self.get_argument("follow", "") == "1"
        if job["status"] == "running" and job["container_id"]:
            try:
                if not follow:
                    self.write(await asyncio.to_thread(self.jobs.runner.logs, job["container_id"]))
                else:
                    stream = await asyncio.to_thread(self.jobs.runner.logs, job["container_id"], True)
                    while True:
                        chunk = await asyncio.to_thread(next, stream, None)
                        if chunk is None:
                            break
                        self.write(chunk)
                        await self.flush()
            except Exception:  # the container finished meanwhile: the saved log has it
                pass
        self.finish()


class OutputHandler(Handler):
    def get(self, job_id):
        self.job(job_id)
        path = self.jobs.store.job_dir(job_id) / "output.ipynb"
        if not path.exists():
            raise web.HTTPError(404, f"job {job_id} has no output notebook (yet)")
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.finish(path.read_text())


class SchedulesHandler(Handler):
    def get(self):
        user = None if self.identity["admin"] else self.identity["name"]
        self.finish({"schedules": self.jobs.store.schedules(user=user)})


class ScheduleHandler(Handler):
    def delete(self, schedule_id):
        self.visible(self.jobs.store.schedule(schedule_id))
        self.jobs.store.delete_schedule(schedule_id)
        self.set_status(204)
        self.finish()


def main():
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s jobs] %(message)s")
    settings = json.loads(Path(os.environ.get("DATALAB_HUB_SETTINGS", "/etc/datalab/hub.json")).read_text())
    spawn = settings["spawner"]
    store = Store(settings["jobs"]["data_dir"])

    def volumes(user, groups, admin):
        return volume_mounts(spawn, user, groups, admin)

    runner = Runner(spawn["prefix"], [spawn["network"]] + settings["jobs"]["extra_networks"], volumes,
                    settings["jobs"]["environment"], pids_limit=int(spawn["pids_limit"]))
    hub_auth = HubAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60)
    jobs = Jobs(settings, store, runner, HubUsers(hub_auth.api_url, hub_auth.api_token))
    jobs.recover()

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/jobs/")
    app = web.Application([
        (rf"{prefix}api/jobs", JobsHandler),
        (rf"{prefix}api/jobs/(\w+)", JobHandler),
        (rf"{prefix}api/jobs/(\w+)/cancel", CancelHandler),
        (rf"{prefix}api/jobs/(\w+)/logs", LogsHandler),
        (rf"{prefix}api/jobs/(\w+)/output", OutputHandler),
        (rf"{prefix}api/schedules", SchedulesHandler),
        (rf"{prefix}api/schedules/(\w+)", ScheduleHandler),
    ], jobs=jobs, hub_auth=hub_auth, admin_services=set(settings["jobs"]["admin_services"]))
    app.listen(int(os.environ.get("DATALAB_JOBS_PORT", "8090")), "0.0.0.0")

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
