"""What a container running user code (a notebook server, a job) may reach on
the lab network, and what may reach it.

Notebook and job containers share the `lab` overlay network with the hub and
the proxy, so without rules every user's container reaches every port of every
other user's (a dashboard one user runs unauthenticated is open to all). The
rules, set in the container's own network namespace, which its user has no
capability to change:
  - from the lab network in: only the server's port (the proxy and the hub
    call it), and replies;
  - to the lab network out: only the hub's API and its services' ports, and
    replies;
  - elsewhere (the internet, for `pip install`): allowed, or not (`internet`);
    never, either way, the lab nodes' own addresses and private address space
    (below), unless an operator lists a range.
A short-lived helper container joins the target's network namespace with
NET_ADMIN alone to set them (a `docker exec` cannot add capabilities to a
container with no-new-privileges, by design), then the platform drops a marker
file into the target: its command starts the server or papermill only then,
so no user code runs before the rules (`datalab-await-network CMD`, in every
notebook image; for a server it imports the server's own modules while it
waits).
"""

import io
import ipaddress
import logging
import tarfile

import docker

log = logging.getLogger("datalab.netpolicy")

# Not the internet: where the host's published ports (the scoring edge, the hub's
# front door), the company's own network and the cloud's metadata service answer.
# A container reaching them would get past the firewall that guards them from
# the user's desk (the host's own containers come from inside it). As z2jh's
# default egress policy: private addresses closed, DNS to them open.
PRIVATE_NETWORKS = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "169.254.0.0/16",  # link-local: the cloud's metadata service
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
)
READY_MARKER = "/tmp/.datalab-network-ready"
AWAIT_COMMAND = "datalab-await-network"  # images/python/datalab-await-network: `AWAIT_COMMAND cmd args`
SERVER_COMMAND = (AWAIT_COMMAND, "jupyterhub-singleuser")


class PolicyError(RuntimeError):
    pass


def rules(lab_subnet, hub_ports, serve_port=None, internet=True, node_addresses=(), private_allowed=()):
    """The iptables commands, in order. `hub_ports`: the hub's API and services (the
    spawner's `hub_ports` in hub.json); `node_addresses`: the lab nodes' own (the host
    may have a public one); `private_allowed`: ranges an operator opened anyway."""
    subnet, hub_ports = lab_subnet, ",".join(str(p) for p in hub_ports)
    replies = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    found = [["-A", "INPUT", "-s", subnet, *replies]]
    if serve_port:
        found.append(["-A", "INPUT", "-s", subnet, "-p", "tcp", "--dport", str(serve_port), "-j", "ACCEPT"])
    found += [
        ["-A", "INPUT", "-s", subnet, "-j", "DROP"],
        ["-A", "OUTPUT", "-d", subnet, *replies],
        ["-A", "OUTPUT", "-d", subnet, "-p", "tcp", "-m", "multiport", "--dports", hub_ports, "-j", "ACCEPT"],
        ["-A", "OUTPUT", "-d", subnet, "-j", "REJECT"],
        # Docker's DNS (127.0.0.11) is on the loopback; names outside the lab it asks
        # the host's resolver (often at a private address) from this namespace
        ["-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"],
        ["-A", "OUTPUT", *replies],
    ]
    if internet:
        found += [["-A", "OUTPUT", "-p", protocol, "--dport", "53", "-j", "ACCEPT"] for protocol in ("udp", "tcp")]
    found += [["-A", "OUTPUT", "-d", f"{address}/32", "-j", "REJECT"] for address in node_addresses]
    found += [["-A", "OUTPUT", "-d", allowed, "-j", "ACCEPT"] for allowed in private_allowed]
    found += [["-A", "OUTPUT", "-d", closed, "-j", "REJECT"] for closed in PRIVATE_NETWORKS]
    if not internet:
        found.append(["-A", "OUTPUT", "-j", "REJECT"])
    return [["iptables", "-w", "5", *rule] for rule in found]


def lab_subnet(api, network):
    """The lab network's subnet (the same on every node of an overlay)."""
    return api.inspect_network(network)["IPAM"]["Config"][0]["Subnet"]


def node_addresses(api, host_addresses=()):
    """The lab nodes' IPv4 addresses: each Swarm node's (as it reports itself, and as
    a manager), and `host_addresses`, this host's own (`datalab up` lists them: the
    host may have more than the one Swarm knows). A container calling any of them
    reaches every port its node publishes."""
    found = set(host_addresses)
    try:
        for node in api.nodes():
            found.add(node.get("Status", {}).get("Addr", ""))
            found.add((node.get("ManagerStatus") or {}).get("Addr", "").rsplit(":", 1)[0])
    except docker.errors.APIError as e:
        log.warning("the Swarm's nodes could not be listed (%s): only this host's addresses are closed", e)
    return sorted(a for a in found if _routable(a))


def _routable(address):
    """An IPv4 address another host could be reached on (not 0.0.0.0, not loopback)."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_loopback)


def apply(api, container_id, image, lab_subnet, hub_ports, serve_port=None, internet=True, private_allowed=(),
          host_addresses=(), timeout=60):
    """Set the rules in the container's network namespace, then let its command start.
    `api`: docker-py's low-level APIClient. Raises PolicyError if they did not apply."""
    found = rules(lab_subnet, hub_ports, serve_port, internet, node_addresses(api, host_addresses), private_allowed)
    script = " && ".join(" ".join(command) for command in found)
    helper = api.create_container(
        image, entrypoint=["sh", "-c"], command=[script], user="0",
        host_config=api.create_host_config(network_mode=f"container:{container_id}", cap_drop=["ALL"],
                                           cap_add=["NET_ADMIN", "NET_RAW"], security_opt=["no-new-privileges"]),
        labels={"org.datalab.netpolicy-for": container_id},
    )["Id"]
    try:
        api.start(helper)
        status = api.wait(helper, timeout=timeout)["StatusCode"]
        if status != 0:
            raise PolicyError(f"network rules not set (exit {status}): "
                              f"{api.logs(helper).decode(errors='replace')[-500:]}")
        # the target starts now; the helper's removal is not on the way to a ready server
        marker = io.BytesIO()
        with tarfile.open(fileobj=marker, mode="w") as tar:
            tar.addfile(tarfile.TarInfo(READY_MARKER.rsplit("/", 1)[1]), io.BytesIO(b""))
        api.put_archive(container_id, READY_MARKER.rsplit("/", 1)[0], marker.getvalue())
    finally:
        api.remove_container(helper, force=True)
