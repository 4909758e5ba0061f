"""Job and schedule history in SQLite, files (input, output, log) beside it.
Survives restarts of the service and of the hub."""

import errno
import json
import os
import sqlite3
import stat
import threading
import time
import uuid
from pathlib import Path

from datalab_client.jobs import QUEUED


class Store:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.root / "jobs.sqlite", check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        with self.lock, self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, user TEXT, notebook_name TEXT,"
                " profile TEXT, image TEXT, kernel TEXT, params TEXT, cpu REAL, memory TEXT, gpus INTEGER,"
                " timeout_s INTEGER, retries INTEGER, attempt INTEGER, status TEXT, exit_reason TEXT,"
                " error TEXT, submitted_at REAL, started_at REAL, finished_at REAL, container_id TEXT,"
                " schedule_id TEXT, cancel_requested INTEGER DEFAULT 0)")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS schedules (id TEXT PRIMARY KEY, user TEXT, cron TEXT,"
                " notebook_name TEXT, profile TEXT, params TEXT, cpu REAL, memory TEXT, timeout_s INTEGER,"
                " retries INTEGER, created_at REAL, next_run_at REAL, last_job_id TEXT)")

    # ---- files ----
    def job_dir(self, job_id):
        return self.root / "runs" / job_id

    def schedule_notebook(self, schedule_id):
        return self.root / "schedules" / f"{schedule_id}.ipynb"

    # A job's log and output are what its user's code produced. Neither the job's folder
    # nor a file in it is followed if it is a link, and only a regular file is read: what
    # is served for a job is what was written for it, never a file a link points to.
    def _open_in_job_dir(self, job_id, name, flags):
        folder = os.open(self.job_dir(job_id), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            return os.open(name, flags | os.O_NOFOLLOW, 0o640, dir_fd=folder)
        finally:
            os.close(folder)

    def read_job_file(self, job_id, name):
        """The bytes of `name` in the job's folder, or None where there is no such regular file."""
        try:
            # O_NONBLOCK: a FIFO there would otherwise block the open
            fd = self._open_in_job_dir(job_id, name, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return None
            raise
        with os.fdopen(fd, "rb") as f:
            return f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None

    def write_job_file(self, job_id, name, text, append=False):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        with os.fdopen(self._open_in_job_dir(job_id, name, flags), "w", encoding="utf-8") as f:
            f.write(text)

    def _insert(self, table, row):
        with self.lock, self.db:
            self.db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                            tuple(row.values()))

    def _update(self, table, key, fields):
        with self.lock, self.db:
            self.db.execute(f"UPDATE {table} SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                            (*fields.values(), key))

    @staticmethod
    def _write(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else json.dumps(data))

    # ---- jobs ----
    def add_job(self, *, user, notebook, notebook_name, profile, params, cpu, memory, timeout_s,
                retries, schedule_id=None):
        job_id = uuid.uuid4().hex[:12]
        self._write(self.job_dir(job_id) / "input.ipynb", notebook)
        row = {"id": job_id, "user": user, "notebook_name": notebook_name, "profile": profile["name"],
               "image": profile["image"], "kernel": profile["kernel"], "params": json.dumps(params),
               "cpu": cpu, "memory": memory, "gpus": profile["gpus"], "timeout_s": timeout_s,
               "retries": retries, "attempt": 0, "status": QUEUED, "exit_reason": None, "error": None,
               "submitted_at": time.time(), "started_at": None, "finished_at": None,
               "container_id": None, "schedule_id": schedule_id, "cancel_requested": 0}
        self._insert("jobs", row)
        return self.job(job_id)

    def job(self, job_id):
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def jobs(self, user=None, status=None):
        query, args = "SELECT * FROM jobs WHERE 1=1", []
        if user:
            query, args = query + " AND user = ?", args + [user]
        if status:
            query += f" AND status IN ({', '.join('?' * len(status))})"
            args += list(status)
        with self.lock:
            rows = self.db.execute(query + " ORDER BY submitted_at", args).fetchall()
        return [self._job(r) for r in rows]

    def update_job(self, job_id, **fields):
        self._update("jobs", job_id, fields)
        return self.job(job_id)

    @staticmethod
    def _job(row):
        job = dict(row)
        job["params"] = json.loads(job["params"] or "{}")
        job["cancel_requested"] = bool(job["cancel_requested"])
        if job["started_at"]:
            job["duration_s"] = round((job["finished_at"] or time.time()) - job["started_at"], 1)
        return job

    # ---- schedules ----
    def add_schedule(self, *, user, cron, notebook, notebook_name, profile, params, cpu, memory,
                     timeout_s, retries, next_run_at):
        schedule_id = "s" + uuid.uuid4().hex[:11]
        self._write(self.schedule_notebook(schedule_id), notebook)
        row = {"id": schedule_id, "user": user, "cron": cron, "notebook_name": notebook_name,
               "profile": profile["name"], "params": json.dumps(params), "cpu": cpu, "memory": memory,
               "timeout_s": timeout_s, "retries": retries, "created_at": time.time(),
               "next_run_at": next_run_at, "last_job_id": None}
        self._insert("schedules", row)
        return self.schedule(schedule_id)

    def schedule(self, schedule_id):
        with self.lock:
            row = self.db.execute("SELECT * FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        return {**dict(row), "params": json.loads(row["params"])} if row else None

    def schedules(self, user=None):
        with self.lock:
            rows = self.db.execute("SELECT * FROM schedules" + (" WHERE user = ?" if user else "")
                                   + " ORDER BY created_at", (user,) if user else ()).fetchall()
        return [{**dict(r), "params": json.loads(r["params"])} for r in rows]

    def update_schedule(self, schedule_id, **fields):
        self._update("schedules", schedule_id, fields)

    def delete_schedule(self, schedule_id):
        with self.lock, self.db:
            self.db.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
