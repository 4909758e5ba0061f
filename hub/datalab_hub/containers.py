"""How every container a user's code runs in (notebook servers, jobs) is locked down."""

NOTEBOOK_UID = 1000


def hardened(pids_limit):
    """Docker host settings: no Linux capabilities, no setuid escalation, a pids cap."""
    return {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "pids_limit": pids_limit}
