"""The network rules of containers that run user code (hub/datalab_hub/netpolicy.py)."""

from datalab_hub import netpolicy


def flat(rules):
    return [" ".join(rule[3:]) for rule in rules]  # without "iptables -w 5"


def test_a_server_takes_its_port_from_the_lab_and_calls_only_the_hubs_ports():
    rules = flat(netpolicy.rules("10.0.1.0/24", serve_port=8888))
    assert rules == [
        "-A INPUT -s 10.0.1.0/24 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -s 10.0.1.0/24 -p tcp --dport 8888 -j ACCEPT",
        "-A INPUT -s 10.0.1.0/24 -j DROP",
        "-A OUTPUT -d 10.0.1.0/24 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A OUTPUT -d 10.0.1.0/24 -p tcp -m multiport --dports 8081,8090,8091 -j ACCEPT",
        "-A OUTPUT -d 10.0.1.0/24 -j REJECT",
    ]


def test_a_job_serves_nothing_and_without_internet_reaches_only_the_lab_and_the_loopback():
    rules = flat(netpolicy.rules("10.0.1.0/24", internet=False))
    assert not any("--dport 8888" in r for r in rules)
    assert rules[-3:] == ["-A OUTPUT -o lo -j ACCEPT",
                          "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                          "-A OUTPUT -j REJECT"]
