"""Seals: a registered version's artifacts, as they were when it was
registered. The gateway refuses every write to a version's run and logged
model from its registration on; the controller writes the digest of both
(the version tag `datalab.artifacts.sha256`) the first time it sees the
version, and the gate evaluates and bakes only files that match it.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

SEAL_TAG = "datalab.artifacts.sha256"
# The run tag naming the run's evaluation set among its artifacts (the
# reference workload sets it).
EVALUATION_TAG = "datalab.evaluation"
LARGEST_MLMODEL = 1 << 20  # an MLmodel is a few KB of YAML


class Broken(ValueError):
    """The artifacts are not the ones sealed, or cannot be judged."""


@dataclass
class Fetched:
    model: Path  # the model's files (MLmodel at the top)
    run: Path  # the run's artifacts
    run_id: str | None
    digest: str

    def input_fields(self):
        """The names in the model's input signature (MLmodel, read as data): [] when
        it has none or it cannot be read, and then scoring will say what is missing.
        The file is the candidate's: one past LARGEST_MLMODEL is not read into the
        controller's memory."""
        try:
            if (self.model / "MLmodel").stat().st_size > LARGEST_MLMODEL:
                return []
            inputs = (yaml.safe_load((self.model / "MLmodel").read_text()) or {}).get("signature", {}).get("inputs")
            return [field["name"] for field in json.loads(inputs) if isinstance(field, dict) and "name" in field]
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
            return []

    def evaluation_set(self, run_tags):
        named = run_tags.get(EVALUATION_TAG)
        if not named:
            raise Broken(f"the version's run has no evaluation set (tag {EVALUATION_TAG}): the gate cannot judge it")
        path = (self.run / named).resolve()
        if not path.is_relative_to(self.run.resolve()) or not path.is_file():
            raise Broken(f"the evaluation set {named!r} is not a file among the run's artifacts")
        return path


def digest(trees):
    """sha256 over every file of the named folders ({name: folder}): where it is, and what it holds."""
    total = hashlib.sha256()
    for name, root in sorted(trees.items()):
        for path in sorted(Path(root).rglob("*")):
            if path.is_symlink():
                raise Broken(f"{name}/{path.relative_to(root)} is a link: artifacts are plain files")
            if path.is_file():
                content = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        content.update(chunk)
                total.update(f"{name}/{path.relative_to(root).as_posix()}\0{content.hexdigest()}\n".encode())
    return total.hexdigest()


def fetch(version, work):
    """Download a version's model (into work/bake/model, where deploy.bake wants
    it) and its run's artifacts (work/run), and digest them."""
    from mlflow.artifacts import download_artifacts

    model, run = Path(work, "bake", "model"), Path(work, "run")
    download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(model))
    run.mkdir(parents=True, exist_ok=True)
    if version.run_id:
        download_artifacts(run_id=version.run_id, dst_path=str(run))
    return Fetched(model, run, version.run_id, digest({"model": model, "run": run}))


def verify(version, fetched):
    """Raise Broken unless what was fetched is what the version was sealed with."""
    sealed = version.tags.get(SEAL_TAG)
    if sealed != fetched.digest:
        raise Broken(f"the artifacts of {version.name} v{version.version} are not those sealed at its registration "
                     f"(sealed sha256 {str(sealed)[:12]}..., now {fetched.digest[:12]}...): refused")
