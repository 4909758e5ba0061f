"""The lab's image registry (the `image-registry` service): where model images go
when a version is rolled out, and where every node pulls them from, by digest.

A service refers to `<address>/datalab/scoring-model@sha256:...`: each node runs
the very bytes that were pushed, whatever a tag says later. The registry serves
HTTPS with a certificate from the lab's CA; an engine trusts it through the file
it reads for that registry (/etc/docker/certs.d/<address>/ca.crt), written by
`datalab up` here and by Ansible on every node. One account, `datalab`, whose
password is a generated secret: the engine that pushes is given it per push,
and Swarm hands it to the nodes with the service (the X-Registry-Auth of a
service update, `docker stack deploy --with-registry-auth`).
"""

import base64
import json
import os
import re
from pathlib import Path

from . import credentials, images
from .docker import Docker, DockerError, engine_api
from .endpoints import IMAGE_REGISTRY_PASSWORD_VARIABLE

ACCOUNT = "datalab"
REPOSITORIES = (images.MODEL_REPOSITORY,)  # what the lab pushes
CONFIG_FILE = "/etc/docker/registry/config.yml"  # in the registry's image
STORAGE = "/var/lib/docker-registry"  # the registry's volume, as its configuration names it
# A version pushed this recently may be on its way to a rollout (the service's update, the
# nodes' pulls) that names it nowhere yet: `images prune` keeps it.
RECENT_PUSH_MINUTES = 30
# What a registry may answer a manifest request with: a single image's manifest (Docker's or
# OCI's) or an index of several; the digest is of the one it holds.
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json")
CERTS_D = Path("/etc/docker/certs.d")  # where an engine looks for a registry's CA (moby's registry/config.go)


def address(settings):
    """host:port the nodes pull from: the manager's Swarm address and the registry's port."""
    host = settings["lab"]["advertise_addr"]
    return f"{f'[{host}]' if ':' in host else host}:{settings['image_registry']['port']}"


def auth_config(settings):
    """The account as the engine's API takes it; its password from the controller's Swarm
    secret there, else from the lab's secrets folder."""
    path = os.environ.get(IMAGE_REGISTRY_PASSWORD_VARIABLE) or (
        credentials.secrets_dir(settings) / "image_registry_password")
    password = Path(path).read_text().strip()
    return {"username": ACCOUNT, "password": password, "serveraddress": address(settings)}


def trust_file(settings):
    return CERTS_D / address(settings) / "ca.crt"


def trust(settings):
    """Make this machine's engine trust the lab's CA for the registry (read per pull and
    push: no restart). True when the file was written."""
    sdir = credentials.secrets_dir(settings)
    credentials.ensure_lab_ca(sdir)
    pem = (sdir / "ca.crt").read_bytes()
    path = trust_file(settings)
    if path.exists() and path.read_bytes() == pem:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    os.chmod(path, 0o644)
    return True


def untrust(settings):
    """Remove what trust() wrote, when it holds this lab's CA (a lab purged with its CA):
    the engine then trusts no certificate for that address. True when removed."""
    path, ca = trust_file(settings), credentials.secrets_dir(settings) / "ca.crt"
    if not (path.exists() and ca.exists() and path.read_bytes() == ca.read_bytes()):
        return False
    path.unlink()
    if not any(path.parent.iterdir()):
        path.parent.rmdir()
    return True


def client_config(settings):
    """A Docker CLI configuration folder holding only the registry's account, for the
    commands that hand it to Swarm (`stack deploy --with-registry-auth`): DOCKER_CONFIG."""
    folder = credentials.secrets_dir(settings) / "docker-client"
    folder.mkdir(mode=0o700, exist_ok=True)
    auth = auth_config(settings)
    token = base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode()
    path = folder / "config.json"
    wanted = json.dumps({"auths": {auth["serveraddress"]: {"auth": token}}}, indent=2)
    if not path.exists() or path.read_text() != wanted:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(wanted)
    return folder


def api(settings, engine=None):
    """The engine's API (docker SDK) logged in to the registry: a service update made
    through it carries the account to the nodes that pull."""
    import docker as docker_sdk

    engine = engine or engine_api()
    auth = auth_config(settings)
    try:
        engine.login(auth["username"], auth["password"], registry=auth["serveraddress"], reauth=True)
    except docker_sdk.errors.DockerException as e:
        raise DockerError(f"the image registry at {auth['serveraddress']} refused the lab's account or did "
                          f"not answer: {e}") from None
    return engine


def publish(settings, image, engine=None):
    """Push a local image to the registry; its reference by digest there. The image keeps
    the registry's tag of the push: without it the engine forgets the digest, and a node
    would pull again what it holds (`datalab images prune` removes both tags together)."""
    import docker as docker_sdk

    if is_published(settings, image):
        return image
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag or "@" in image:
        raise DockerError(f"{image}: name an image by repository:tag to publish it")
    engine = api(settings, engine)
    local = engine.inspect_image(image)
    remote = f"{address(settings)}/{repository}"
    engine.tag(local["Id"], remote, tag)
    digest = None
    try:
        for event in engine.push(remote, tag, auth_config=auth_config(settings), stream=True, decode=True):
            if event.get("error"):
                raise DockerError(f"pushing {image} to the image registry failed: {event['error']}")
            digest = (event.get("aux") or {}).get("Digest", digest)
        if not digest:
            raise DockerError(f"the image registry gave no digest for {image}")
    except (DockerError, docker_sdk.errors.DockerException) as e:
        engine.remove_image(f"{remote}:{tag}", noprune=True)
        raise DockerError(str(e) if isinstance(e, DockerError) else
                          f"pushing {image} to the image registry failed: {e}") from None
    return f"{remote}@{digest}"


def pull(settings, image, engine=None):
    """Pull a published image back into this engine by its digest (what served, removed
    meanwhile); False when the registry does not hold it."""
    import docker as docker_sdk

    try:
        engine = api(settings, engine)
        engine.pull(image, auth_config=auth_config(settings))
        engine.inspect_image(image)  # an error inside the pull's stream does not raise
    except (DockerError, docker_sdk.errors.DockerException):
        return False
    return True


def is_published(settings, image):
    """Whether `image` names this lab's registry by digest."""
    return image.startswith(f"{address(settings)}/") and "@sha256:" in image


def _request(settings, method, path, **kwargs):
    """A call to the registry's API (/v2/...) with the lab's account, over HTTPS verified
    with the lab's CA."""
    from datalab_client import http

    auth = auth_config(settings)
    token = base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode()
    return http.request(method, f"https://{auth['serveraddress']}/v2/{path}", token=token, scheme="Basic",
                        connections=http.pool(credentials.secrets_dir(settings) / "ca.crt"), **kwargs)


def manifests(settings, repository):
    """{tag: digest} of what the registry holds in `repository` ({} for a repository never
    pushed to). Raises datalab_client.http.HTTPError (status 0) when the registry is not
    answering."""
    from datalab_client import http

    try:
        tags = _request(settings, "GET", f"{repository}/tags/list", retries=False).json().get("tags") or []
    except http.HTTPError as e:
        if e.status == 404:  # NAME_UNKNOWN
            return {}
        raise
    held = {}
    for tag in tags:
        try:
            answer = _request(settings, "HEAD", f"{repository}/manifests/{tag}",
                              headers={"Accept": ", ".join(MANIFEST_TYPES)})
        except http.HTTPError as e:
            if e.status == 404:  # deleted meanwhile
                continue
            raise
        held[tag] = answer.headers["Docker-Content-Digest"]
    return held


def prune_plan(docker: Docker, settings, in_use):
    """{repository: (digests to delete, digests kept)} of the lab's registry: a manifest goes
    when no reference in `in_use` (`...@sha256:` names: of the images `images prune` keeps,
    of the lab's files, of the services) names its digest and it was not pushed in the last
    RECENT_PUSH_MINUTES; None when the registry is not answering (nothing is deleted then)."""
    from datalab_client import http

    wanted = {ref.rsplit("@", 1)[1] for ref in in_use if "@sha256:" in ref}
    plan = {}
    for repository in REPOSITORIES:
        try:
            digests = set(manifests(settings, repository).values())
        except http.HTTPError as e:
            if e.status == 0:
                return None
            raise DockerError(f"the image registry refused to list {repository}: {e}") from None
        kept = digests & (wanted | (recently_pushed(docker, settings, repository) if digests - wanted else set()))
        plan[repository] = (sorted(digests - kept), sorted(kept))
    return plan


def recently_pushed(docker: Docker, settings, repository):
    """Digests of the manifests pushed to `repository` in the last RECENT_PUSH_MINUTES, as
    the registry's storage dates them (a manifest's link, written at its push)."""
    revisions = f"{STORAGE}/docker/registry/v2/repositories/{repository}/_manifests/revisions/sha256"
    found = docker.run("exec", _container(docker, settings), "find", revisions, "-mindepth", "2", "-maxdepth", "2",
                       "-name", "link", "-mmin", f"-{RECENT_PUSH_MINUTES}", "-printf", "%h\n", check=False)
    return {f"sha256:{Path(folder).name}" for folder in found.stdout.split()}


def prune(docker: Docker, settings, plan):
    """Delete the manifests `plan` names (with every tag of theirs), then let the registry
    delete the layers no manifest holds any more (its garbage collector, in the registry's
    container). A push under way at that very moment may lose a layer it had just sent, and
    fails saying so ("blob unknown"; the registry's collector has no grace period): nothing
    serving is touched. {blobs_deleted, storage_mb_before, storage_mb_after}."""
    from datalab_client import http

    for repository, (delete, _) in plan.items():
        for digest in delete:
            try:
                _request(settings, "DELETE", f"{repository}/manifests/{digest}")
            except http.HTTPError as e:
                if e.status != 404:  # gone already
                    raise DockerError(f"the image registry refused to delete {repository}@{digest}: {e}") from None
    container = _container(docker, settings)
    before = _storage_kib(docker, container)
    report = docker.out("exec", container, "docker-registry", "garbage-collect", CONFIG_FILE, timeout=600)
    found = re.search(r"(\d+) blobs and (\d+) manifests eligible for deletion", report)
    return {"blobs_deleted": int(found.group(1)) if found else 0,
            "storage_mb_before": round(before / 1024), "storage_mb_after": round(_storage_kib(docker, container) / 1024)}


def _container(docker: Docker, settings):
    return docker.local_container(f"{settings.lab}_image-registry",
                                  f"the image registry of lab '{settings.lab}' does not run on this node (its home)")


def _storage_kib(docker: Docker, container):
    return int(docker.out("exec", container, "du", "-sk", STORAGE).split()[0])
