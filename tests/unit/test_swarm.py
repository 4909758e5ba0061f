"""Removing a stopped lab's containers before its volumes (datalab down --purge)."""

from types import SimpleNamespace

import pytest

from datalab import settings as settings_mod, swarm
from datalab.docker import DockerError


class Engine:
    """`docker ps -aq` answers in turn, as Swarm removes containers itself meanwhile;
    `docker rm -f` of a container it is already removing fails."""

    def __init__(self, listings):
        self.listings, self.removed = list(listings), []

    def out(self, *args):
        assert args[:2] == ("ps", "-aq") and "label=com.docker.stack.namespace=lab1" in args, args
        return "\n".join(self.listings.pop(0) if len(self.listings) > 1 else self.listings[0])

    def run(self, *args, check=True):
        assert args[:2] == ("rm", "-f") and check is False
        self.removed.append(args[2:])
        return SimpleNamespace(returncode=1, stderr="removal of container a1 is already in progress")


@pytest.fixture
def lab(monkeypatch):
    monkeypatch.setattr(swarm.time, "sleep", lambda seconds: None)
    return settings_mod.defaults().with_overrides({"lab": {"name": "lab1"}})


def test_containers_swarm_is_still_removing_are_waited_for_not_a_failure(lab):
    engine = Engine([["a1", "b2"], ["a1"], []])
    swarm.remove_containers(engine, lab)
    assert engine.removed == [("a1", "b2"), ("a1",)]


def test_a_container_that_never_goes_is_named(lab):
    with pytest.raises(DockerError, match="still there after 0 s: a1"):
        swarm.remove_containers(Engine([["a1"]]), lab, timeout=0)
