"""`datalab down` keeps every piece of data; `up` brings it all back, the
served model version included when its image was removed meanwhile (pulled
back from the lab's image registry by its digest).
(Marked stops_lab: it stops the whole test lab, so it runs last.)"""

import json
import uuid

import pytest
import requests

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
    assert serving, "the suite's scoring tests deploy a model before this test runs"
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

    # `datalab images prune` on the stopped lab: a model image nothing uses goes; the version on
    # record stays although no service or container holds it now, and so do the latest builds
    stale = f"datalab/scoring-model:lifecycle-stale-v{uuid.uuid4().hex[:6]}"
    lab.docker.run("build", "-q", "-t", stale, "-", input=f"FROM datalab/base:build\nLABEL org.datalab.test={stale}\n")
    planned = json.loads(lab.datalab("images", "prune", "--dry-run", "--json").stdout)
    served_tags = lab.docker.inspect("image", serving["image"])[0]["RepoTags"]
    assert stale in planned["would_remove"] and set(served_tags) <= set(planned["kept"]), planned
    assert lab.docker.inspect("image", stale), "a dry run removes nothing"
    pruned = json.loads(lab.datalab("images", "prune", "--json").stdout)
    assert stale in pruned["removed"] and not lab.docker.inspect("image", stale)
    assert {*served_tags, "datalab/hub:latest", "datalab/python:latest"} <= set(pruned["kept"])
    assert all(lab.docker.inspect("image", ref) for ref in pruned["kept"])

    # what an operator short of disk does to a stopped lab: every unused image goes, the served one too
    serving_id = lab.docker.out("image", "inspect", "-f", "{{.Id}}", serving["image"])
    lab.docker.run("rmi", "-f", serving_id)

    up = lab.datalab("up")
    assert f"{serving['image']} is no longer in the engine" in up.stdout + up.stderr
    assert f"pulling {serving['model']} v{serving['version']} from the image registry" in up.stdout
    assert "baking" not in up.stdout, up.stdout
    alice = lab.login("alice")  # same password: the directory's data survived
    alice.start("alice")
    alice.open_server("alice")
    file = alice.http.get(f"{alice.server_url('alice')}api/contents/keep-me.txt", timeout=30)
    assert file.status_code == 200 and file.json()["content"] == "model notes"
    # what served serves again, the very image (by digest), and the promotions' audit trail is intact
    restored = json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"]
    kept = ("image", "model", "version", "run_id", "model_digest", "replicas", "threshold")
    assert {k: restored[k] for k in kept} == {k: serving[k] for k in kept}, (restored, serving)
    assert lab.docker.inspect("image", restored["image"])
    example = requests.get(f"{lab.edge}/v1/schema", timeout=10).json()["example"]
    if "transaction_id" in example:  # a raw model answers a known transaction from its record
        example["transaction_id"] = f"lifecycle-{uuid.uuid4().hex}"
    answer = requests.post(f"{lab.edge}/v1/score", json=example, timeout=10)
    assert answer.status_code == 200 and str(answer.json()["version"]) == str(serving["version"]), answer.text
    assert lab.datalab("audit", "--json").stdout == audit
