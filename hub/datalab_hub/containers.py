"""How every container a user's code runs in (notebook servers, jobs) is locked down,
and what it may ask the engine for."""

from docker.types import DeviceRequest

NOTEBOOK_UID = 1000  # the notebook images' user, jovyan
# Relative CPU weight of user containers (Docker's default, and the platform's, is
# 1024): when the cores are contended, as in a login wave, the hub, proxy and
# directory get four times a user container's share, so starting twenty servers
# slows each start instead of starving the hub. Idle cores stay free for anyone.
USER_CPU_SHARES = 256


def hardened(pids_limit):
    """Docker host settings: no Linux capabilities, no setuid escalation, a pids cap,
    and a CPU weight below the platform's."""
    return {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "pids_limit": pids_limit,
            "cpu_shares": USER_CPU_SHARES}


def gpu_request(gpus):
    """Docker host settings for `gpus` GPUs (the NVIDIA runtime's device request); none for 0."""
    return {"device_requests": [DeviceRequest(count=int(gpus), capabilities=[["gpu"]])]} if gpus else {}
