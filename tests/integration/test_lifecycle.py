"""`datalab down` keeps every piece of data; `up` brings it all back, the
served model version included when its image was removed meanwhile (pulled
back from the lab's image registry by its digest); `images prune` with the lab
up empties that registry of what nothing serves.
(Marked stops_lab: it stops the whole test lab, so it runs last.)"""

import json
import uuid

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.stops_lab]


def score_an_example(lab):
    """The edge's answer to the served model's own example transaction."""
    example = requests.get(f"{lab.edge}/v1/schema", timeout=10).json()["example"]
    if "transaction_id" in example:  # a raw model answers a known transaction from its record
        example["transaction_id"] = f"lifecycle-{uuid.uuid4().hex}"
    return requests.post(f"{lab.edge}/v1/score", json=example, timeout=10)


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
    answer = score_an_example(lab)
    assert answer.status_code == 200 and str(answer.json()["version"]) == str(serving["version"]), answer.text
    assert lab.datalab("audit", "--json").stdout == audit


def test_images_prune_deletes_unserved_versions_from_the_registry_and_collects_their_layers(lab):
    """Finding (#14): the lab's image registry only grew: every version a rollout pushed stayed,
    layers and all. With the lab up, `images prune` deletes from it the versions nothing keeps
    and no rollout can be on its way to (pushed over half an hour ago), then its garbage
    collector deletes the layers only they held. The served version stays whole (its manifest
    and every layer, shared ones included) and scoring answers."""
    from datalab import image_registry

    registry = json.loads(lab.datalab("images", "registry", "--json").stdout)
    base, ca = f"https://{registry['address']}/v2/datalab/scoring-model", registry["ca_file"]
    auth = ("datalab", (lab.settings.data_dir / "secrets" / "image_registry_password").read_text())
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}

    def manifest(digest):
        return requests.get(f"{base}/manifests/{digest}", verify=ca, auth=auth, headers=accept, timeout=10)

    def blob(digest):
        return requests.head(f"{base}/blobs/{digest}", verify=ca, auth=auth, timeout=10).status_code

    served = json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"]["image"]
    served_digest = served.rpartition("@")[2]
    # a version pushed and never served, with a layer of its own on top of layers the served one has
    unserved = f"datalab/scoring-model:lifecycle-unserved-{uuid.uuid4().hex[:6]}"
    lab.docker.run("build", "-q", "-t", unserved, "-",
                   input=f"FROM datalab/base:build\nRUN echo {unserved} > /unserved\n")
    unserved_digest = image_registry.publish(lab.settings, unserved).rpartition("@")[2]
    own_layer = manifest(unserved_digest).json()["layers"][-1]["digest"]
    served_blobs = [layer["digest"] for layer in manifest(served_digest).json()["layers"]]
    assert blob(own_layer) == 200 and own_layer not in served_blobs

    # pushed a moment ago, it may be a rollout's on its way to the service: kept
    planned = json.loads(lab.datalab("images", "prune", "--dry-run", "--json").stdout)["registry"]
    assert f"datalab/scoring-model@{unserved_digest}" in planned["kept"], planned
    # as if pushed two hours ago (the registry's storage dates a push by its manifest's link)
    link = (f"{image_registry.STORAGE}/docker/registry/v2/repositories/datalab/scoring-model/_manifests/revisions/"
            f"sha256/{unserved_digest.split(':')[1]}/link")
    lab.docker.run("exec", lab.service_containers("image-registry")[0], "touch", "-d", "-2 hours", link)
    planned = json.loads(lab.datalab("images", "prune", "--dry-run", "--json").stdout)["registry"]
    assert f"datalab/scoring-model@{unserved_digest}" in planned["would_remove"], planned
    assert f"datalab/scoring-model@{served_digest}" in planned["kept"], planned
    assert manifest(unserved_digest).status_code == 200, "a dry run deletes nothing"

    pruned = json.loads(lab.datalab("images", "prune", "--json").stdout)["registry"]
    assert f"datalab/scoring-model@{unserved_digest}" in pruned["removed"], pruned
    assert pruned["blobs_deleted"] >= 1 and pruned["storage_mb_after"] <= pruned["storage_mb_before"], pruned
    assert manifest(unserved_digest).status_code == 404 and blob(own_layer) == 404
    assert manifest(served_digest).status_code == 200
    assert [digest for digest in served_blobs if blob(digest) != 200] == [], "a layer the served version needs went"
    assert score_an_example(lab).status_code == 200
