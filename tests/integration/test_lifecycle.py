"""`datalab down` keeps every piece of data; `up` brings it all back.
(Marked stops_lab: it stops the whole test lab, so it runs last.)"""

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.stops_lab]


def test_down_keeps_data_and_purge_needs_confirmation(lab):
    alice = lab.login("alice")
    alice.start("alice")
    alice.open_server("alice")
    xsrf = [c.value for c in alice.http.cookies if c.name == "_xsrf" and c.path.startswith("/user/alice")]
    put = alice.http.put(
        f"{alice.server_url('alice')}api/contents/keep-me.txt",
        json={"type": "file", "format": "text", "content": "model notes"},
        headers={"X-XSRFToken": xsrf[0] if xsrf else ""},
    )
    assert put.status_code in (200, 201), put.text

    serving = json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"]
    audit = lab.datalab("audit", "--json").stdout

    refused = lab.datalab("down", "--purge", check=False)  # no tty, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert lab.service_containers("hub"), "a refused purge must not stop anything"

    lab.datalab("down")
    assert not lab.service_containers("hub") and lab.notebook_container("alice") is None
    volumes = lab.docker.out("volume", "ls", "-q").split()
    assert {f"{lab.name}-user-alice", f"{lab.name}_hub-data", f"{lab.name}-team-fraud-team",
            f"{lab.name}-datasets"} <= set(volumes)
    assert (lab.settings.data_dir / "secrets" / "cookie_secret").exists()

    lab.datalab("up")
    alice = lab.login("alice")  # same password: the directory's data survived
    alice.start("alice")
    alice.open_server("alice")
    file = alice.http.get(f"{alice.server_url('alice')}api/contents/keep-me.txt", timeout=30)
    assert file.status_code == 200 and file.json()["content"] == "model notes"
    # what served serves again, and the promotions' audit trail is intact
    assert json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"] == serving
    assert lab.datalab("audit", "--json").stdout == audit
