"""Image builds: the local Debian base, then DataLab's images FROM it.

No registry is needed: when the base image cannot be pulled it is made with
debootstrap. Each image is tagged `latest` and with its image ID, and the
stack and the hub refer to the ID tag, so a service is updated exactly when
its image changed. Notebook images come from images/manifest.toml.
"""

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from . import __version__, manifest
from .docker import Docker, DockerError

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
REPOSITORY = "datalab"
# Platform images in build order; each builds FROM datalab/base, except those
# in SERVING, built after the notebook image they build FROM.
PLATFORM_IMAGES = ("directory", "mlflow", "hub", "controller", "edge", "featurestore", "image-registry", "scoring")
SERVING = {"scoring": "tensorflow"}
MODEL_REPOSITORY = f"{REPOSITORY}/scoring-model"  # model versions baked for scoring (datalab/deploy.py)
KEPT_TAGS = ("latest", "build")  # what builds, the stack and the hub start from


def image_ref(name, image_id):
    return f"{REPOSITORY}/{name}:{image_id.split(':')[-1][:12]}"


def current_ref(docker: Docker, name):
    """The ID tag of the latest build of `name`, or None if never built."""
    found = docker.inspect("image", f"{REPOSITORY}/{name}:latest")
    return image_ref(name, found[0]["Id"]) if found else None


def copied_paths(dockerfile_text):
    """The build-context paths a Dockerfile's COPY and ADD lines take (not those
    --from another image); a variable cuts the path short (kernels/${KERNEL}/ is
    kernels/)."""
    paths = []
    for line in dockerfile_text.replace("\\\n", " ").splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD") or any(w.startswith("--from") for w in words):
            continue
        for source in [w for w in words[1:] if not w.startswith("--")][:-1]:
            paths.append(source.split("$")[0].rstrip("/") or ".")
    return paths


def source_paths(name, images):
    """The repository paths image `name` is built from: its folder and those of
    the images it builds FROM, what their Dockerfiles copy from the context,
    and the CLI layer's sources for notebook images."""
    chain = [name]
    while chain[-1] != "base":
        chain.append(images[chain[-1]].parent if chain[-1] in images else SERVING.get(chain[-1], "base"))
    paths = set()
    for link in chain:
        paths.add(f"images/{link}")
        paths.update(copied_paths((IMAGES_DIR / link / "Dockerfile").read_text()))
    if name in images:
        paths.update(copied_paths(WITH_CLI))
    return sorted(paths)


def git_revision(paths, repo=REPO):
    # The last commit that changed one of `paths` (no "-dirty"): neither a commit
    # elsewhere nor an uncommitted edit relabels, and so restarts, a service (or
    # makes an unchanged image one more to send to every node); changed content
    # gets new layers anyway.
    proc = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h", "--abbrev=12", "--", *paths],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def ensure_debian_base(docker: Docker, settings, steps):
    tag = settings["build"]["base_image"]
    if docker.inspect("image", tag):
        return tag
    with steps.step(f"pulling {tag}"):
        pulled = docker.run("pull", tag, check=False, timeout=120).returncode == 0
    if pulled:
        return tag
    with steps.step(f"making {tag} locally with debootstrap (no registry reachable)"):
        suite = tag.split(":")[-1].split("-")[0]
        with tempfile.TemporaryDirectory(prefix="datalab-rootfs-") as root:
            subprocess.run(
                ["debootstrap", "--variant=minbase", suite, root, settings["build"]["debian_mirror"]],
                check=True, stdout=subprocess.DEVNULL,
            )
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run([docker.cli, "import", "-", tag], stdin=tar.stdout, check=True,
                           stdout=subprocess.DEVNULL)
            tar.wait()
    return tag


def build(docker: Docker, name, steps, build_args, log_dir, no_cache=False, durations=None):
    """docker build images/<name> as datalab/<name>:build, showing the steps that run."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"build-{name}.log"
    args = [docker.cli, "build", "-f", str(IMAGES_DIR / name / "Dockerfile"), "-t", build_tag(name)]
    if no_cache:
        args.append("--no-cache")
    started = time.monotonic()
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    with steps.step(f"building image {name}"), open(log_path, "w") as log:
        step_line = None
        proc = subprocess.Popen(args + [str(REPO)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            # Show the steps that actually run, not those taken from the cache.
            if re.match(r"Step \d+/\d+ : ", line):
                step_line = line.strip()
            elif line.startswith(" ---> Running in") and step_line:
                steps.info(f"  {name}: {step_line[:110]}")
                step_line = None
        if proc.wait() != 0:
            raise DockerError(f"building {name} failed; full log in {log_path}")
    if durations is not None:
        durations[name] = time.monotonic() - started
    return build_tag(name)


def build_tag(name):
    return f"{REPOSITORY}/{name}:build"


# The last layer of every notebook image: DataLab's client library (client/:
# `datalab jobs ...` in a terminal, `from datalab_client.jobs import JobsClient`
# in Python) with the `fraudlab` library of the reference workload beside it
# (see client/pyproject.toml), installed as a package.
WITH_CLI = """
USER root
COPY client/ /opt/datalab-client/
COPY pipelines/fraudlab/ /opt/datalab-client/fraudlab/
ENV MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
RUN pip install --quiet /opt/datalab-client && rm -rf /opt/datalab-client \\
 && printf '#!/bin/sh\\nexec python3 -m datalab_client.cli "$@"\\n' > /usr/local/bin/datalab && chmod 755 /usr/local/bin/datalab \\
 && datalab --help >/dev/null
USER 1000
"""


def finish(docker: Docker, name, labels, with_cli=False):
    """Label the build (OCI labels, the git revision of its sources) as datalab/<name>:latest and
    its ID tag, adding the CLI to notebook images. Kept apart from the build
    itself so that neither a new revision nor a CLI change invalidates the
    layer cache of the images built FROM this one."""
    args = ["build", "-q", "-t", f"{REPOSITORY}/{name}:latest", "-f", "-"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    dockerfile = f"FROM {build_tag(name)}\n" + (WITH_CLI if with_cli else "")
    image_id = docker.out(*args, str(REPO), input=dockerfile)
    ref = image_ref(name, image_id)
    docker.run("tag", image_id, ref)
    return ref


def default_targets(images):
    return list(PLATFORM_IMAGES) + [n for n, img in images.items() if img.built_by_default]


def build_all(docker: Docker, settings, steps, names=None, no_cache=False, durations=None):
    """Build the base and `names` (default: the platform and the default
    notebook images), each after the images it builds FROM; returns
    {name: ID-tagged reference} of what was built."""
    images = manifest.load()
    names = default_targets(images) if names is None else list(names)
    unknown = [n for n in names if n not in PLATFORM_IMAGES and n not in images]
    if unknown:
        raise DockerError(f"no image named {', '.join(unknown)} "
                          f"(have: {', '.join(list(PLATFORM_IMAGES) + list(images))})")
    notebook = manifest.with_ancestors(images, [n for n in names if n in images] + [
        SERVING[n] for n in names if n in SERVING])
    debian = ensure_debian_base(docker, settings, steps)
    staging = REPO / ".build"
    staging.mkdir(exist_ok=True)
    shutil.copyfile(settings["build"]["ca_bundle"], staging / "ca-bundle.crt")
    log_dir = settings.data_dir / "logs"
    labels = {
        "org.opencontainers.image.vendor": "DataLab",
        "org.opencontainers.image.version": __version__,
        "org.opencontainers.image.source": "https://datalab.example/datalab.git",
    }
    opts = {"no_cache": no_cache, "durations": durations}
    base = build(docker, "base", steps, {"BASE_IMAGE": debian}, log_dir, **opts)
    parents = {"base": base}
    refs = {}

    def labels_of(name):
        return {**labels, "org.opencontainers.image.title": f"datalab-{name}",
                "org.opencontainers.image.revision": git_revision(source_paths(name, images))}

    for name in [n for n in PLATFORM_IMAGES if n in names and n not in SERVING]:
        build(docker, name, steps, {"BASE_IMAGE": base}, log_dir, **opts)
        refs[name] = finish(docker, name, labels_of(name))
    for name in notebook:
        img = images[name]
        parents[name] = build(docker, name, steps, {"BASE_IMAGE": parents[img.parent], "KERNEL": img.kernel},
                              log_dir, **opts)
        refs[name] = finish(docker, name, {
            **labels_of(name), "org.opencontainers.image.description": img.description,
        }, with_cli=True)
    for name, parent in SERVING.items():
        if name in names:
            build(docker, name, steps, {"BASE_IMAGE": parents[parent]}, log_dir, **opts)
            refs[name] = finish(docker, name, labels_of(name))
    return refs


def listing(docker: Docker):
    """Every image DataLab knows: name, reference, size, whether built, what it is."""
    images = manifest.load()
    rows = []
    for name in list(PLATFORM_IMAGES) + list(images):
        found = docker.inspect("image", f"{REPOSITORY}/{name}:latest")
        img = images.get(name)
        rows.append({
            "name": name,
            "kind": "notebook" if img else "platform",
            "built": bool(found),
            "ref": image_ref(name, found[0]["Id"]) if found else None,
            "size_mb": round(found[0]["Size"] / 1e6) if found else None,
            "revision": (found[0]["Config"].get("Labels") or {}).get("org.opencontainers.image.revision") if found else None,
            "build": img.build if img else "default",
            "description": img.description if img else f"DataLab {name} service",
        })
    return rows


def named_by_lab(settings):
    """Every string of the lab's own files that may name an image: its stack file, the
    hub's runtime settings (the profiles' images, the helpers'), and the served version
    on record. They stay while the lab is down, and name what its next `up` and its next
    spawns start from."""
    from . import deploy, stack

    found = set()

    def strings(value):
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            for item in value.values():
                strings(item)
        elif isinstance(value, list):
            for item in value:
                strings(item)

    for path, parse in ((stack.stack_file(settings), yaml.safe_load), (stack.hub_settings_file(settings), json.loads)):
        if path.exists():
            strings(parse(path.read_text()))
    strings(deploy.current(settings))
    return found


def prune_plan(docker: Docker, named=()):
    """(tags to remove, tags kept) among DataLab's own images (the base, the
    platform's, the notebook images and the baked model versions, with the tags of
    their pushes to an image registry): a tag goes when no `latest` or `build` tag,
    no container (running or stopped), no service of this engine (its spec, or the
    one a rollback returns to) and no reference in `named` (named_by_lab) points at
    its image. Other images are not touched."""
    repositories = {f"{REPOSITORY}/{name}" for name in ["base", *PLATFORM_IMAGES, *manifest.load()]}
    repositories.add(MODEL_REPOSITORY)
    tags = {}  # "repo:tag" (and "repo@digest": a push's or a pull's name, which outlives the tags) -> image ID
    listing = docker.out("image", "ls", "--digests", "--no-trunc", "--format",
                         "{{.Repository}} {{.Tag}} {{.Digest}} {{.ID}}")
    for line in listing.splitlines():
        repository, tag, digest, image_id = line.split(" ")
        if repository in repositories or repository.endswith(f"/{MODEL_REPOSITORY}"):
            if tag != "<none>":
                tags[f"{repository}:{tag}"] = image_id
            if digest != "<none>":
                tags[f"{repository}@{digest}"] = image_id

    def image_id(ref):  # a tag listed above, or any reference the engine resolves (by digest)
        if ref in tags:
            return tags[ref]
        found = docker.inspect("image", ref) if "@sha256:" in ref else []
        return found[0]["Id"] if found else None

    kept_ids = {image_id for ref, image_id in tags.items() if "@" not in ref and ref.rsplit(":", 1)[1] in KEPT_TAGS}
    kept_ids.update(image_id(ref) for ref in named)
    kept_ids.update(c["Image"] for c in _each(docker, "container", docker.out("ps", "-aq", "--no-trunc").split()))
    for image in service_images(docker):
        # as deployed (by digest), or as `docker service create` resolved a tag (tag@digest)
        kept_ids.add(image_id(image) or image_id(image.split("@")[0]))
    kept_ids.discard(None)
    remove = sorted(ref for ref, image_id in tags.items() if image_id not in kept_ids)
    return remove, sorted(set(tags) - set(remove))


def service_images(docker: Docker):
    """The image of every service of this engine's Swarm: its spec's, and the one a
    rollback returns to."""
    services = docker.run("service", "ls", "-q", check=False).stdout.split()  # none without a Swarm
    return [spec["TaskTemplate"]["ContainerSpec"]["Image"] for service in _each(docker, "service", services)
            for spec in (service.get("Spec"), service.get("PreviousSpec")) if spec]


def _each(docker: Docker, kind, names):
    """`docker inspect` of each of names: all at once, or one by one when one of them
    went meanwhile (an inspect of several fails whole)."""
    if not names:
        return []
    return docker.inspect(kind, *names) or [found for name in names for found in docker.inspect(kind, name)]


def prune(docker: Docker, remove):
    """Untag `remove`, then let the engine delete the layers no image holds any more.
    Names by digest go first: an image's last tag in a repository takes its names by
    digest there with it, and one already gone is no failure."""
    ordered = sorted(remove, key=lambda ref: "@" not in ref)
    for chunk in (ordered[i:i + 50] for i in range(0, len(ordered), 50)):
        proc = docker.run("rmi", *chunk, check=False, timeout=600)
        if proc.returncode != 0 and (left := [ref for ref in chunk if docker.inspect("image", ref)]):
            raise DockerError(f"docker rmi {' '.join(left)} failed: {proc.stderr.strip()}")
    docker.run("image", "prune", "--force", timeout=600)  # dangling layers only: the build cache stays


def images_disk_usage(docker: Docker):
    """The engine's own figure for its images' disk use, as it prints it (e.g. "29.3GB")."""
    for line in docker.out("system", "df", "--format", "{{.Type}} {{.Size}}").splitlines():
        kind, _, size = line.partition(" ")
        if kind == "Images":
            return size
    return "?"
