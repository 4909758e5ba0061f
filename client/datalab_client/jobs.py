"""The jobs service's client, for notebook containers and the host alike.

Inside a notebook container it finds the service and the user's token in the
environment (DATALAB_JOBS_URL, JUPYTERHUB_API_TOKEN). On the host, `datalab`
builds it with the hub's proxy and the lab's CLI token, acting for `--as USER`.

    from datalab_client.jobs import JobsClient
    jobs = JobsClient.from_environment()
    job = jobs.submit("train.ipynb", params={"epochs": 3}, profile="tensorflow")
"""

import json
import os
import time
from pathlib import Path

from . import http

# A job's statuses (the jobs service's too): queued, then running, then one of FINAL.
QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = "succeeded", "failed", "cancelled", "timed out"
UNFINISHED = (QUEUED, RUNNING)
FINAL = (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT)


class JobsError(RuntimeError):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class JobsClient:
    def __init__(self, url, token):
        self.url = url.rstrip("/") + "/"
        self.token = token

    @classmethod
    def from_environment(cls):
        url, token = os.environ.get("DATALAB_JOBS_URL"), os.environ.get("JUPYTERHUB_API_TOKEN")
        if not (url and token):
            raise JobsError(0, "not in a DataLab notebook container (DATALAB_JOBS_URL / JUPYTERHUB_API_TOKEN unset)")
        return cls(url, token)

    def _request(self, method, path, body=None, raw=False, stream=False):
        try:
            response = http.request(method, self.url + path, self.token, body, stream=stream)
        except http.HTTPError as e:
            raise JobsError(e.status, e.detail) from None  # the service's words, or why it was not reached
        if stream:
            return response
        if raw:
            return response.data.decode()
        return json.loads(response.data) if response.data else None

    def submit(self, notebook, params=None, profile=None, as_user=None, timeout=None, retries=None,
               cpu=None, memory=None, schedule=None):
        """Queue a job (or, with a cron `schedule`, create a schedule). `notebook`:
        a path to an .ipynb file, or the notebook's JSON as a dict."""
        if not isinstance(notebook, dict):
            path = Path(notebook)
            try:
                notebook_json = json.loads(path.read_text())
            except FileNotFoundError:
                raise JobsError(0, f"no notebook at {path}") from None
            except ValueError:
                raise JobsError(0, f"{path} is not a notebook (not JSON)") from None
            name = path.name
        else:
            notebook_json, name = notebook, "notebook.ipynb"
        body = {"notebook": notebook_json, "notebook_name": name, "params": params or {}, "profile": profile,
                "as": as_user, "timeout": timeout, "retries": retries, "cpu": cpu, "memory": memory,
                "schedule": schedule}
        return self._request("POST", "api/jobs", {k: v for k, v in body.items() if v is not None})

    def list(self, everyone=False):
        return self._request("GET", "api/jobs" + ("?all=1" if everyone else ""))["jobs"]

    def show(self, job_id):
        return self._request("GET", f"api/jobs/{job_id}")

    def cancel(self, job_id):
        return self._request("POST", f"api/jobs/{job_id}/cancel", {})

    def logs(self, job_id, follow=False):
        """The log; with `follow`, a response to read as it grows (`.stream()`)."""
        if follow:
            return self._request("GET", f"api/jobs/{job_id}/logs?follow=1", stream=True)
        return self._request("GET", f"api/jobs/{job_id}/logs", raw=True)

    def output(self, job_id):
        return self._request("GET", f"api/jobs/{job_id}/output", raw=True)

    def schedules(self):
        return self._request("GET", "api/schedules")["schedules"]

    def unschedule(self, schedule_id):
        return self._request("DELETE", f"api/schedules/{schedule_id}")

    def wait(self, job_id, timeout=3600, every=1.0):
        deadline = time.monotonic() + timeout
        while True:
            job = self.show(job_id)
            if job["status"] in FINAL or time.monotonic() > deadline:
                return job
            time.sleep(every)
