"""One job attempt = one container of the profile's image running papermill
as the user (uid 1000) on the user's volume, hardened like notebook servers.

What a job leaves (its log, its output notebook) is shaped by its user, who
may be hostile: it is read with size limits, and only a regular file that
holds a notebook is taken as the output."""

import io
import json
import tarfile
from contextlib import closing

import docker
import docker.errors

from datalab_hub.containers import NOTEBOOK_UID, gpu_request, hardened
from datalab_hub.netpolicy import AWAIT_COMMAND
from datalab_hub.volumes import ensure_shared, shared

WORKDIR = "/tmp/job"
MB = 2**20


def _tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        root = tarfile.TarInfo("job")
        root.type, root.mode, root.uid, root.gid = tarfile.DIRTYPE, 0o755, NOTEBOOK_UID, NOTEBOOK_UID
        tar.addfile(root)
        for name, data in files.items():
            info = tarfile.TarInfo(f"job/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o644, NOTEBOOK_UID, NOTEBOOK_UID
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def error_of(output_notebook):
    """'Name: message (cell N)' of the first failing cell, or None. The notebook is
    what the job left, in any shape its user gave it: what is not a cell with a
    list of outputs is skipped."""
    for index, cell in enumerate(output_notebook.get("cells", [])):
        outputs = cell.get("outputs") if isinstance(cell, dict) else None
        for out in outputs if isinstance(outputs, list) else []:
            if isinstance(out, dict) and out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')} (cell {index})"[:2000]
    return None


def tail(chunks, limit_mb):
    """The last `limit_mb` MB of a stream of byte chunks, as text; where earlier
    bytes were dropped, a first line says so."""
    limit, kept, dropped = int(limit_mb * MB), bytearray(), 0
    for chunk in chunks:
        kept += chunk
        if len(kept) > 2 * limit:  # trimmed in batches, so that a long log is not copied per chunk
            dropped += len(kept) - limit
            del kept[:len(kept) - limit]
    dropped += max(0, len(kept) - limit)
    text = kept[max(0, len(kept) - limit):].decode(errors="replace")
    if dropped:
        text = (f"[... {dropped} bytes of earlier output dropped: a job's log keeps its last "
                f"{limit_mb:g} MB (jobs.max_log_mb) ...]\n") + text
    return text


class _Chunks(io.RawIOBase):
    """A stream of byte chunks (docker-py's archive download) as a file, read as asked."""

    def __init__(self, chunks):
        self.chunks, self.pending = iter(chunks), memoryview(b"")

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = memoryview(chunk)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def _kind(member):
    if member is None:
        return "missing"
    if member.isdir():
        return "a directory"
    if member.issym() or member.islnk():
        return "a link"
    return "not a regular file"


class Runner:
    def __init__(self, lab, networks, volumes, environment=None, pids_limit=1024, *, max_log_mb, max_output_mb,
                 isolate, client=None):
        self.client = client or docker.from_env()
        # isolate(container_id): sets a started job container's network rules and lets its
        # command run (hub/datalab_hub/netpolicy.py); no default, so no runner goes without
        self.isolate = isolate
        self.pids_limit = pids_limit
        self.max_log_mb, self.max_output_mb = max_log_mb, max_output_mb
        self.lab = lab
        self.networks = networks          # first: created with it; others: connected before start
        self.volumes = volumes            # callable(user, groups, admin) -> {name: {"bind", "mode"}}
        self.environment = environment or {}

    def has_gpu_runtime(self):
        return "nvidia" in (self.client.info().get("Runtimes") or {})

    def start(self, job, notebook, user_groups, admin, environment=None):
        name = f"{self.lab}-job-{job['id']}-{job['attempt']}"
        # papermill runs it with the image's kernel: say so in the notebook, as a
        # notebook saved in that image would (and papermill needs the language)
        notebook = {**notebook, "metadata": {**notebook.get("metadata", {}), "kernelspec": {
            "name": job["kernel"], "display_name": job["kernel"], "language": "python"}}}
        command = [AWAIT_COMMAND, "papermill", f"{WORKDIR}/input.ipynb", f"{WORKDIR}/output.ipynb",
                   "-k", job["kernel"], "-f", f"{WORKDIR}/params.yaml",
                   "--log-output", "--no-progress-bar", "--cwd", "/home/jovyan"]
        host = dict(
            **hardened(self.pids_limit),  # as the user's notebook servers
            nano_cpus=int(float(job["cpu"]) * 1e9), mem_limit=job["memory"], memswap_limit=job["memory"],
            # Docker rotates the log, keeping three files of the size whose tail the service
            # keeps (JSON lines, so somewhat less output): a job printing without end neither
            # fills the host's disk nor makes its collection, which the queue waits on, long.
            log_config={"type": "json-file", "config": {"max-size": f"{max(1, int(self.max_log_mb * 1024))}k",
                                                        "max-file": "3"}},
        )
        host.update(gpu_request(job["gpus"]))
        mounts = self.volumes(job["user"], user_groups, admin)
        for volume in shared(mounts, self.lab):  # as a notebook server would, owned by the user
            ensure_shared(self.client.api, volume, self.lab, job["image"])
        container = self.client.containers.create(
            job["image"], command=command, name=name, user=f"{NOTEBOOK_UID}", working_dir="/home/jovyan",
            entrypoint=["tini", "--"], network=self.networks[0],
            volumes=mounts,
            # USER/LOGNAME: MLflow records runs under the submitting user's name
            environment={**self.environment, **(environment or {}), "DATALAB_JOB_ID": job["id"], "DATALAB_USER": job["user"],
                         "USER": job["user"], "LOGNAME": job["user"]},
            labels={"org.datalab.lab": self.lab, "org.datalab.job": job["id"], "org.datalab.user": job["user"]},
            **host,
        )
        try:
            for network in self.networks[1:]:
                self.client.networks.get(network).connect(container)
            container.put_archive("/tmp", _tar({
                "input.ipynb": json.dumps(notebook).encode(),
                "params.yaml": json.dumps(job["params"]).encode(),  # JSON is YAML
            }))
            container.start()
            self.isolate(container.id)  # papermill starts only then
        except Exception:
            container.remove(force=True)
            raise
        return container.id

    def mounts(self, container_id):
        """The container's mounts, as Docker's inspect lists them."""
        return self.client.containers.get(container_id).attrs.get("Mounts", [])

    def state(self, container_id):
        """(running, exit code) of the job's container; (False, None) if it is gone."""
        try:
            c = self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return False, None
        return c.status in ("created", "running", "restarting"), c.attrs["State"].get("ExitCode")

    def logs(self, container_id, follow=False):
        """A running job's log: a stream of chunks to follow, or the text of its tail so far."""
        c = self.client.containers.get(container_id)
        if follow:
            return c.logs(stream=True, follow=True, stdout=True, stderr=True)
        return tail(c.logs(stream=True, follow=False, stdout=True, stderr=True), self.max_log_mb)

    def stop(self, container_id, grace=3):
        try:
            self.client.containers.get(container_id).stop(timeout=grace)
        except docker.errors.NotFound:
            pass

    def remove(self, container_id):
        try:
            self.client.containers.get(container_id).remove(force=True)
        except docker.errors.NotFound:
            pass

    def collect(self, container_id):
        """(log text, output notebook or None, why the output was refused or None) of a
        finished container, which is then removed."""
        c = self.client.containers.get(container_id)
        try:
            log = tail(c.logs(stream=True, follow=False, stdout=True, stderr=True), self.max_log_mb)
            output, refused = self.output_notebook(c)
        finally:
            c.remove(force=True)
        return log, output, refused

    def output_notebook(self, container):
        """(notebook, None), (None, why it was refused), or (None, None) where papermill wrote none."""
        name = "output.ipynb"
        try:
            # the last path element is not followed by Docker: a link comes as a link
            stream, _ = container.get_archive(f"{WORKDIR}/{name}")
        except docker.errors.NotFound:
            return None, None
        with closing(stream):
            # read as a stream: a member's header, then only its own bytes once it passed,
            # so a directory's contents or an oversized file are never downloaded
            with tarfile.open(fileobj=io.BufferedReader(_Chunks(stream)), mode="r|") as tar:
                member = tar.next()
                if member is None or not member.isreg():
                    return None, f"{name} is {_kind(member)}, not the notebook file papermill writes"
                if member.size > self.max_output_mb * MB:
                    return None, (f"{name} is {member.size} bytes, over the limit of {self.max_output_mb:g} MB "
                                  "(jobs.max_output_mb)")
                data = tar.extractfile(member).read()
        try:
            notebook = json.loads(data)
        except RecursionError:
            return None, f"{name} is nested too deeply to be read as a notebook"
        except ValueError:
            return None, f"{name} is not JSON, so not a notebook"
        if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
            return None, f"{name} is not a notebook (a JSON object with a list of cells)"
        return notebook, None
