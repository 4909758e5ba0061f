"""The host: its name resolution for the lab's *.localhost names, its engine's version."""

import contextlib

import pytest

from datalab import system
from datalab.docker import DockerError


class Steps:
    def step(self, text):
        return contextlib.nullcontext()


def test_myhostname_goes_right_after_the_hosts_file_once(tmp_path):
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("passwd:         files\nhosts:          files dns\nnetworks:       files\n")
    system.ensure_localhost_names(Steps(), nsswitch)
    system.ensure_localhost_names(Steps(), nsswitch)  # a second up changes nothing
    assert nsswitch.read_text().splitlines()[1].split() == ["hosts:", "files", "myhostname", "dns"]
    assert nsswitch.read_text().splitlines()[2] == "networks:       files"


def test_a_hosts_line_that_already_has_myhostname_is_left_alone(tmp_path):
    nsswitch = tmp_path / "nsswitch.conf"
    original = "hosts: files mdns4_minimal [NOTFOUND=return] dns myhostname\n"
    nsswitch.write_text(original)
    system.ensure_localhost_names(Steps(), nsswitch)
    assert nsswitch.read_text() == original


class Nodes:
    """`docker node ls` and `docker inspect` of a Swarm's nodes."""

    def __init__(self, versions):
        self.versions = versions  # hostname -> engine version

    def out(self, *args):
        assert args == ("node", "ls", "-q")
        return "\n".join(self.versions)

    def inspect(self, kind, *names):
        assert kind == "node" and list(names) == list(self.versions)
        return [{"Description": {"Hostname": name, "Engine": {"EngineVersion": self.versions[name]}}}
                for name in names]


def test_every_node_needs_an_engine_that_drops_the_services_capabilities():
    system.check_engine_versions(Nodes({"node1": "20.10.24+dfsg1", "node2": "26.1.5", "node3": "27.0.0-rc.1"}))
    with pytest.raises(DockerError, match=r"20\.10 or later .*node2 \(19\.03\.15\)") as refused:
        system.check_engine_versions(Nodes({"node1": "20.10.24+dfsg1", "node2": "19.03.15"}))
    assert "node1" not in str(refused.value)
