"""DockerSpawner with DataLab's container hardening as the default."""

from dockerspawner import DockerSpawner
from traitlets import Int, default


class DataLabSpawner(DockerSpawner):
    pids_limit = Int(
        1024,
        config=True,
        help="Most processes (and threads) one notebook container may run; "
        "stops a fork bomb from taking the host down.",
    )

    @default("extra_host_config")
    def _hardened_host_config(self):
        # Notebook code never needs Linux capabilities or setuid escalation.
        return {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.pids_limit,
        }
