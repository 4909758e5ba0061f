"""Faults: the directory goes away and comes back; the hub restarts.
(Marked disruptive: they stop and restart services of the test lab, so they
run after every test that needs it steady.)"""

import pytest
import requests
from conftest import RequestLoad

pytestmark = [pytest.mark.integration, pytest.mark.disruptive]


def test_directory_down_gives_a_clear_error_and_recovers(lab):
    directory = f"{lab.name}_directory"
    lab.docker.run("service", "scale", "--detach", f"{directory}=0", timeout=120)
    lab.wait_for(lambda: not lab.service_containers("directory"), "directory stopped")
    try:
        r = lab.session().login("alice", lab.logins["alice"])
        assert r.status_code == 503
        assert "directory service cannot be reached" in r.text
        assert lab.session().http.get(lab.url + "/hub/health", timeout=5).status_code == 200
    finally:
        lab.docker.run("service", "scale", "--detach", f"{directory}=1", timeout=120)
    lab.wait_healthy()
    assert lab.session().login("alice", lab.logins["alice"]).status_code == 200


def test_hub_restart_keeps_users_groups_and_running_servers_reachable_throughout(lab):
    alice = lab.login("alice")
    alice.start("alice")
    assert alice.open_server("alice").status_code == 200
    container_before = lab.notebook_container("alice")["Id"]
    hub_before = lab.service_container("hub")
    # alice works in her server (API calls with her token) while the hub restarts: her
    # route lives in the proxy, a service of its own, and her server knows her token
    work = requests.Session()
    work.headers["Authorization"] = f"token {alice.token('alice')}"
    contents = alice.server_url("alice") + "api/contents"
    assert work.get(contents, timeout=10).status_code == 200
    probe = requests.Session()

    with RequestLoad(lambda: work.get(contents, timeout=10), pause=0.2) as her_requests, \
            RequestLoad(lambda: probe.get(lab.url + "/hub/health", timeout=5), pause=0.2) as hub_health:
        lab.docker.run("service", "update", "--force", "--detach", f"{lab.name}_hub", timeout=180)
        lab.wait_for(lambda: lab.service_containers("hub") not in ([], [hub_before]), "new hub task")
        lab.wait_healthy()
    assert hub_health.failures, "the hub never went away: the restart tested nothing"
    assert her_requests.answered and not her_requests.failures, (
        f"{len(her_requests.failures)} of alice's requests failed while the hub restarted: {her_requests.failures[:5]}")

    carol = lab.login("carol")
    users = {u["name"]: u for u in carol.hub_api("/users").json()}
    assert {"alice", "carol"} <= set(users)
    assert "fraud-team" in users["alice"]["groups"]
    assert users["alice"]["servers"][""]["ready"] is True
    assert lab.notebook_container("alice")["Id"] == container_before
    # alice's existing browser session still reaches her running server
    assert alice.contents("alice").status_code == 200
