"""The revision an image is labelled with, and what `datalab images prune`
removes and keeps, on an engine as the docker CLI shows it (the real engine:
tests/integration/test_lifecycle.py)."""

import json
import subprocess
from types import SimpleNamespace

import yaml

from datalab import deploy, images, settings as settings_mod, stack


class Engine:
    """Image tags, containers and services as `docker image ls`, `ps`, `service ls`
    and `inspect` answer."""

    def __init__(self, tags, container_images=(), services=(), digests=None):
        self.tags = tags  # "repo:tag" -> image ID
        self.digests = digests or {}  # "repo@sha256:..." -> image ID (pushed to an image registry)
        self.container_images = list(container_images)
        self.services = list(services)  # (spec image, previous spec image or None)

    def run(self, *args, check=True, **kwargs):
        if args[:2] == ("image", "ls"):  # --digests: REPOSITORY TAG DIGEST ID
            rows = [(*ref.rsplit(":", 1), "<none>", image_id) for ref, image_id in self.tags.items()]
            rows += [(ref.split("@")[0], "<none>", ref.split("@")[1], image_id) for ref, image_id in self.digests.items()]
            text = "\n".join(" ".join(row) for row in rows)
        elif args[0] == "ps":
            text = "\n".join(f"c{n}" for n in range(len(self.container_images)))
        elif args[:2] == ("service", "ls"):
            text = "\n".join(f"s{n}" for n in range(len(self.services)))
        else:
            raise AssertionError(f"unexpected docker {args}")
        return SimpleNamespace(stdout=text, returncode=0)

    def out(self, *args, **kwargs):
        return self.run(*args, **kwargs).stdout.strip()

    def inspect(self, kind, *names):
        if kind == "container":
            return [{"Image": self.container_images[int(n[1:])]} for n in names]
        if kind == "service":
            found = []
            for n in names:
                spec, previous = self.services[int(n[1:])]
                found.append({"Spec": {"TaskTemplate": {"ContainerSpec": {"Image": spec}}},
                              **({"PreviousSpec": {"TaskTemplate": {"ContainerSpec": {"Image": previous}}}}
                                 if previous else {})})
            return found
        (ref,) = names
        if ref in self.digests:
            return [{"Id": self.digests[ref]}]
        return [{"Id": self.tags[ref]}] if ref in self.tags else []


def test_prune_removes_only_datalabs_tags_that_nothing_uses():
    engine = Engine(
        tags={
            "datalab/base:build": "sha256:base",
            "datalab/hub:latest": "sha256:hub2", "datalab/hub:hub2": "sha256:hub2",
            "datalab/hub:hub1": "sha256:hub1",  # an older build: nothing uses it
            "datalab/hub:hub0": "sha256:hub0",  # a stopped container's
            "datalab/python:build": "sha256:py1", "datalab/python:latest": "sha256:py2",
            "datalab/scoring-model:fraud-v1": "sha256:m1",  # named by the lab's files (its record), lab down
            "datalab/scoring-model:fraud-v2": "sha256:m2",  # a service runs it
            "datalab/scoring-model:fraud-v0": "sha256:m0",  # what the service's rollback returns to
            "datalab/scoring-model:fraud-old": "sha256:mx",  # served once, no more
            "datalab/swarm-node:test": "sha256:node",  # not one of DataLab's lab images
            "redis:7": "sha256:redis",
        },
        container_images=["sha256:hub0", "sha256:redis"],
        services=[("datalab/scoring-model:fraud-v2@sha256:d1g3st", "datalab/scoring-model:fraud-v0")],
    )
    remove, kept = images.prune_plan(engine, named={"datalab/scoring-model:fraud-v1", "python", "no/such:image"})
    assert remove == ["datalab/hub:hub1", "datalab/scoring-model:fraud-old"]
    assert "datalab/scoring-model:fraud-v1" in kept and "datalab/hub:hub0" in kept
    assert "datalab/swarm-node:test" not in kept + remove and "redis:7" not in kept + remove


def test_model_images_in_the_image_registry_are_kept_by_digest_and_go_with_both_tags():
    registry = "10.0.0.11:5000/datalab/scoring-model"
    engine = Engine(
        tags={"datalab/scoring-model:fraud-v2": "sha256:m2", f"{registry}:fraud-v2": "sha256:m2",
              "datalab/scoring-model:fraud-v3": "sha256:m3", f"{registry}:fraud-v3": "sha256:m3",
              "datalab/scoring-model:fraud-v1": "sha256:m1", f"{registry}:fraud-v1": "sha256:m1",
              "10.0.0.11:5000/other/image:x": "sha256:other"},
        digests={f"{registry}@sha256:d2": "sha256:m2", f"{registry}@sha256:d3": "sha256:m3",
                 f"{registry}@sha256:d1": "sha256:m1",
                 # pulled back by digest once, its tags pruned since: the digest alone held it
                 f"{registry}@sha256:d0": "sha256:m0"},
        services=[(f"{registry}@sha256:d3", None)],
    )
    # v2 is on record (the lab is down, or between rollouts), v3 a service runs, v1 and v0 nothing
    remove, kept = images.prune_plan(engine, named={f"{registry}@sha256:d2"})
    assert remove == [f"{registry}:fraud-v1", f"{registry}@sha256:d0", f"{registry}@sha256:d1",
                      "datalab/scoring-model:fraud-v1"]
    assert f"{registry}@sha256:d2" in kept and f"{registry}@sha256:d3" in kept
    assert "10.0.0.11:5000/other/image:x" not in kept + remove


def test_without_a_swarm_or_a_served_version_the_builds_still_stay():
    engine = Engine(tags={"datalab/hub:latest": "sha256:hub2", "datalab/hub:hub1": "sha256:hub1",
                          "datalab/scoring-model:fraud-v1": "sha256:m1"})
    remove, kept = images.prune_plan(engine)
    assert remove == ["datalab/hub:hub1", "datalab/scoring-model:fraud-v1"] and kept == ["datalab/hub:latest"]


def test_the_lab_names_its_stack_its_profiles_and_its_served_version_even_while_down(tmp_path):
    settings = settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path)}})
    stack.stack_file(settings).write_text(yaml.safe_dump({"services": {"hub": {"image": "datalab/hub:h2"}}}))
    stack.hub_settings_file(settings).write_text(json.dumps(
        {"spawner": {"profiles": [{"name": "python", "image": "datalab/python:p1"}, {"image": None}]}}))
    deploy.deployments_dir(settings).mkdir(parents=True)
    deploy.save(settings, {"model": "fraud", "version": "1", "image": "datalab/scoring-model:fraud-v1-m1"})
    assert {"datalab/hub:h2", "datalab/python:p1", "datalab/scoring-model:fraud-v1-m1"} <= images.named_by_lab(settings)


def test_prune_names_by_digest_first_and_a_name_gone_with_its_last_tag_is_no_failure():
    class Rmi:
        def __init__(self):
            self.refs = {"r/m:v1": "m1", "r/m@sha256:d1": "m1", "datalab/scoring-model:v1": "m1"}
            self.calls = []

        def run(self, *args, check=True, **kwargs):
            self.calls.append(args)
            if args[0] == "rmi":
                missing = [ref for ref in args[1:] if ref not in self.refs]
                for ref in args[1:]:
                    self.refs.pop(ref, None)
                    if ref == "r/m:v1":  # the repository's last tag: its digest names go too
                        self.refs.pop("r/m@sha256:d1", None)
                return SimpleNamespace(returncode=1 if missing else 0, stdout="", stderr="No such image")
            return SimpleNamespace(returncode=0, stdout="", stderr="")

        def inspect(self, kind, ref):
            return [{"Id": self.refs[ref]}] if ref in self.refs else []

    engine = Rmi()
    images.prune(engine, ["datalab/scoring-model:v1", "r/m:v1", "r/m@sha256:d1"])
    assert engine.calls[0] == ("rmi", "r/m@sha256:d1", "datalab/scoring-model:v1", "r/m:v1") and not engine.refs
    engine = Rmi()
    engine.refs.pop("r/m@sha256:d1")  # gone already (a prune before it, interrupted): no failure
    images.prune(engine, ["r/m@sha256:d1", "r/m:v1", "datalab/scoring-model:v1"])
    assert not engine.refs


def test_copied_paths_reads_copy_and_add_sources_not_other_images():
    dockerfile = (
        "FROM x\n"
        "COPY --from=docker-cli /usr/bin/docker /usr/bin/docker\n"
        "COPY --chown=1000 hub/ client/ /opt/\n"
        "ADD kernels/${KERNEL}/ /tmp/kernelspec/\n"
        "COPY images/python/a.json \\\n    images/python/b.py /etc/jupyter/\n"
        "RUN cp a b\n"
    )
    assert images.copied_paths(dockerfile) == [
        "hub", "client", "kernels", "images/python/a.json", "images/python/b.py"]


def test_source_paths_follow_the_images_an_image_builds_from():
    manifest_images = images.manifest.load()
    hub = images.source_paths("hub", manifest_images)
    assert {"images/hub", "images/base", "images/constraints.txt", "hub", "client",
            "model_registry", "jupyterhub_config.py"} <= set(hub)
    assert "datalab" not in hub and "images/python" not in hub
    tensorflow = images.source_paths("tensorflow", manifest_images)
    assert {"images/tensorflow", "images/datascience", "images/python", "images/base",
            "kernels", "client", "pipelines/fraudlab"} <= set(tensorflow)
    assert "images/scoring" in images.source_paths("scoring", manifest_images)
    assert "images/tensorflow" in images.source_paths("scoring", manifest_images)


def test_git_revision_is_the_last_commit_that_changed_an_images_sources(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                               *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "a.py").write_text("1")
    git("add", "-A")
    git("commit", "-qm", "hub")
    hub_commit = git("log", "-1", "--format=%h", "--abbrev=12")
    (tmp_path / "docs.md").write_text("elsewhere")
    git("add", "-A")
    git("commit", "-qm", "docs")
    (tmp_path / "hub" / "a.py").write_text("uncommitted edit")
    assert images.git_revision(["hub", "client"], repo=tmp_path) == hub_commit
    assert images.git_revision(["docs.md"], repo=tmp_path) != hub_commit
    assert images.git_revision(["nothing-here"], repo=tmp_path) == "unknown"
