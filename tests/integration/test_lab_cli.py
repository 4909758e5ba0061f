"""The datalab command against the running test lab."""

import json

import pytest

pytestmark = pytest.mark.integration


def test_status_json_lists_every_service_healthy(lab):
    out = json.loads(lab.datalab("status", "--json").stdout)
    rows = {r["service"]: r for r in out["services"]}
    assert set(rows) == {"hub", "proxy", "mlflow", "directory", "controller", "scoring-edge", "scoring",
                         "featurestore", "image-registry"}
    # scoring: 0 replicas of the bare runtime until a first deployment (then running and healthy)
    assert rows["scoring"]["health"] in ("idle", "healthy")
    assert all(r["state"] == "running" and r["health"] == "healthy" for n, r in rows.items() if n != "scoring")
    assert rows["proxy"]["url"] == "http://lab.localhost:18000/"  # the front door
    assert rows["hub"]["url"] == "http://lab.localhost:18000/hub/"
    assert rows["scoring-edge"]["url"] == "http://127.0.0.1:18500/v1/score"


def test_hub_reaches_mlflow_and_notebooks_do_not(lab):
    hub = lab.service_container("hub")
    assert lab.docker.out("exec", hub, "curl", "-fsS", "http://mlflow:5000/health") == "OK"
    lab.login("alice").start("alice")
    notebook = lab.notebook_container("alice")["Id"]
    probe = lab.docker.run("exec", notebook, "curl", "-sS", "--max-time", "3", "http://mlflow:5000/health", check=False)
    assert probe.returncode != 0  # not on the backend network: no name, no route


def test_platform_containers_are_hardened(lab):
    for service in ("hub", "proxy", "mlflow", "directory", "controller", "scoring-edge", "featurestore"):
        info = lab.docker.inspect("container", lab.service_container(service))[0]
        assert info["HostConfig"]["CapDrop"] == ["ALL"], service
        # a runaway upload or leak OOM-kills this service alone, not a neighbour
        assert info["HostConfig"]["Memory"] > 0, f"{service} has no memory limit"
        assert lab.docker.out("exec", info["Id"], "id", "-u") != "0", service


def test_secrets_are_private_and_not_in_the_stack_file(lab):
    secrets_dir = lab.settings.data_dir / "secrets"
    assert oct(secrets_dir.stat().st_mode & 0o777) == "0o700"
    stack_file = (lab.settings.data_dir / "stack.yml").read_text()
    inspected = lab.docker.out("inspect", *(lab.service_container(service) for service in
                                           ("hub", "proxy", "mlflow", "directory", "controller", "featurestore",
                                            "image-registry")))
    for path in secrets_dir.rglob("*"):
        # folders (the image registry's account for the docker CLI) are the owner's alone too
        assert oct(path.stat().st_mode & 0o777) == ("0o700" if path.is_dir() else "0o600"), path
        if path.is_dir():
            continue
        if path.suffix in ("", ".key"):
            assert path.read_text().strip() not in stack_file, path
            # nor in a container's command, arguments or environment
            assert path.read_text().strip() not in inspected, path


def test_second_up_changes_nothing(lab):
    def state():
        names = [f"{lab.name}_{s}" for s in ("hub", "mlflow", "directory")]
        specs = {s["Spec"]["Name"]: s["Spec"] for s in lab.docker.inspect("service", *names)}
        containers = {s: lab.service_container(s) for s in ("hub", "mlflow", "directory")}
        return specs, containers

    before = state()
    out = lab.datalab("up").stdout
    assert "building image" in out and "healthy" in out and "stack: unchanged" in out
    assert state() == before  # same service specs, same containers: nothing restarted
