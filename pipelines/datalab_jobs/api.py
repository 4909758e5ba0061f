"""The jobs service's REST API under /services/jobs/ (tornado).

Callers authenticate with a JupyterHub token (`Authorization: token ...`):
a user sees and cancels only their own jobs; hub admins and the lab's CLI
service see all, and may submit on behalf of a user (`as`)."""

import asyncio
import json
import time

from tornado import web

from datalab_client.jobs import CANCELLED, FINAL, QUEUED, RUNNING

from .queue import text

ACCESS_SCOPES = {"access:services", "access:services!service=jobs"}


class Handler(web.RequestHandler):
    @property
    def jobs(self):
        return self.settings["jobs"]

    async def prepare(self):
        # HubAuth reads the token (`Authorization: token|Bearer ...`) and asks the hub, with a cache
        model = await self.settings["hub_auth"].get_user(self, sync=False)
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
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            raise web.HTTPError(400, "the request body is not JSON, or is nested too deeply") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return body

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
        as_user = text(body, "as")
        if as_user and as_user != user:
            if not self.identity["admin"]:
                raise web.HTTPError(403, "only admins may submit jobs as another user")
            model = await self.user_model(as_user)
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
        if job["status"] == QUEUED:
            job = self.jobs.store.update_job(job_id, status=CANCELLED, exit_reason="cancelled before it started",
                                             finished_at=time.time(), cancel_requested=1)
        else:
            job = self.jobs.store.update_job(job_id, cancel_requested=1)
        self.finish(job)


class LogsHandler(Handler):
    async def get(self, job_id):
        job = self.job(job_id)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        saved = self.jobs.store.read_job_file(job_id, "log.txt")
        if saved is not None:
            self.write(saved)
        follow = self.get_argument("follow", "") == "1"
        if job["status"] == RUNNING and job["container_id"]:
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
        output = self.jobs.store.read_job_file(job_id, "output.ipynb")
        if output is None:
            raise web.HTTPError(404, f"job {job_id} has no output notebook (yet)")
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.finish(output)


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


def app(jobs, hub_auth, admin_services, prefix="/services/jobs/"):
    return web.Application([
        (rf"{prefix}api/jobs", JobsHandler),
        (rf"{prefix}api/jobs/(\w+)", JobHandler),
        (rf"{prefix}api/jobs/(\w+)/cancel", CancelHandler),
        (rf"{prefix}api/jobs/(\w+)/logs", LogsHandler),
        (rf"{prefix}api/jobs/(\w+)/output", OutputHandler),
        (rf"{prefix}api/schedules", SchedulesHandler),
        (rf"{prefix}api/schedules/(\w+)", ScheduleHandler),
    ], jobs=jobs, hub_auth=hub_auth, admin_services=set(admin_services))
