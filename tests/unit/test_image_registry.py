import base64
import json
import stat

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
