"""The image picker, container isolation, volumes and named servers, against
real notebook containers of the test lab."""

import ipaddress
import re

import pytest
import websocket
from directory import _ldap
from kernel import Kernel, KernelDied

pytestmark = pytest.mark.integration

GiB = 1024**3


def offered_profiles(session, user):
    page = session.http.get(f"{session.base}/hub/spawn/{user}/picker", timeout=30)
    assert page.status_code == 200, page.status_code
    return re.findall(r'name="profile" value="([^"]+)"', page.text)


def test_form_offers_only_the_profiles_of_the_users_groups(lab):
    assert offered_profiles(lab.login("alice"), "alice") == ["python", "datascience", "tensorflow"]
    # bob is in gpu-users: the GPU profile is offered (not built here, so disabled)
    bob = lab.login("bob")
    assert offered_profiles(bob, "bob") == ["python", "datascience", "tensorflow", "tensorflow-gpu"]
    page = bob.http.get(f"{lab.url}/hub/spawn/bob/picker", timeout=30).text
    assert "6G memory" in page and "1 GPU" in page and "not built on this lab" in page


@pytest.fixture
def fraud_analyst(lab):
    """alice, also in the directory group GRP-Fraud-Analytics (a corporate-style name), which the
    test lab's settings give a profile of its own; the group goes afterwards."""
    base = lab.settings["directory"]["base_dn"]
    _ldap(lab.docker, lab.settings, "ldapadd", f"dn: cn=GRP-Fraud-Analytics,ou=groups,{base}\n"
          f"objectClass: groupOfNames\ncn: GRP-Fraud-Analytics\nmember: uid=alice,ou=people,{base}\n")
    yield lab.login("alice")
    _ldap(lab.docker, lab.settings, "ldapdelete", f"cn=GRP-Fraud-Analytics,ou=groups,{base}\n")


def test_a_profile_from_the_sites_settings_alone_serves_its_directory_group(lab, fraud_analyst):
    assert offered_profiles(fraud_analyst, "alice") == ["python", "datascience", "tensorflow", "fraud-analytics"]
    page = fraud_analyst.http.get(f"{lab.url}/hub/spawn/alice/picker", timeout=30).text
    assert "Python with 3 GB, for the fraud analysts" in page and "3G memory" in page
    lab.fresh_server("alice", "fraud-analytics", server="analytics")
    try:
        container = lab.notebook_container("alice", "analytics")
        assert container["HostConfig"]["Memory"] == 3 * GiB
        assert "FRAUD_DESK=analytics" in container["Config"]["Env"]
        assert "DATALAB_PROFILE=fraud-analytics" in container["Config"]["Env"]
    finally:
        fraud_analyst.stop("alice", "analytics")
    # bob is not in the group: neither offered nor startable
    bob = lab.login("bob")
    assert "fraud-analytics" not in offered_profiles(bob, "bob")
    assert "is not allowed for your groups" in bob.spawn("bob", "fraud-analytics", server="x").text


@pytest.mark.parametrize("profile, message", [
    ("tensorflow-gpu", "is not allowed for your groups"),
    ("crypto-miner", "is not a profile of this lab"),
])
def test_profile_outside_the_users_groups_is_refused_with_no_container(lab, profile, message):
    alice = lab.login("alice")
    r = alice.spawn("alice", profile, server="refused")
    assert r.status_code == 400 and message in r.text
    assert lab.notebook_container("alice", "refused") is None
    server = (alice.hub_api("/users/alice").json().get("servers") or {}).get("refused")
    assert not server or not server["pending"]


def test_gpu_profile_on_a_host_without_gpu_runtime_fails_at_once(lab):
    bob = lab.login("bob")
    r = bob.spawn("bob", "tensorflow-gpu", server="gpu")
    assert r.status_code == 503
    assert "no GPU runtime" in r.text
    assert lab.notebook_container("bob", "gpu") is None


def cgroup_value(lab, container, v1, v2):
    found = lab.exec(container, "sh", "-c", f"cat {v1} 2>/dev/null || cat {v2}").stdout.split()
    return found[0] if found else ""


def test_notebook_container_is_locked_down(lab):
    lab.fresh_server("alice", "python")
    c = lab.notebook_container("alice")
    assert lab.exec(c, "id", "-u").stdout.strip() == "1000"
    status = lab.exec(c, "cat", "/proc/1/status").stdout
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^CapBnd:\s+0+$", status, re.M)
    assert c["HostConfig"]["PidsLimit"] == 1024
    # the kernel enforces the profile's limits: 1 CPU, 2G, no swap on top
    quota = cgroup_value(lab, c, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max")
    assert quota == "100000"
    memory = cgroup_value(lab, c, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
    assert int(memory) == 2 * GiB
    assert c["HostConfig"]["MemorySwap"] == 2 * GiB
    assert lab.exec(c, "test", "-e", "/var/run/docker.sock", check=False).returncode != 0


def routes(lab, container):
    """The container's routing table (destination networks), from /proc/net/route."""
    nets = []
    for line in lab.exec(container, "cat", "/proc/net/route").stdout.splitlines()[1:]:
        fields = line.split()
        dest, mask = (ipaddress.IPv4Address(int(f, 16).to_bytes(4, "little")) for f in (fields[1], fields[7]))
        nets.append(ipaddress.IPv4Network(f"{dest}/{mask}"))
    return nets


def test_no_route_from_notebooks_to_docker_api_directory_or_mlflow(lab):
    lab.fresh_server("alice", "python")
    c = lab.notebook_container("alice")
    # only the lab network: no interface, and no route, into the backend network
    assert set(c["NetworkSettings"]["Networks"]) == {f"{lab.name}_lab"}
    backend = ipaddress.IPv4Network(lab.docker.inspect("network", f"{lab.name}_backend")[0]["IPAM"]["Config"][0]["Subnet"])
    assert not [n for n in routes(lab, c) if n.prefixlen and n.overlaps(backend)]
    # the services' names do not resolve, and the Docker API is not served on
    # the host's side of the container's gateway (all probes stay on this host)
    gateway = lab.docker.inspect("network", "docker_gwbridge")[0]["IPAM"]["Config"][0]["Gateway"]
    targets = [("mlflow", 5000), ("directory", 1389), ("tasks.mlflow", 5000), ("tasks.directory", 1389),
               ("featurestore", 6379), ("tasks.featurestore", 6379), (gateway, 2375), (gateway, 2376)]
    probe = (
        "import socket\n"
        "for host, port in [%s]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2).close()\n"
        "        print('REACHED', host, port)\n"
        "    except OSError as e:\n"
        "        print('blocked', host, port, type(e).__name__)\n"
    ) % ", ".join(f"({h!r}, {p})" for h, p in targets)
    out = lab.exec(c, "python3", "-c", probe).stdout
    assert "REACHED" not in out, out
    assert out.count("blocked") == len(targets), out


def test_memory_hog_loses_its_kernel_not_the_server(lab):
    alice = lab.fresh_server("alice", "python")
    token = alice.token("alice")
    kernel = Kernel(alice.server_url("alice"), token)
    assert kernel.execute("print(1)") == ("ok", "1\n")  # a live kernel before
    try:
        status, out = kernel.execute("hog = b'x' * (3 * 1024**3)", timeout=120)
        refused = status == "error" and "MemoryError" in out
        assert refused, (status, out)  # refused outright, or ...
    except (KernelDied, TimeoutError, websocket.WebSocketException):
        refused = False  # ... killed by the container's OOM killer (the server says so late, or not at all)
    finally:
        kernel.ws.close()
    container = lab.notebook_container("alice")
    assert container["State"]["Running"]
    if not refused:  # it was killed by the container's OOM killer (cgroup v1 oom_control, v2 memory.events)
        kills = lab.exec(container, "sh", "-c", "cat /sys/fs/cgroup/memory/memory.oom_control "
                         "/sys/fs/cgroup/memory.events 2>/dev/null | awk '$1 == \"oom_kill\" {print $2}'").stdout
        assert int(kills.split()[0]) > 0
    assert alice.http.get(f"{alice.server_url('alice')}api/status",
                          headers={"Authorization": f"token {token}"}, timeout=10).status_code == 200
    fresh = Kernel(alice.server_url("alice"), token)
    try:
        assert fresh.execute("print(6 * 7)") == ("ok", "42\n")
    finally:
        fresh.close()


def test_home_volume_survives_restarts_image_switches_and_is_shared_by_named_servers(lab):
    lab.fresh_server("alice", "python")
    lab.exec(lab.notebook_container("alice"), "sh", "-c", "echo fraud-notes > /home/jovyan/notes.txt")
    alice = lab.fresh_server("alice", "datascience")  # stop, then another image
    c = lab.notebook_container("alice")
    assert "datalab/datascience:" in c["Config"]["Image"]
    assert lab.exec(c, "cat", "/home/jovyan/notes.txt").stdout == "fraud-notes\n"
    # a named server next to the default one, with another image, same home
    alice.start("alice", "python", server="side")
    side = lab.notebook_container("alice", "side")
    assert side and "datalab/python:" in side["Config"]["Image"]
    assert lab.exec(side, "cat", "/home/jovyan/notes.txt").stdout == "fraud-notes\n"
    assert lab.notebook_container("alice")["State"]["Running"]
    alice.stop("alice", server="side")
    assert lab.notebook_container("alice", "side") is None
    assert f"{lab.name}-user-alice" in lab.docker.out("volume", "ls", "-q").split()


def test_team_volume_is_for_the_team_and_datasets_are_read_only(lab):
    lab.fresh_server("alice", "python")
    lab.fresh_server("bob", "python")
    lab.fresh_server("carol", "python")
    alice, bob, carol = (lab.notebook_container(u) for u in ("alice", "bob", "carol"))
    team = "/home/jovyan/teams/fraud-team"
    lab.exec(alice, "sh", "-c", f"echo from-alice > {team}/shared.txt")
    assert lab.exec(bob, "cat", f"{team}/shared.txt").stdout == "from-alice\n"
    assert lab.exec(carol, "test", "-e", team, check=False).returncode != 0  # carol is not in fraud-team
    # datasets: read-only for scientists, curated by admins (carol is a lab admin)
    denied = lab.exec(alice, "touch", "/home/jovyan/datasets/x.csv", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    lab.exec(carol, "sh", "-c", "echo a,b > /home/jovyan/datasets/cards.csv")
    assert lab.exec(alice, "cat", "/home/jovyan/datasets/cards.csv").stdout == "a,b\n"


def test_admin_stops_a_server_and_the_volume_stays(lab):
    lab.fresh_server("bob", "python")
    carol = lab.login("carol")
    servers = {u["name"]: u["servers"] for u in carol.hub_api("/users").json()}
    assert "" in servers["bob"]
    carol.stop("bob")
    assert lab.notebook_container("bob") is None
    assert f"{lab.name}-user-bob" in lab.docker.out("volume", "ls", "-q").split()
