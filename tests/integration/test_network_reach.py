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

import pytest
from conftest import notebook

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
    """The host's published ports (hub, scoring edge) at each of its own global addresses
    (on this test host a public-range one among them, which no private range covers) and
    at the containers' gateway."""
    shown = json.loads(subprocess.run(["ip", "-json", "-4", "address", "show", "scope", "global"],
                                      capture_output=True, text=True, check=True).stdout)
    addresses = {a["local"] for link in shown for a in link.get("addr_info", [])}
    addresses.add(lab.docker.inspect("network", "docker_gwbridge")[0]["IPAM"]["Config"][0]["Gateway"])
    ports = (lab.settings["hub"]["port"], lab.settings["scoring"]["port"])
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
