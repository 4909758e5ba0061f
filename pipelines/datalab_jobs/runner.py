"""One job attempt = one container of the profile's image running papermill
as the user (uid 1000) on the user's volume, hardened like notebook servers."""

import io
import json
import tarfile

import docker
import docker.errors
from docker.types import DeviceRequest

from datalab_hub.containers import NOTEBOOK_UID, hardened
from datalab_hub.volumes import ensure_shared, shared

WORKDIR = "/tmp/job"


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
    """'Name: message (cell N)' of the first failing cell, or None."""
    for index, cell in enumerate(output_notebook.get("cells", [])):
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')} (cell {index})"
    return None


class Runner:
    def __init__(self, lab, networks, volumes, environment=None, pids_limit=1024):
        self.client = docker.from_env()
        self.pids_limit = pids_limit
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
        command = ["papermill", f"{WORKDIR}/input.ipynb", f"{WORKDIR}/output.ipynb",
                   "-k", job["kernel"], "-f", f"{WORKDIR}/params.yaml",
                   "--log-output", "--no-progress-bar", "--cwd", "/home/jovyan"]
        host = dict(
            **hardened(self.pids_limit),  # as the user's notebook servers
            nano_cpus=int(float(job["cpu"]) * 1e9), mem_limit=job["memory"], memswap_limit=job["memory"],
        )
        if job["gpus"]:
            host["device_requests"] = [DeviceRequest(count=int(job["gpus"]), capabilities=[["gpu"]])]
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
        except Exception:
            container.remove(force=True)
            raise
        return container.id

    def state(self, container_id):
        """(running, exit code) of the job's container; (False, None) if it is gone."""
        try:
            c = self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return False, None
        return c.status in ("created", "running", "restarting"), c.attrs["State"].get("ExitCode")

    def logs(self, container_id, follow=False, since=None):
        c = self.client.containers.get(container_id)
        return c.logs(stream=follow, follow=follow, stdout=True, stderr=True, since=since)

    def stop(self, container_id, grace=3):
        try:
            self.client.containers.get(container_id).stop(timeout=grace)
        except docker.errors.NotFound:
            pass

    def collect(self, container_id):
        """(log text, output notebook or None) of a finished container, then remove it."""
        c = self.client.containers.get(container_id)
        log = c.logs(stdout=True, stderr=True).decode(errors="replace")
        output = None
        try:
            stream, _ = c.get_archive(f"{WORKDIR}/output.ipynb")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                output = json.loads(tar.extractfile("output.ipynb").read())
        except (docker.errors.NotFound, KeyError, ValueError):
            pass
        c.remove(force=True)
        return log, output

    def containers(self):
        return self.client.containers.list(all=True, filters={"label": f"org.datalab.lab={self.lab}"})
