"""Ansible provisions three machines into a Swarm and runs DataLab on them.

The machines are three containers on a private network, each running its
own dockerd (ansible/test/node, built FROM the local Debian base); Ansible
reaches them with the docker connection plugin. Runs after the single-node
suite, whose images and model image it loads onto the nodes.

Each node's engine store (/var/lib/docker) is a volume kept between runs, as a
machine's disk is: a run starts each node with its Swarm left, its containers,
volumes and networks removed and the images this run does not use deleted, so
site.yml sends a node only the images that changed since (about 10 GB on the
host for the three; `docker volume rm datalab-multinode-node1-engine ...` reclaims it).
"""

import json
import os
import subprocess
import time

import pytest
import requests
import yaml
from conftest import REPO, ScoringLoad

from datalab.images import MODEL_REPOSITORY, PLATFORM_IMAGES

pytestmark = [pytest.mark.integration, pytest.mark.multinode]

NODES = ("node1", "node2", "node3")
NETWORK = "dltest-nodes"
NODE_IMAGE = "datalab/swarm-node:test"
ANSIBLE = REPO / ".venv-ansible" / "bin"
# A node runs its own engine: every capability but one the host lacks, and the host's cgroups
# (--privileged fails: the host's bounding set lacks CAP_SYS_RESOURCE); its /var/lib/docker is a
# volume, so the inner engine gets overlay2.
NODE_FLAGS = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
              "--security-opt", "apparmor=unconfined", "--security-opt", "systempaths=unconfined",
              "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]


def container(node):
    return f"dltest-{node}"


def engine_store(node):
    # not named after the test lab: its purge (`down --purge`, at the suite's end) deletes
    # every volume named so, and these are to outlive it
    return f"datalab-multinode-{node}-engine"


def remove_nodes(docker):
    """The node containers and their network; their engine stores stay (module docstring)."""
    for node in NODES:
        docker.run("rm", "-f", container(node), check=False)
    docker.run("network", "rm", NETWORK, check=False)


def reset_engine(lab, node, kept_ids):
    """A node started on a kept engine store, as a machine fresh for site.yml that
    holds some images already: no Swarm, containers, volumes (but the image
    registry's) or networks of the last run, and no image but those in kept_ids
    (the ones this run sends it or it pulls) and the model image it pulled last
    (a worker keeps what it pulled: nothing prunes workers yet; so a new version
    pulls its own layers, not the scoring runtime's again)."""
    on_node(lab, node, "docker", "swarm", "leave", "--force", check=False)
    containers = on_node(lab, node, "docker", "ps", "-aq").stdout.split()
    if containers:
        on_node(lab, node, "docker", "rm", "-f", *containers)
    # the image registry's blobs stay, as on a machine: what was pushed before is not pushed again
    volumes = [v for v in on_node(lab, node, "docker", "volume", "ls", "-q").stdout.split()
               if v != "dlmulti_image-registry-data"]
    if volumes:
        on_node(lab, node, "docker", "volume", "rm", "-f", *volumes)
    on_node(lab, node, "docker", "network", "prune", "-f")
    images = [line.split() for line in on_node(lab, node, "docker", "images", "--no-trunc", "--format",
                                               "{{.ID}} {{.Repository}} {{.CreatedAt}}").stdout.splitlines()]
    pulled = sorted((created, image_id) for image_id, repository, *created in images
                    if repository.endswith(f"/{MODEL_REPOSITORY}"))
    stale = {image_id for image_id, *_ in images} - kept_ids - {image_id for _, image_id in pulled[-1:]}
    if stale:
        on_node(lab, node, "docker", "rmi", "-f", *stale)


def on_node(lab, node, *cmd, check=True):
    return lab.docker.run("exec", container(node), *cmd, check=check)


def playbook(inventory, timeout=2400):
    # ansible.cfg times each task (the output is kept beside the inventory): where the suite's minutes go
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "PATH": f"{ANSIBLE}:{os.environ['PATH']}"}
    return subprocess.run([ANSIBLE / "ansible-playbook", "-i", str(inventory), "site.yml"], cwd=REPO / "ansible",
                          env=env, capture_output=True, text=True, timeout=timeout)


def recap(output):
    """{host: {"ok": n, "changed": n, "failed": n, ...}} from PLAY RECAP."""
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        if ":" in line and "ok=" in line:
            host, _, counts = line.partition(":")
            hosts[host.strip()] = {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
    return hosts


@pytest.fixture(scope="module")
def cluster(lab, tmp_path_factory):
    """Three nodes provisioned by site.yml; yields (inventory path, first run's output, model image)."""
    serving = json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"]
    assert serving, "the single-node suite deploys a model before this module runs"
    docker = lab.docker
    # the test lab's model image, by the tag it was baked under: what a site hands Ansible
    model = docker.inspect("image", serving["image"])[0]
    model_tag = next(tag for tag in model["RepoTags"] if tag.startswith(f"{MODEL_REPOSITORY}:"))
    remove_nodes(docker)
    docker.run("build", "-q", "-t", NODE_IMAGE, "--build-arg", "BASE_IMAGE=datalab/base:build",
               str(REPO / "ansible" / "test" / "node"), timeout=900)
    docker.run("network", "create", NETWORK)
    for node in NODES:
        docker.run("run", "-d", "--name", container(node), "--hostname", node, "--network", NETWORK,
                   "-v", f"{engine_store(node)}:/var/lib/docker", *NODE_FLAGS, NODE_IMAGE)
    work = tmp_path_factory.mktemp("ansible")
    node = {"ansible_connection": "community.docker.docker", "ansible_become": False,
            "ansible_python_interpreter": "/usr/bin/python3"}
    inventory = {"all": {"children": {
        "managers": {"hosts": {"node1": {**node, "ansible_host": container("node1")}}},
        "workers": {"hosts": {n: {**node, "ansible_host": container(n)} for n in NODES[1:]}},
        "gpu_workers": {"hosts": {}},
    }, "vars": {
        "datalab_image_source": "present",  # built by the single-node suite
        # no notebook server starts here: the platform's images only (the notebook images are
        # most of a manager's bundle, and every byte of it is saved, copied and loaded)
        "datalab_manager_images": [*PLATFORM_IMAGES],
        "datalab_image_dir": "/var/tmp/datalab-test-images",
        "datalab_extra_images": [model_tag],
        "datalab_scoring_image": model_tag,
        "datalab_scoring_replicas": 2,
        "datalab_settings": {"lab": {"name": "dlmulti", "data_dir": "/var/lib/datalab", "demo": False},
                             # replicas on every node: the model image is loaded on each
                             "directory": {"builtin": True}, "scoring": {"replicas": 2, "nodes": "all"}},
    }}}
    (work / "hosts.yml").write_text(yaml.safe_dump(inventory))
    image_ids = {name: docker.inspect("image", f"datalab/{name}:latest")[0]["Id"] for name in PLATFORM_IMAGES}
    # workers pull the model image from the cluster's registry: it is theirs to keep too
    kept = {"node1": {*image_ids.values(), model["Id"]}, "node2": {model["Id"]}, "node3": {model["Id"]}}
    for node_name in NODES:  # the engines answer before Ansible starts
        lab.wait_for(lambda: on_node(lab, node_name, "docker", "info", check=False).returncode == 0,
                     f"dockerd in {node_name}", timeout=60)
        reset_engine(lab, node_name, kept[node_name])
    try:
        first = playbook(work / "hosts.yml")
        (work / "site-first.log").write_text(first.stdout + first.stderr)
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        yield work / "hosts.yml", first.stdout, model_tag
    finally:  # a failed run too: the nodes' volumes would keep the test lab's purge from finishing
        if not os.environ.get("DATALAB_KEEP_TEST_LAB"):
            remove_nodes(docker)


def node_ip(lab, node):
    return lab.docker.out("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}',
                          container(node))


def test_site_forms_a_three_node_swarm_and_the_stack_converges(lab, cluster):
    inventory, first, model_image = cluster
    nodes = on_node(lab, "node1", "docker", "node", "ls", "--format",
                    "{{.Hostname}} {{.Status}} {{.ManagerStatus}}").stdout.split("\n")
    assert sorted(line.split()[0] for line in nodes if line) == list(NODES)
    assert all(" Ready" in line for line in nodes if line), nodes
    status = json.loads(on_node(lab, "node1", "datalab", "status", "--json").stdout)["services"]
    assert {r["service"] for r in status} == {"hub", "proxy", "mlflow", "directory", "controller", "scoring-edge",
                                              "scoring", "featurestore", "image-registry"}
    assert all(r["state"] == "running" and r["health"] == "healthy" for r in status), status
    labels = json.loads(on_node(lab, "node1", "docker", "node", "inspect", "-f", "{{json .Spec.Labels}}",
                                "node1").stdout)
    assert labels == {"datalab.home": "true"}


def test_a_scoring_request_is_answered_through_the_edge(lab, cluster):
    _, _, model_image = cluster
    edge = f"http://{node_ip(lab, 'node1')}:8500"
    example = requests.get(f"{edge}/v1/schema", timeout=10).json()["example"]
    answer = requests.post(f"{edge}/v1/score", json=example, timeout=10).json()
    model = lab.docker.inspect("image", model_image)[0]["Config"]["Labels"]
    assert answer["model"] == model["org.datalab.model"] and answer["version"] == model["org.datalab.model-version"]
    assert answer["decision"] in ("allow", "block")


def task_results(output, task):
    """{host: "ok" | "changed" | "skipping" | ...} of one task in a playbook's output."""
    results, inside = {}, False
    for line in output.splitlines():
        if line.startswith("TASK ["):
            inside = line.startswith(f"TASK [{task}]")
        elif inside and line.split(":", 1)[0] in ("ok", "changed", "skipping", "fatal"):
            host = line.split("[", 1)[1].split("]", 1)[0].split(" ->")[0]
            results[host] = line.split(":", 1)[0]
    return results


def test_workers_pull_the_model_image_by_digest_from_the_labs_registry_and_are_sent_no_bundle(lab, cluster):
    _, first, _ = cluster
    registry = json.loads(on_node(lab, "node1", "datalab", "images", "registry", "--json").stdout)
    assert registry["address"] == f"{node_ip(lab, 'node1')}:5000"
    image = on_node(lab, "node1", "docker", "service", "inspect", "-f", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                    "dlmulti_scoring").stdout.strip()
    assert image.startswith(f"{registry['address']}/datalab/scoring-model@sha256:"), image
    nodes = set(on_node(lab, "node1", "docker", "service", "ps", "--filter", "desired-state=running", "--format",
                        "{{.Node}}", "dlmulti_scoring").stdout.split())
    workers = nodes - {"node1"}
    assert workers, nodes
    for worker in workers:
        held = json.loads(on_node(lab, worker, "docker", "image", "inspect", "-f", "{{json .RepoDigests}}",
                                  image).stdout)
        assert image in held, held  # pulled from the registry, by that digest
        ca = on_node(lab, worker, "cat", registry["trust_file"]).stdout
        assert ca.strip() == registry["ca"].strip()  # each engine trusts the lab's CA for it
    copied = task_results(first, "datalab : Copy the bundle over")
    assert copied.get("node2") == copied.get("node3") == "skipping", copied


def test_a_second_run_changes_nothing(lab, cluster):
    inventory, _, _ = cluster
    again = playbook(inventory)
    assert again.returncode == 0, again.stdout[-6000:]
    hosts = recap(again.stdout)
    task, changes = None, []  # what changed, task by task, and what `datalab up` said of the stack
    for line in again.stdout.splitlines():
        task = line if line.startswith("TASK [") else task
        if line.startswith("changed:") or "'stack: " in line:  # the YAML callback's quoting of the debug line
            changes.append((task, line))
    assert set(hosts) == set(NODES) and all(h["changed"] == 0 and h["failed"] == 0 for h in hosts.values()), (
        hosts, changes)


def test_scoring_keeps_answering_when_a_worker_stops(lab, cluster):
    edge = f"http://{node_ip(lab, 'node1')}:8500"
    tasks = on_node(lab, "node1", "docker", "service", "ps", "--filter", "desired-state=running",
                    "--format", "{{.Node}}", "dlmulti_scoring").stdout.split()
    worker = next((n for n in tasks if n != "node1"), "node2")
    example = requests.get(f"{edge}/v1/schema", timeout=10).json()["example"]
    with ScoringLoad(f"{edge}/v1/score", example, pause=0.05) as load:
        time.sleep(3)
        lab.docker.run("stop", "-t", "1", container(worker))
        lab.wait_for(lambda: f"{worker} Down" in on_node(lab, "node1", "docker", "node", "ls", "--format",
                                                         "{{.Hostname}} {{.Status}}").stdout,
                     f"the Swarm seeing {worker} down", timeout=120)
        time.sleep(20)
    assert len(load.answered) > 100 and load.failures == [], (len(load.answered), load.failures[:5])
