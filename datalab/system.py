"""The host: Debian packages, the Docker engine, the Swarm."""

import os
import shutil
import subprocess
import time
from pathlib import Path

from .docker import Docker, DockerError

# What `datalab up` needs on the host, by Debian package (libnss-myhostname: the
# lab's *.localhost names, see ensure_localhost_names).
LAB_PACKAGES = ("docker.io", "debootstrap", "ldap-utils", "curl", "libnss-myhostname")
# What the tests need in addition (a real browser for UI flows; the online
# feature store's tests start a redis-server of their own).
TEST_PACKAGES = ("chromium", "chromium-driver", "redis-server")
DOCKERD_LOG = Path("/var/log/datalab-dockerd.log")
# Swarm services drop every capability (the stack's cap_drop) only on engines from 20.10
# on; an older one deploys them all the same, with Docker's default capabilities and a
# warning. Debian 12's docker.io is 20.10.24.
MIN_ENGINE_VERSION = (20, 10)


def missing_packages(packages):
    missing = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def install_packages(packages, steps):
    missing = missing_packages(packages)
    if not missing:
        steps.info(f"system packages present ({', '.join(packages)})")
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing packages {missing}: run as root or install them first")
    with steps.step(f"installing {' '.join(missing)}"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )


NSSWITCH = Path("/etc/nsswitch.conf")


def ensure_localhost_names(steps, nsswitch=NSSWITCH):
    """Have every program on this machine resolve *.localhost (the lab's default names:
    the hub at lab.localhost, alice's server at alice.lab.localhost) to the loopback,
    as browsers and curl do by themselves: glibc does through nss-myhostname."""
    lines = nsswitch.read_text().splitlines()
    hosts = [i for i, line in enumerate(lines) if line.split(":")[0].strip() == "hosts"]
    if hosts and "myhostname" in lines[hosts[0]].split():
        return
    with steps.step(f"resolving *.localhost to this machine (myhostname in {nsswitch})"):
        if hosts:
            name, _, sources = lines[hosts[0]].partition(":")
            words = sources.split()
            # right after the hosts file: before dns or mdns, which would answer (or time out) first
            at = words.index("files") + 1 if "files" in words else 0
            lines[hosts[0]] = f"{name}:{' ' * 8}{' '.join(words[:at] + ['myhostname'] + words[at:])}"
        else:
            lines.append("hosts:          files myhostname dns")
        nsswitch.write_text("\n".join(lines) + "\n")


def ensure_engine(docker: Docker, steps):
    if docker.engine_running():
        steps.info("Docker engine running")
        return
    with steps.step("starting the Docker engine"):
        if Path("/run/systemd/system").exists() and shutil.which("systemctl"):
            subprocess.run(["systemctl", "start", "docker"], check=True)
        else:
            log = open(DOCKERD_LOG, "ab")
            subprocess.Popen(
                ["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while not docker.engine_running():
            if time.monotonic() > deadline:
                raise DockerError(f"dockerd did not come up in 60 s; see {DOCKERD_LOG}")
            time.sleep(0.5)


def ensure_swarm(docker: Docker, settings, steps):
    state = docker.swarm_state()
    if state == "active":
        steps.info("Swarm active")
    else:
        with steps.step("initialising a single-node Swarm"):
            docker.run("swarm", "init", "--advertise-addr", settings["lab"]["advertise_addr"])
    check_engine_versions(docker)


def check_engine_versions(docker: Docker):
    """Refuse a Swarm with a node whose engine would run the lab's services with
    capabilities they drop (MIN_ENGINE_VERSION)."""
    nodes = docker.inspect("node", *docker.out("node", "ls", "-q").split())
    old = [f"{n['Description']['Hostname']} ({n['Description']['Engine']['EngineVersion']})" for n in nodes
           if _version(n["Description"]["Engine"]["EngineVersion"]) < MIN_ENGINE_VERSION]
    if old:
        wanted = ".".join(map(str, MIN_ENGINE_VERSION))
        raise DockerError(f"Docker engine {wanted} or later is needed on every node (older ones run services "
                          f"with the capabilities the lab drops): {', '.join(old)}")


def _version(text):
    """(major, minor) of an engine version such as "20.10.24+dfsg1" or "26.1.5"."""
    parts = [int(part) if part.isdigit() else 0 for part in text.split("+")[0].split("-")[0].split(".")[:2]]
    return tuple(parts + [0] * (2 - len(parts)))
