"""The Docker engine, through the client that matches it (build.docker)."""

import json
import logging
import os
import shutil
import subprocess
import threading

log = logging.getLogger("datalab.cli.docker")  # shown by `datalab -v` (steps.py)


class DockerError(RuntimeError):
    pass


class Docker:
    def __init__(self, settings):
        configured = settings["build"]["docker"]
        self.cli = configured if shutil.which(configured) else "docker"

    def run(self, *args, check=True, capture=True, input=None, timeout=None, env=None):
        """`env`: variables set for this command only (DOCKER_CONFIG)."""
        log.debug("%s %s", self.cli, " ".join(args))
        proc = subprocess.run(
            [self.cli, *args],
            capture_output=capture,
            text=True,
            input=input,
            timeout=timeout,
            env={**os.environ, **env} if env else None,
        )
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip() if capture else ""
            raise DockerError(f"docker {' '.join(args[:3])} failed: {detail}")
        return proc

    def read_bounded(self, *args, limit, timeout):
        """The first `limit` bytes of a command's standard output, in at most `timeout`
        seconds: for output a container's own code writes (`exec` into a model's
        replica), which may be endless or never end. Decoded leniently."""
        log.debug("%s %s (first %d bytes)", self.cli, " ".join(args), limit)
        with subprocess.Popen([self.cli, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                return proc.stdout.read(limit).decode(errors="replace")
            finally:
                timer.cancel()
                proc.kill()

    def out(self, *args, **kwargs):
        return self.run(*args, **kwargs).stdout.strip()

    def ok(self, *args):
        return self.run(*args, check=False).returncode == 0

    def inspect(self, kind, *names):
        proc = self.run(kind, "inspect", *names, check=False)
        return json.loads(proc.stdout or "[]") if proc.returncode == 0 else []

    def tasks(self, service, running=False):
        """A Swarm service's tasks as the engine describes them (JSON: Status.State,
        Status.Err, Spec.ContainerSpec.Image, NodeID); `running`: those meant to run."""
        args = ["service", "ps", "--quiet", "--no-trunc", *(["--filter", "desired-state=running"] if running else []),
                service]
        ids = self.run(*args, check=False).stdout.split()
        if not ids:
            return []
        proc = self.run("inspect", "--type", "task", *ids, check=False)
        return json.loads(proc.stdout or "[]") if proc.returncode == 0 else []

    def local_containers(self, service):
        """IDs of a Swarm service's containers on this engine's node."""
        return self.out("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").split()

    def local_container(self, service, missing):
        """One of the service's containers on this node; DockerError(missing) when it has none."""
        found = self.local_containers(service)
        if not found:
            raise DockerError(missing)
        return found[0]

    def engine_running(self):
        try:
            return self.ok("info", "--format", "{{.ServerVersion}}")
        except FileNotFoundError:
            return False

    def swarm_state(self):
        return self.out("info", "--format", "{{.Swarm.LocalNodeState}}")


def engine_api():
    """The engine's API (docker SDK) for what the docker CLI cannot say: a service's whole
    environment in a given order, a push or a service update with a registry's account.
    DOCKER_HOST as the CLI reads it, or the local socket."""
    import docker as docker_sdk  # the SDK's import is not paid by commands that never need it

    return docker_sdk.from_env(version="auto").api
