"""The jobs' queue: submissions checked against the profile, the notebook's
parameters and the per-user limits; starting, watching, timing out,
cancelling, retrying and finishing jobs; cron schedules; stopping the jobs of
a user who lost the rights they ran with. The HTTP API is api.py."""

import json
import logging
import math
import re
import time

import requests
from croniter import croniter
from tornado import web  # a refused submission is the API's 4xx, raised where it is checked

from datalab_client.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TIMED_OUT, UNFINISHED
from datalab_hub import profiles as profile_policy
from datalab_hub.groupsync import excess_mounts

from .params import ParameterError, check
from .runner import error_of

log = logging.getLogger("datalab.jobs")
# A running job whose owner left a group is stopped within this many seconds (plus the
# hub's group sync and identity.py's cache).
RIGHTS_CHECK_EVERY_S = 10
REGISTRY_SCOPE = "access:services!service=registry"
MEMORY_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}  # binary, as Docker reads 512M or 4G
MIN_MEMORY = "6M"  # Docker refuses a smaller memory limit when it creates the container


def number(body, key, kind, default):
    """body[key] as an int or float (default when absent), else a 400 naming it."""
    value = body.get(key)
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise web.HTTPError(400, f"{key} must be a number, got {value!r}") from None


def text(body, key):
    """body[key] as a string (None when absent or empty), else a 400 naming it."""
    value = body.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise web.HTTPError(400, f"{key} must be a string, got {value!r}")
    return value


def memory_bytes(size):
    """Bytes of a memory size such as 512M, 1.5G or 1048576, or None if it is none."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)", str(size).strip().lower())
    return int(float(match[1]) * MEMORY_UNITS[match[2]]) if match else None


class Jobs:
    """Queue, limits, watching and schedules; the HTTP handlers call into it."""

    def __init__(self, settings, store, runner, users):
        self.settings = settings["jobs"]
        self.profiles = settings["spawner"]["profiles"]
        self.store = store
        self.runner = runner
        self.users = users  # datalab_hub.identity.HubUsers
        self._rights_checked = {}  # job id -> when its owner's rights were last checked

    def lost_rights(self, user, profile_name, container_id=None):
        """Why `user` may no longer run this (None if they may): out of the lab, a profile their
        groups no longer open, or (a running job) a volume mounted that their groups no longer give.
        The hub's groups follow the directory (hub/datalab_hub/groupsync.py)."""
        who = self.user_info(user)
        if who is None:
            return f"{user} is no longer a user of the lab"
        try:
            profile_policy.choose(self.profiles, who["groups"], profile_name)
        except profile_policy.ProfileError as e:
            return e.message
        if container_id:
            expected = self.runner.volumes(user, who["groups"], who["admin"])
            excess = excess_mounts(self.runner.mounts(container_id), expected, self.runner.lab)
            if excess:
                return f"it mounts {', '.join(excess)}, which {user}'s groups no longer give"
        return None

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
                profile_policy.choose(self.profiles, groups, text(body, "profile") or self.default_profile(notebook, groups)))
        except profile_policy.ProfileError as e:
            raise web.HTTPError(e.status, e.message) from None
        if profile["gpus"] and not self.runner.has_gpu_runtime():
            raise web.HTTPError(503, f"Profile '{profile['name']}' needs GPUs, but this lab's Docker engine "
                                     "has no GPU runtime.")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise web.HTTPError(400, f"params must be an object of parameter names and values, got {params!r}")
        try:
            params = check(notebook, params)
        except ParameterError as e:
            raise web.HTTPError(400, str(e)) from None
        timeout = number(body, "timeout", int, self.settings["default_timeout"])
        if not 0 < timeout <= self.settings["max_timeout"]:
            raise web.HTTPError(400, f"timeout must be between 1 and {self.settings['max_timeout']} seconds")
        retries = number(body, "retries", int, 0)
        if not 0 <= retries <= 5:
            raise web.HTTPError(400, "retries must be between 0 and 5")
        cpu, memory = self.resources(profile, body.get("cpu"), body.get("memory"))
        common = dict(user=user, notebook=notebook, notebook_name=text(body, "notebook_name") or "notebook.ipynb",
                      profile=profile, params=params, cpu=cpu, memory=memory, timeout_s=timeout, retries=retries)
        cron = text(body, "schedule")
        if cron:
            if not croniter.is_valid(cron):
                raise web.HTTPError(400, f"schedule {cron!r} is not a cron expression (e.g. '0 2 * * *')")
            limit = self.settings["max_schedules_per_user"]
            with self.store.lock:  # counted and added as one step
                count = len(self.store.schedules(user=user))
                if count >= limit:
                    raise web.HTTPError(429, f"{user} already has {count} schedules, the most a user may have "
                                             f"(jobs.max_schedules_per_user = {limit}); remove one first "
                                             "(datalab jobs unschedule ID)")
                return "schedule", self.store.add_schedule(cron=cron, next_run_at=self.next_run(cron), **common)
        return "job", self.queue(**common)

    def resources(self, profile, cpu, memory):
        """(cpu, memory) of a job, the profile's where not asked for. A job gets no more than
        its profile grants a notebook server (nor more CPUs than jobs.max_cpu), and never a
        memory limit of 0, which Docker reads as none; else a 400 naming the field and its limit."""
        if profile["cpu"] <= self.settings["max_cpu"]:
            cpu_limit, cpu_whose = profile["cpu"], f"profile '{profile['name']}'"
        else:
            cpu_limit, cpu_whose = self.settings["max_cpu"], "jobs.max_cpu"
        asked = profile["cpu"] if cpu in (None, "") else cpu
        try:
            cpu = float(asked)
        except (TypeError, ValueError):
            cpu = math.nan
        if not 0 < cpu <= cpu_limit:  # NaN fails it too
            raise web.HTTPError(400, f"cpu must be a number above 0 and at most {cpu_limit:g} "
                                     f"(the limit of {cpu_whose}), got {asked!r}")
        memory = str(profile["memory"] if memory in (None, "") else memory).strip()
        size = memory_bytes(memory)
        if size is None or not memory_bytes(MIN_MEMORY) <= size <= memory_bytes(profile["memory"]):
            raise web.HTTPError(400, f"memory must be a size from {MIN_MEMORY} to {profile['memory']} (the limit of "
                                     f"profile '{profile['name']}'), written like 512M or 2G, got {memory!r}")
        return cpu, memory

    def queue(self, **job):
        """Queue a job unless its user already has as many unfinished jobs as a user may (429)."""
        limit = self.settings["max_queued_per_user"]
        with self.store.lock:  # the loop's schedules queue jobs too: counted and added as one step
            count = len(self.store.jobs(user=job["user"], status=UNFINISHED))
            if count >= limit:
                raise web.HTTPError(429, f"{job['user']} already has {count} jobs queued or running, the most a user "
                                         f"may have (jobs.max_queued_per_user = {limit}); wait for some to finish "
                                         "or cancel them")
            return self.store.add_job(**job)

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
        """One pass: schedules, running jobs, then the queue. Each schedule and each job is
        handled on its own: what one raises (its user's code shapes what a job leaves) is
        logged and ends that one, never the pass, so the others' timeouts, cancels and
        starts go on."""
        now = time.time()
        for schedule in self.store.schedules():
            if schedule["next_run_at"] <= now:
                try:
                    self.fire(schedule, now)
                except Exception:
                    log.exception("schedule %s could not fire", schedule["id"])
        for job in self.store.jobs(status=(RUNNING,)):
            try:
                self.watch(job, now)
            except requests.ConnectionError as e:  # the engine is away, not the job's doing: next pass
                log.warning("job %s: the Docker engine did not answer (%s); watching it again next pass", job["id"], e)
            except Exception as e:
                log.exception("job %s could not be watched or collected", job["id"])
                self.abandon(job, e)
        self.start_queued()

    def fire(self, schedule, now):
        # moved on first, so that a schedule that cannot fire is not tried again at every tick
        self.store.update_schedule(schedule["id"], next_run_at=self.next_run(schedule["cron"], now))
        profile = next((p for p in self.profiles if p["name"] == schedule["profile"]), None)
        if not profile or not profile.get("image"):
            log.error("schedule %s: profile %s is gone; not fired", schedule["id"], schedule["profile"])
            return
        why = self.lost_rights(schedule["user"], schedule["profile"])
        if why:  # it fires again by itself once the rights come back
            log.warning("schedule %s not fired, its owner may no longer run it: %s", schedule["id"], why)
            return
        notebook = json.loads(self.store.schedule_notebook(schedule["id"]).read_text())
        try:
            # checked again: the profile's limits may have been lowered since it was made
            cpu, memory = self.resources(profile, schedule["cpu"], schedule["memory"])
            job = self.queue(user=schedule["user"], notebook=notebook, notebook_name=schedule["notebook_name"],
                             profile=profile, params=schedule["params"], cpu=cpu, memory=memory,
                             timeout_s=schedule["timeout_s"], retries=schedule["retries"], schedule_id=schedule["id"])
        except web.HTTPError as e:
            log.warning("schedule %s not fired: %s", schedule["id"], e.log_message)
            return
        self.store.update_schedule(schedule["id"], last_job_id=job["id"])
        log.info("schedule %s fired job %s for %s", schedule["id"], job["id"], schedule["user"])

    def start_queued(self):
        running = self.store.jobs(status=(RUNNING,))
        per_user = {}
        for job in running:
            per_user[job["user"]] = per_user.get(job["user"], 0) + 1
        for job in self.store.jobs(status=(QUEUED,)):
            if len(running) >= self.settings["max_running"]:
                return
            if per_user.get(job["user"], 0) >= self.settings["max_running_per_user"]:
                continue
            if self.start(job):
                running.append(job)
                per_user[job["user"]] = per_user.get(job["user"], 0) + 1

    def start(self, job):
        """Whether the job's container started; a job that cannot start fails, saying why."""
        attempt = job["attempt"] + 1
        try:
            why = self.lost_rights(job["user"], job["profile"])
            if why:
                raise RuntimeError(why)
            who = self.user_info(job["user"])
            notebook = json.loads(self.store.read_job_file(job["id"], "input.ipynb"))
            profile = next((p for p in self.profiles if p["name"] == job["profile"]), {})
            container_id = self.runner.start({**job, "attempt": attempt}, notebook, who["groups"], who["admin"],
                                             {**profile.get("environment", {}), **self.registry_environment(job)})
        except Exception as e:  # the queue goes on
            log.exception("job %s could not start", job["id"])
            self.store.update_job(job["id"], status=FAILED, exit_reason="could not start",
                                  error=str(e)[:2000], finished_at=time.time(), attempt=attempt)
            return False
        self.store.update_job(job["id"], status=RUNNING, attempt=attempt, container_id=container_id,
                              started_at=job["started_at"] or time.time())
        log.info("job %s (%s) started, attempt %d", job["id"], job["user"], attempt)
        return True

    def watch(self, job, now):
        running, exit_code = self.runner.state(job["container_id"])
        if running:
            if now - self._rights_checked.get(job["id"], 0) > RIGHTS_CHECK_EVERY_S:
                self._rights_checked[job["id"]] = now
                why = self.lost_rights(job["user"], job["profile"], job["container_id"])
                if why:
                    self.runner.stop(job["container_id"])
                    self.finish(job, CANCELLED, f"stopped: {why}")
                    return
            if now - job["started_at"] > job["timeout_s"]:
                self.runner.stop(job["container_id"], grace=1)
                self.finish(job, TIMED_OUT, f"stopped after its {job['timeout_s']} s timeout")
            elif job["cancel_requested"]:
                self.runner.stop(job["container_id"])
                self.finish(job, CANCELLED, "cancelled by its owner or an admin")
            return
        if exit_code is None:
            self.store.update_job(job["id"], status=FAILED, exit_reason="container lost",
                                  error="the job's container disappeared", finished_at=now)
            return
        if job["cancel_requested"]:
            self.finish(job, CANCELLED, "cancelled by its owner or an admin")
        elif exit_code == 0:
            self.finish(job, SUCCEEDED, "all cells ran")
        else:
            self.finish(job, FAILED, f"papermill exited with {exit_code}")

    def finish(self, job, status, reason):
        log_text, output, refused = self.runner.collect(job["container_id"])
        self.store.write_job_file(job["id"], "log.txt", f"----- attempt {job['attempt']} -----\n{log_text}",
                                  append=True)
        if output is not None:
            self.store.write_job_file(job["id"], "output.ipynb", json.dumps(output))
            error = error_of(output)
        else:
            error = refused  # None where papermill wrote no output
            if refused and status == SUCCEEDED:
                status, reason = FAILED, "its output notebook was refused"
        if status == FAILED and job["attempt"] <= job["retries"]:
            log.info("job %s failed (%s); retrying", job["id"], error or reason)
            self.store.update_job(job["id"], status=QUEUED, container_id=None, error=error)
            return
        if status == FAILED and not error:
            error = log_text.strip().splitlines()[-1][:2000] if log_text.strip() else reason
        self.store.update_job(job["id"], status=status, exit_reason=reason, error=error,
                              finished_at=time.time())
        log.info("job %s %s: %s", job["id"], status, error or reason)

    def abandon(self, job, error):
        """A job the loop could not watch or collect: failed, saying why, its container removed."""
        try:
            self.runner.remove(job["container_id"])
        except Exception:
            log.exception("job %s: could not remove its container %s", job["id"], job["container_id"])
        self.store.update_job(job["id"], status=FAILED, exit_reason="the jobs service could not watch or collect it",
                              error=f"{type(error).__name__}: {error}"[:2000], finished_at=time.time())

    def recover(self):
        """After a restart: running jobs whose containers are gone failed."""
        for job in self.store.jobs(status=(RUNNING,)):
            running, exit_code = self.runner.state(job["container_id"])
            if not running and exit_code is None:
                self.store.update_job(job["id"], status=FAILED, exit_reason="lost",
                                      error="the container was gone when the jobs service restarted",
                                      finished_at=time.time())
