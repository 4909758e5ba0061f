"""The host's name resolution for the lab's *.localhost names."""

import contextlib

from datalab import system


class Steps:
    def step(self, text):
        return contextlib.nullcontext()


def test_myhostname_goes_right_after_the_hosts_file_once(tmp_path):
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("passwd:         files\nhosts:          files dns\nnetworks:       files\n")
    system.ensure_localhost_names(Steps(), nsswitch)
    system.ensure_localhost_names(Steps(), nsswitch)  # a second up changes nothing
    assert nsswitch.read_text().splitlines()[1].split() == ["hosts:", "files", "myhostname", "dns"]
    assert nsswitch.read_text().splitlines()[2] == "networks:       files"


def test_a_hosts_line_that_already_has_myhostname_is_left_alone(tmp_path):
    nsswitch = tmp_path / "nsswitch.conf"
    original = "hosts: files mdns4_minimal [NOTFOUND=return] dns myhostname\n"
    nsswitch.write_text(original)
    system.ensure_localhost_names(Steps(), nsswitch)
    assert nsswitch.read_text() == original
