import base64
import json
import stat
from types import SimpleNamespace

import pytest

from datalab import credentials, image_registry, settings as settings_mod
from datalab.docker import DockerError


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setattr(image_registry, "CERTS_D", tmp_path / "certs.d")
    monkeypatch.delenv(image_registry.IMAGE_REGISTRY_PASSWORD_VARIABLE, raising=False)
    s = settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path / "data"), "name": "lab1",
                                                        "advertise_addr": "10.0.0.11"},
                                                "image_registry": {"port": 5443}})
    credentials.ensure(s)
    return s


class Engine:
    """The docker SDK's APIClient, as publish() calls it."""

    def __init__(self, events):
        self.events, self.calls = events, []

    def login(self, username, password, registry, reauth):
        self.calls.append(("login", username, registry))

    def inspect_image(self, image):
        return {"Id": "sha256:" + "ab" * 32}

    def tag(self, image, repository, tag):
        self.calls.append(("tag", image, repository, tag))

    def push(self, repository, tag, auth_config, stream, decode):
        self.calls.append(("push", repository, tag, auth_config["username"]))
        yield from self.events

    def remove_image(self, image, noprune):
        self.calls.append(("untag", image))


def test_nodes_pull_from_the_managers_address_and_the_registrys_port(lab):
    assert image_registry.address(lab) == "10.0.0.11:5443"
    v6 = lab.with_overrides({"lab": {"advertise_addr": "fd00::11"}})
    assert image_registry.address(v6) == "[fd00::11]:5443"


def test_the_engine_trusts_the_lab_ca_for_that_address_only(lab, tmp_path):
    assert image_registry.trust(lab) is True
    path = tmp_path / "certs.d" / "10.0.0.11:5443" / "ca.crt"
    assert path.read_bytes() == (credentials.secrets_dir(lab) / "ca.crt").read_bytes()
    assert image_registry.trust(lab) is False  # written once
    # a purged lab takes its trust with it; a file holding another CA is not this lab's to remove
    assert image_registry.untrust(lab) is True and not path.parent.exists()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"another lab's CA")
    assert image_registry.untrust(lab) is False and path.read_bytes() == b"another lab's CA"


def test_the_cli_configuration_holds_the_account_for_the_registry_alone_unreadable_to_others(lab):
    folder = image_registry.client_config(lab)
    config = json.loads((folder / "config.json").read_text())
    password = (credentials.secrets_dir(lab) / "image_registry_password").read_text()
    assert config == {"auths": {"10.0.0.11:5443": {
        "auth": base64.b64encode(f"datalab:{password}".encode()).decode()}}}
    assert stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_the_controller_reads_the_password_from_its_secret(lab, tmp_path, monkeypatch):
    (tmp_path / "secret").write_text("from-the-secret\n")
    monkeypatch.setenv(image_registry.IMAGE_REGISTRY_PASSWORD_VARIABLE, str(tmp_path / "secret"))
    assert image_registry.auth_config(lab)["password"] == "from-the-secret"


def test_a_published_image_is_named_by_digest_and_keeps_the_tag_of_its_push(lab):
    engine = Engine([{"status": "Pushing"}, {"aux": {"Tag": "fraud-v3-abc", "Digest": "sha256:" + "cd" * 32}}])
    ref = image_registry.publish(lab, "datalab/scoring-model:fraud-v3-abc", engine)
    assert ref == "10.0.0.11:5443/datalab/scoring-model@sha256:" + "cd" * 32
    assert image_registry.is_published(lab, ref)
    assert image_registry.publish(lab, ref, Engine([])) == ref  # published already: nothing to push
    with pytest.raises(DockerError, match="repository:tag"):
        image_registry.publish(lab, "other.example:5000/datalab/scoring-model@sha256:" + "ef" * 32, Engine([]))
    assert not image_registry.is_published(lab, "datalab/scoring-model:fraud-v3-abc")
    assert engine.calls == [
        ("login", "datalab", "10.0.0.11:5443"),
        ("tag", "sha256:" + "ab" * 32, "10.0.0.11:5443/datalab/scoring-model", "fraud-v3-abc"),
        ("push", "10.0.0.11:5443/datalab/scoring-model", "fraud-v3-abc", "datalab")]


def test_a_refused_push_says_why_and_leaves_no_tag(lab):
    engine = Engine([{"errorDetail": {"message": "denied"}, "error": "denied: requested access is denied"}])
    with pytest.raises(DockerError, match="requested access is denied"):
        image_registry.publish(lab, "datalab/scoring-model:fraud-v3-abc", engine)
    assert engine.calls[-1] == ("untag", "10.0.0.11:5443/datalab/scoring-model:fraud-v3-abc")
    engine = Engine([{"status": "done"}])
    with pytest.raises(DockerError, match="no digest"):
        image_registry.publish(lab, "datalab/scoring-model:fraud-v3-abc", engine)
    assert engine.calls[-1] == ("untag", "10.0.0.11:5443/datalab/scoring-model:fraud-v3-abc")


def test_a_pull_back_counts_only_when_the_image_is_then_in_the_engine(lab):
    import docker

    class Puller(Engine):
        def __init__(self, arrives):
            super().__init__([])
            self.arrives = arrives

        def pull(self, image, auth_config):
            self.calls.append(("pull", image, auth_config["username"]))

        def inspect_image(self, image):
            if not self.arrives:  # the registry lost it: the stream said so, the call did not raise
                raise docker.errors.ImageNotFound(image)
            return {"Id": "sha256:" + "ab" * 32}

    ref = "10.0.0.11:5443/datalab/scoring-model@sha256:" + "cd" * 32
    engine = Puller(arrives=True)
    assert image_registry.pull(lab, ref, engine) is True and ("pull", ref, "datalab") in engine.calls
    assert image_registry.pull(lab, ref, Puller(arrives=False)) is False


class Registry:
    """The registry's API as image_registry._request calls it: tags, manifests by tag
    (their digests), deletes by digest."""

    def __init__(self, tags, answering=True):
        self.tags, self.answering, self.deleted = dict(tags), answering, []

    def __call__(self, settings, method, path, **kwargs):
        from datalab_client.http import HTTPError

        if not self.answering:
            raise HTTPError(0, "cannot reach the registry")
        repository, _, rest = path.partition("/scoring-model/")
        if method == "GET" and rest == "tags/list":
            if not self.tags:
                raise HTTPError(404, "NAME_UNKNOWN")
            return SimpleNamespace(json=lambda: {"name": "datalab/scoring-model", "tags": sorted(self.tags)})
        kind, _, name = rest.partition("/")
        assert kind == "manifests", path
        if method == "HEAD":
            if name not in self.tags:
                raise HTTPError(404, "MANIFEST_UNKNOWN")
            assert "application/vnd.oci.image.manifest.v1+json" in kwargs["headers"]["Accept"]
            return SimpleNamespace(headers={"Docker-Content-Digest": self.tags[name]})
        assert method == "DELETE" and name.startswith("sha256:"), (method, path)
        if name not in self.tags.values():
            raise HTTPError(404, "MANIFEST_UNKNOWN")
        self.deleted.append(name)
        self.tags = {tag: digest for tag, digest in self.tags.items() if digest != name}
        return SimpleNamespace()


OLD, SERVED, FRESH = "sha256:" + "01" * 32, "sha256:" + "02" * 32, "sha256:" + "04" * 32


def test_registry_prune_plan_deletes_the_manifests_nothing_kept_names_nor_pushed_lately(lab, monkeypatch):
    monkeypatch.setattr(image_registry, "_request", Registry(
        {"fraud-v1": OLD, "fraud-v2": SERVED, "again": SERVED, "fraud-v3": FRESH}))
    container = RegistryContainer(recent=[FRESH])
    in_use = [f"10.0.0.11:5443/datalab/scoring-model@{SERVED}", "datalab/hub:latest", "python-profile"]
    assert image_registry.prune_plan(container, lab, in_use) == {"datalab/scoring-model": ([OLD], [SERVED, FRESH])}
    (find,) = container.execs
    assert find[:2] == ("find", f"{image_registry.STORAGE}/docker/registry/v2/repositories/datalab/scoring-model"
                                "/_manifests/revisions/sha256")
    assert find[find.index("-mmin") + 1] == f"-{image_registry.RECENT_PUSH_MINUTES}"
    # a repository never pushed to holds nothing; a registry not answering deletes nothing
    monkeypatch.setattr(image_registry, "_request", Registry({}))
    assert image_registry.prune_plan(container, lab, in_use) == {"datalab/scoring-model": ([], [])}
    monkeypatch.setattr(image_registry, "_request", Registry({"fraud-v1": OLD}, answering=False))
    assert image_registry.prune_plan(container, lab, []) is None


class RegistryContainer:
    """`docker ps`, `docker exec` of the registry's task on this node: its storage's
    manifests pushed lately (`recent`), its size, its garbage collector."""

    def __init__(self, running=True, recent=()):
        self.running, self.recent, self.execs = running, recent, []

    def local_container(self, service, missing):
        assert service == "lab1_image-registry"
        if not self.running:
            raise DockerError(missing)
        return "c0ffee"

    def run(self, *args, check=True):
        assert args[:2] == ("exec", "c0ffee") and args[2] == "find", args
        self.execs.append(args[2:])
        folders = [f"{args[3]}/{digest.split(':')[1]}" for digest in self.recent]
        return SimpleNamespace(stdout="".join(f"{folder}\n" for folder in folders), returncode=0)

    def out(self, *args, **kwargs):
        assert args[:2] == ("exec", "c0ffee"), args
        self.execs.append(args[2:])
        if args[2] == "du":
            return f"{20480 if len(self.execs) == 1 else 10240}\t/var/lib/docker-registry"
        return "datalab/scoring-model\n\n9 blobs marked, 3 blobs and 1 manifests eligible for deletion\n"


def test_registry_prune_deletes_then_collects_the_layers_in_the_registrys_container(lab, monkeypatch):
    registry = Registry({"fraud-v1": OLD, "fraud-v2": SERVED})
    monkeypatch.setattr(image_registry, "_request", registry)
    container = RegistryContainer()
    gone = "sha256:" + "03" * 32  # deleted meanwhile (another prune): no failure
    report = image_registry.prune(container, lab, {"datalab/scoring-model": ([OLD, gone], [SERVED])})
    assert registry.deleted == [OLD] and registry.tags == {"fraud-v2": SERVED}
    assert ("docker-registry", "garbage-collect", image_registry.CONFIG_FILE) in container.execs
    assert report == {"blobs_deleted": 3, "storage_mb_before": 20, "storage_mb_after": 10}
    with pytest.raises(DockerError, match="does not run on this node"):
        image_registry.prune(RegistryContainer(running=False), lab, {"datalab/scoring-model": ([], [SERVED])})
