"""The image manifest (images/manifest.toml): the one description of every
notebook image, what it is built from and the kernel it installs, read by
builds, `datalab images` and the profiles (settings: [[profiles]], which
name an image here)."""

import tomllib
from dataclasses import dataclass
from pathlib import Path

MANIFEST = Path(__file__).resolve().parent.parent / "images" / "manifest.toml"
FIELDS = {"name", "description", "from", "kernel", "build"}


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class NotebookImage:
    name: str
    description: str
    parent: str
    kernel: str
    build: str

    @property
    def built_by_default(self):
        return self.build == "default"


def load(path=MANIFEST):
    entries = tomllib.loads(Path(path).read_text()).get("image", [])
    images = {}
    for entry in entries:
        missing, unknown = FIELDS - set(entry), set(entry) - FIELDS
        if missing or unknown:
            raise ManifestError(f"{path}: image {entry.get('name', '?')}: "
                                f"missing {sorted(missing)} unknown {sorted(unknown)}")
        if entry["from"] != "base" and entry["from"] not in images:
            raise ManifestError(f"{path}: {entry['name']} builds FROM {entry['from']}, "
                                "which is not listed before it")
        if entry["build"] not in ("default", "on-request"):
            raise ManifestError(f"{path}: {entry['name']}: build must be 'default' or 'on-request'")
        images[entry["name"]] = NotebookImage(
            name=entry["name"], description=entry["description"], parent=entry["from"],
            kernel=entry["kernel"], build=entry["build"],
        )
    return images


def with_ancestors(images, names):
    """`names` plus every image they build FROM, parents first, in manifest order."""
    wanted = set()
    for name in names:
        if name not in images:
            raise ManifestError(f"no image '{name}' in the manifest (have: {', '.join(images)})")
        while name != "base":
            wanted.add(name)
            name = images[name].parent
    return [n for n in images if n in wanted]
