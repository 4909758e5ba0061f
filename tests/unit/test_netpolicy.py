"""The network rules of containers that run user code (hub/datalab_hub/netpolicy.py)."""

from datalab_hub import netpolicy

HUB_PORTS = [8081, 8090, 8091]  # as hub.json carries them (tests/unit/test_stack.py)


def flat(rules):
    return [" ".join(rule[3:]) for rule in rules]  # without "iptables -w 5"


def test_a_server_takes_its_port_from_the_lab_and_calls_only_the_hubs_ports():
    rules = flat(netpolicy.rules("10.0.1.0/24", HUB_PORTS, serve_port=8888))
    assert rules == [
        "-A INPUT -s 10.0.1.0/24 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -s 10.0.1.0/24 -p tcp --dport 8888 -j ACCEPT",
        "-A INPUT -s 10.0.1.0/24 -j DROP",
        "-A OUTPUT -d 10.0.1.0/24 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A OUTPUT -d 10.0.1.0/24 -p tcp -m multiport --dports 8081,8090,8091 -j ACCEPT",
        "-A OUTPUT -d 10.0.1.0/24 -j REJECT",
        "-A OUTPUT -o lo -j ACCEPT",
        "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A OUTPUT -p udp --dport 53 -j ACCEPT",
        "-A OUTPUT -p tcp --dport 53 -j ACCEPT",
        "-A OUTPUT -d 10.0.0.0/8 -j REJECT",
        "-A OUTPUT -d 172.16.0.0/12 -j REJECT",
        "-A OUTPUT -d 192.168.0.0/16 -j REJECT",
        "-A OUTPUT -d 169.254.0.0/16 -j REJECT",
        "-A OUTPUT -d 100.64.0.0/10 -j REJECT",
    ]


def test_a_job_serves_nothing_and_without_internet_reaches_only_the_lab_and_the_loopback():
    rules = flat(netpolicy.rules("10.0.1.0/24", HUB_PORTS, internet=False))
    assert not any("--dport 8888" in r for r in rules)
    assert not any("--dport 53" in r for r in rules)  # no DNS to the internet either
    assert rules[-1] == "-A OUTPUT -j REJECT"
    assert rules.index("-A OUTPUT -o lo -j ACCEPT") < rules.index("-A OUTPUT -j REJECT")


def test_the_nodes_own_addresses_stay_closed_whatever_range_an_operator_opens():
    """The host's published ports answer on its own address, which may be public
    (as this machine's 192.0.2.2) and so no private range covers it."""
    rules = flat(netpolicy.rules("10.0.1.0/24", HUB_PORTS, node_addresses=["192.0.2.2"], private_allowed=["192.0.2.0/24"]))
    node, opened = rules.index("-A OUTPUT -d 192.0.2.2/32 -j REJECT"), rules.index("-A OUTPUT -d 192.0.2.0/24 -j ACCEPT")
    assert node < opened < rules.index("-A OUTPUT -d 10.0.0.0/8 -j REJECT")
    # the lab's own rules come first: the hub's ports inside 10.0.0.0/8 stay open
    assert rules.index("-A OUTPUT -d 10.0.1.0/24 -p tcp -m multiport --dports 8081,8090,8091 -j ACCEPT") < node


def test_node_addresses_are_the_swarms_and_the_hosts_own_and_a_worker_still_closes_the_hosts():
    import docker

    class Manager:
        def nodes(self):
            return [{"Status": {"Addr": "0.0.0.0"}, "ManagerStatus": {"Addr": "192.0.2.2:2377"}},
                    {"Status": {"Addr": "10.0.0.7"}}, {"Status": {"Addr": "127.0.0.1"}}]

    class Worker:
        def nodes(self):
            raise docker.errors.APIError("This node is not a swarm manager.")

    assert netpolicy.node_addresses(Manager(), ["203.0.113.9", "127.0.0.1"]) == ["10.0.0.7", "192.0.2.2",
                                                                                   "203.0.113.9"]
    assert netpolicy.node_addresses(Worker(), ["203.0.113.9"]) == ["203.0.113.9"]
