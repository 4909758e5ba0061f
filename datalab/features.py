"""The feature store from the host: its status, loading history into it, and
the memory alert of `datalab status`.

The store (the stack's `featurestore` service, Redis) is on the `features`
network only, which no notebook or job container joins, and the host does not
reach it either. So `status` and `backfill` run `python -m
datalab_scoring.store_tool` in a one-shot container of the scoring image (it
has fraudlab and the Redis client) on that network, with the store's password
file mounted read-only; the alert reads Redis's INFO through the store's own
`featurestore-cli`."""

from pathlib import Path

from . import credentials, images
from .docker import Docker, DockerError

STORE_PASSWORD = "/run/secrets/featurestore_password"
HISTORY_DIR = "/history"


def store_container(docker: Docker, settings):
    return docker.local_container(f"{settings.lab}_featurestore",
                                  f"the feature store of lab '{settings.lab}' is not running (datalab up starts it)")


def memory_alert(docker: Docker, settings):
    """A warning when the store's data passes [features] warn_at of its maxmemory, else None."""
    try:
        info = docker.out("exec", store_container(docker, settings), "featurestore-cli", "INFO", "memory")
    except DockerError:
        return None  # not running: `status` shows that itself
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    used, most = int(fields.get("used_memory", 0)), int(fields.get("maxmemory", 0))
    share = settings["features"]["warn_at"]
    if most and used >= share * most:
        return (f"the feature store holds {used / most:.0%} of its {most >> 20} MiB ([features] maxmemory): "
                "past 100% it refuses writes and scoring answers 503; raise maxmemory and [resources] featurestore")
    return None


def run_tool(docker: Docker, settings, *args, history=None):
    """`python -m datalab_scoring.store_tool ARGS` next to the store (a history
    file mounted read-only and appended to ARGS); its output streams to this
    terminal. Returns its exit status."""
    image = images.current_ref(docker, "scoring")
    if not image:
        raise DockerError("no scoring image on this machine: run `datalab up` first")
    store_container(docker, settings)  # a clear error when the store is down
    password = credentials.ensure(settings)["featurestore_password"]
    mounts = ["--mount", f"type=bind,src={password},dst={STORE_PASSWORD},readonly"]
    if history is not None:
        history = Path(history).resolve()
        if not history.is_file():
            raise DockerError(f"no such file: {history}")
        mounts += ["--mount", f"type=bind,src={history},dst={HISTORY_DIR}/{history.name},readonly"]
        args = [*args, f"{HISTORY_DIR}/{history.name}"]
    # root in the container only to read the 0600 password file it is handed; no capability at all
    return docker.run("run", "--rm", "--network", f"{settings.lab}_features", "--user", "0:0", "--cap-drop", "ALL",
                      "--security-opt", "no-new-privileges", "--read-only", "--tmpfs", "/tmp", *mounts,
                      "--entrypoint", "python3", image, "-m", "datalab_scoring.store_tool",
                      "--password-file", STORE_PASSWORD, *args, check=False, capture=False).returncode
