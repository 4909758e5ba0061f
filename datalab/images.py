"""Image builds: the local Debian base, then DataLab's images FROM it.

No registry is needed: when the base image cannot be pulled it is made with
debootstrap. Each image is tagged `latest` and with its image ID, and the
stack refers to the ID tag, so a service is updated exactly when its image
changed.
"""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .docker import Docker, DockerError

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
REPOSITORY = "datalab"
# Platform images in build order; each builds FROM datalab/base.
PLATFORM_IMAGES = ("directory", "mlflow", "hub")
NOTEBOOK_IMAGES = ("notebook",)


def image_ref(name, image_id):
    return f"{REPOSITORY}/{name}:{image_id.split(':')[-1][:12]}"


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


def build(docker: Docker, name, steps, build_args, log_dir):
    """docker build images/<name>, showing its step lines; returns the ID tag."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"build-{name}.log"
    args = [docker.cli, "build", "-f", str(IMAGES_DIR / name / "Dockerfile"),
            "-t", f"{REPOSITORY}/{name}:latest"]
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
    image_id = docker.out("image", "inspect", "-f", "{{.Id}}", f"{REPOSITORY}/{name}:latest")
    ref = image_ref(name, image_id)
    docker.run("tag", image_id, ref)
    return ref


def build_all(docker: Docker, settings, steps, names=PLATFORM_IMAGES + NOTEBOOK_IMAGES):
    """Build the base and `names`; returns {name: id-tagged reference}."""
    debian = ensure_debian_base(docker, settings, steps)
    staging = REPO / ".build"
    staging.mkdir(exist_ok=True)
    shutil.copyfile(settings["build"]["ca_bundle"], staging / "ca-bundle.crt")
    log_dir = settings.data_dir / "logs"
    refs = {"base": build(docker, "base", steps, {"BASE_IMAGE": debian}, log_dir)}
    for name in names:
        refs[name] = build(docker, name, steps, {"BASE_IMAGE": refs["base"]}, log_dir)
    return refs
