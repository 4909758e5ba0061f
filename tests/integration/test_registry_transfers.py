"""Large files through the registry gateway, on the real hub, gateway and
MLflow: a file larger than a third of the hub container's memory is uploaded
and downloaded whole and unchanged while the hub container's memory hardly
moves. The gateway used to hold every body whole (up to 2 GiB) in the hub
container, so one upload near the limit could get the hub OOM-killed; the
same stream-or-not checks, chunk by chunk: tests/unit/test_registry_gateway.py."""

import hashlib
import threading
import time
from pathlib import Path

import pytest

from test_registry_attacks import gateway, store_path

pytestmark = pytest.mark.integration
SIZE = 640 << 20
BLOCK = bytes(range(256)) * 4096  # 1 MiB, not all one byte
MOST_GROWTH = 192 << 20  # the hub's own noise and the gateway's few chunks, far below SIZE


class File:
    """SIZE bytes, read as a file of known length (so the client sends a Content-Length, as MLflow's does)."""

    def __init__(self):
        self.sent, self.digest = 0, hashlib.sha256()

    def __len__(self):
        return SIZE - self.sent

    def read(self, n=-1):
        n = min(SIZE - self.sent if n is None or n < 0 else n, SIZE - self.sent, len(BLOCK))
        chunk = BLOCK[:n]
        self.sent += n
        self.digest.update(chunk)
        return chunk


def memory_file(pid):
    """The file of the memory a process's cgroup uses (what the container's limit counts), cgroup v1 or v2."""
    groups = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    if "memory" in groups:
        return Path("/sys/fs/cgroup/memory", groups["memory"].lstrip("/"), "memory.usage_in_bytes")
    return Path("/sys/fs/cgroup", groups[""].lstrip("/"), "memory.current")


class MemoryWatch(threading.Thread):
    """The highest memory use of a container, sampled every 50 ms."""

    def __init__(self, lab, container):
        super().__init__(daemon=True)
        self.current = memory_file(lab.docker.out("inspect", "-f", "{{.State.Pid}}", container).strip())
        self.baseline = self.highest = self.read()
        self.done = threading.Event()

    def read(self):
        return int(self.current.read_text())

    def run(self):
        while not self.done.wait(0.05):
            self.highest = max(self.highest, self.read())

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()

    @property
    def growth(self):
        return self.highest - self.baseline


@pytest.fixture(scope="module")
def daves_artifacts(lab):
    """The gateway path of an artifact folder of dave's own run."""
    lab.login("dave")  # a hub user from his first login on: his tokens are made for him
    experiment = lab.registry("dave", "POST", "experiments/create", {"name": f"dave-transfers-{time.time_ns()}"})
    run = lab.registry("dave", "POST", "runs/create", {"experiment_id": experiment["experiment_id"]})["run"]["info"]
    return f"api/2.0/mlflow-artifacts/artifacts/{store_path(run['artifact_uri'])}"


def test_a_large_artifact_streams_through_the_gateway_both_ways(lab, daves_artifacts):
    hub = lab.service_container("hub")
    sent = File()
    with MemoryWatch(lab, hub) as upload:
        response = gateway(lab, "dave", "PUT", f"{daves_artifacts}/large.bin", data=sent)
    assert response.status_code == 200, f"{response.status_code} {response.text[:300]}"
    assert sent.sent == SIZE
    assert upload.growth < MOST_GROWTH, f"the hub grew {upload.growth >> 20} MiB during a {SIZE >> 20} MiB upload"

    received, digest = 0, hashlib.sha256()
    with MemoryWatch(lab, hub) as download:
        with gateway(lab, "dave", "GET", f"{daves_artifacts}/large.bin", stream=True) as response:
            assert response.status_code == 200, f"{response.status_code} {response.text[:300]}"
            assert response.headers["Content-Length"] == str(SIZE)
            assert response.headers["Content-Security-Policy"] == "sandbox"
            for chunk in response.iter_content(1 << 20):
                received += len(chunk)
                digest.update(chunk)
    assert (received, digest.hexdigest()) == (SIZE, sent.digest.hexdigest())
    assert download.growth < MOST_GROWTH, \
        f"the hub grew {download.growth >> 20} MiB during a {SIZE >> 20} MiB download"


def test_an_upload_without_a_length_arrives_whole(lab, daves_artifacts):
    """A chunked upload (no Content-Length) is passed on chunked, and MLflow stores all of it."""
    blocks = [BLOCK] * 8
    response = gateway(lab, "dave", "PUT", f"{daves_artifacts}/chunked.bin", data=iter(blocks))
    assert response.status_code == 200, f"{response.status_code} {response.text[:300]}"
    back = gateway(lab, "dave", "GET", f"{daves_artifacts}/chunked.bin")
    assert back.status_code == 200 and back.content == b"".join(blocks)

