"""Finding: notebook and job containers reached every port of every other user's
container on the flat lab network (a dashboard a user ran without a password was
open to all). Now a user's container reaches the hub and its services, and
nothing of another user's: attacked from inside a notebook server and a job.

Finding: with internet egress on, the same containers reached the host's own
address and so every port it publishes: the scoring edge (a lab user could feed
made-up transactions into production's per-customer state from a notebook,
past any firewall that keeps the edge to the payment systems) and the hub's
front door. Now private address space and the nodes' own addresses are closed
to them, DNS excepted, as z2jh's default egress policy."""

import json
import socket
import subprocess
import time

import pytest
from conftest import notebook

from datalab import images

pytestmark = pytest.mark.integration

DASHBOARD_PORT = 8050
PROBE = (
    "import socket\n"
    "for host, port in {targets!r}:\n"
    "    try:\n"
    "        socket.create_connection((host, port), timeout=3).close()\n"
    "        print('REACHED', host, port, flush=True)\n"
    "    except OSError as e:\n"
    "        print('blocked', host, port, type(e).__name__, flush=True)\n"
)
HUB = [("hub", 8081), ("hub", 8090), ("hub", 8091)]  # the hub's API, jobs, registry
RESOLVE = "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('pypi.org', 443)}))"


def host_doors(lab):
    """The host's published ports (hub, scoring edge, image registry) at each of its own global addresses
    (on this test host a public-range one among them, which no private range covers) and
    at the containers' gateway."""
    shown = json.loads(subprocess.run(["ip", "-json", "-4", "address", "show", "scope", "global"],
                                      capture_output=True, text=True, check=True).stdout)
    addresses = {a["local"] for link in shown for a in link.get("addr_info", [])}
    addresses.add(lab.docker.inspect("network", "docker_gwbridge")[0]["IPAM"]["Config"][0]["Gateway"])
    ports = (lab.settings["hub"]["port"], lab.settings["scoring"]["port"], lab.settings["image_registry"]["port"])
    return [(address, port) for address in sorted(addresses) for port in ports]


@pytest.fixture
def bobs_dashboard(lab):
    """bob's server, running an unauthenticated web app on the lab network; its address."""
    lab.fresh_server("bob", "python")
    bob = lab.notebook_container("bob")
    lab.docker.run("exec", "-d", bob["Id"], "python3", "-m", "http.server", str(DASHBOARD_PORT), "--bind", "0.0.0.0")
    own = PROBE.format(targets=[("127.0.0.1", DASHBOARD_PORT)])
    lab.wait_for(lambda: "REACHED" in lab.exec(bob, "python3", "-c", own).stdout, "bob's dashboard listening")
    return bob["NetworkSettings"]["Networks"][f"{lab.name}_lab"]["IPAddress"]


def reached(output):
    return {(host, int(port)) for word, host, port, *_ in (line.split() for line in output.splitlines())
            if word == "REACHED"}


def test_a_notebook_reaches_the_hub_and_nothing_of_another_users_container(lab, bobs_dashboard):
    lab.fresh_server("alice", "python")
    others = [(bobs_dashboard, DASHBOARD_PORT), (bobs_dashboard, 8888)]
    out = lab.exec(lab.notebook_container("alice"), "python3", "-c", PROBE.format(targets=others + HUB)).stdout
    assert reached(out) == set(HUB), out
    # bob still uses his own server through the proxy
    bob = lab.login("bob")
    assert bob.open_server("bob").status_code == 200


def test_a_job_reaches_the_hub_and_nothing_of_another_users_container(lab, jobs, bobs_dashboard):
    probe = notebook(PROBE.format(targets=[(bobs_dashboard, DASHBOARD_PORT), (bobs_dashboard, 8888)] + HUB),
                     kernel="python-3.11")
    job = jobs.wait(jobs.submit("probe.ipynb", probe, "--profile", "python")["id"])
    assert job["status"] == "succeeded", job
    output = json.loads(jobs.cli("output", job["id"]).stdout)
    printed = "".join("".join(o.get("text", "")) for c in output["cells"] for o in c.get("outputs", []))
    assert reached(printed) == set(HUB), printed


def test_a_notebook_and_a_job_reach_no_port_the_host_publishes(lab, jobs):
    doors = host_doors(lab)
    for door in doors:  # open from the host itself (else this test proves nothing)
        socket.create_connection(door, timeout=3).close()
    lab.fresh_server("alice", "python")
    alice = lab.notebook_container("alice")
    out = lab.exec(alice, "python3", "-c", PROBE.format(targets=doors + HUB)).stdout
    assert reached(out) == set(HUB), out
    # names outside the lab still resolve (Docker's DNS asks the host's resolver)
    assert lab.exec(alice, "python3", "-c", RESOLVE).stdout.strip() != "[]"
    probe = notebook(PROBE.format(targets=doors), kernel="python-3.11")
    job = jobs.wait(jobs.submit("doors.ipynb", probe, "--profile", "python")["id"])
    assert job["status"] == "succeeded", job
    output = json.loads(jobs.cli("output", job["id"]).stdout)
    printed = "".join("".join(o.get("text", "")) for c in output["cells"] for o in c.get("outputs", []))
    assert printed.count("blocked") == len(doors) and not reached(printed), printed


STARTUP_PROBE = "~/.jupyter/jupyter_server_config.py"
STARTUP_CONFIG = """
import socket
with open('/home/jovyan/.startup-probe', 'w') as log:
    for host, port in {targets!r}:
        try:
            socket.create_connection((host, port), timeout=3).close()
            log.write(f'REACHED {{host}} {{port}}\\n')
        except OSError:
            log.write(f'blocked {{host}} {{port}}\\n')
"""


def test_a_users_server_config_runs_only_behind_the_rules(lab):
    """A user's own server config runs at every start of their server: it probes the
    host's doors from there (the rules must already be in place), and never before the
    platform's marker, though the server loads its own modules meanwhile."""
    doors = host_doors(lab)
    lab.fresh_server("alice", "python")
    alice = lab.notebook_container("alice")
    config = STARTUP_CONFIG.format(targets=doors + HUB)
    lab.docker.run("exec", "-i", alice["Id"], "sh", "-c", f"mkdir -p ~/.jupyter && cat > {STARTUP_PROBE}",
                   input=config)
    try:
        lab.fresh_server("alice", "python")
        alice = lab.notebook_container("alice")
        out = lab.exec(alice, "cat", "/home/jovyan/.startup-probe").stdout
        assert reached(out) == set(HUB) and out.count("blocked") == len(doors), out
    finally:  # alice's later servers start without it
        if current := lab.notebook_container("alice"):
            lab.exec(current, "rm", "-f", STARTUP_PROBE.replace("~", "/home/jovyan"), "/home/jovyan/.startup-probe",
                     check=False)

    # and the order itself, on the image alone: imports done, the config not run, until the marker
    name = f"{lab.name}-startup-order"
    env = [f"--env=JUPYTERHUB_{k}={v}" for k, v in {
        "SERVICE_URL": "http://0.0.0.0:8888/user/x/", "API_TOKEN": "unused", "API_URL": "http://127.0.0.1:9/hub/api",
        "CLIENT_ID": "jupyterhub-user-x", "USER": "x", "BASE_URL": "/", "SERVICE_PREFIX": "/user/x/"}.items()]
    lab.docker.run("rm", "-f", name, check=False)
    lab.docker.run("run", "-d", "--name", name, "--network", "none", *env, "--entrypoint", "sh",
                   images.current_ref(lab.docker, "python"), "-c",
                   "mkdir -p ~/.jupyter && echo \"open('/tmp/config-ran', 'w')\" > ~/.jupyter/jupyter_server_config.py"
                   " && exec datalab-await-network jupyterhub-singleuser")
    try:
        lab.wait_for(lambda: "waiting for this container's network rules" in lab.docker.run(
            "logs", name, check=False).stderr, "the server's own modules loaded", timeout=60)
        time.sleep(2)
        assert lab.docker.run("exec", name, "test", "-e", "/tmp/config-ran", check=False).returncode == 1
        lab.docker.run("exec", name, "touch", "/tmp/.datalab-network-ready")
        lab.wait_for(lambda: lab.docker.ok("exec", name, "test", "-e", "/tmp/config-ran"),
                     "the user's config run once the marker is there", timeout=30)
    finally:
        lab.docker.run("rm", "-f", name, check=False)
