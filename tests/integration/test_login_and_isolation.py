"""Login through the real hub, proxy and slapd; servers in real containers."""

import pytest

pytestmark = pytest.mark.integration

DENIED = "Invalid username or password"


def test_login_starts_own_container_and_contents_answer(lab):
    alice = lab.fresh_server("alice", "python")
    container = lab.notebook_container("alice")
    assert container and container["State"]["Running"]
    assert container["Config"]["User"] in ("1000", "jovyan", "")  # image's non-root user
    assert lab.docker.out("exec", container["Id"], "id", "-u") == "1000"
    host = container["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 2 * 1024**3  # the default profile's (python) limit
    mounts = {m["Destination"]: m for m in container["Mounts"]}
    assert mounts["/home/jovyan"]["Name"] == f"{lab.name}-user-alice"
    assert f"{lab.name}_lab" in container["NetworkSettings"]["Networks"]

    lab_page = alice.open_server("alice")
    assert lab_page.status_code == 200 and "/user/alice/lab" in lab_page.url
    contents = alice.contents("alice")
    assert contents.status_code == 200
    assert contents.json()["type"] == "directory"


def test_other_user_is_refused_on_alices_server(lab):
    lab.login("alice").start("alice")
    bob = lab.login("bob")
    page = bob.open_server("alice")
    assert page.status_code == 403
    assert bob.contents("alice").status_code == 403
    # and bob's own server is his, not alice's
    bob.start("bob")
    assert bob.open_server("bob").status_code == 200
    assert bob.contents("bob").status_code == 200


def test_ldap_groups_are_mirrored_and_lab_admins_are_admins(lab):
    carol = lab.login("carol")
    me = carol.hub_api("/user").json()
    assert me["admin"] is True
    assert set(me["groups"]) == {"datascientists", "lab-admins"}
    groups = {g["name"]: set(g["users"]) for g in carol.hub_api("/groups").json()}
    alice = lab.login("alice").hub_api("/user").json()
    assert alice["admin"] is False
    assert {"datascientists", "fraud-team", "model-approvers"} <= set(alice["groups"])
    groups = {g["name"]: set(g["users"]) for g in carol.hub_api("/groups").json()}
    assert {"alice"} <= groups["fraud-team"] and "carol" not in groups["fraud-team"]
    assert groups["lab-admins"] == {"carol"}


@pytest.mark.parametrize(
    "username, password_of",
    [
        ("alice", None),                       # wrong password
        ("alice", ""),                         # empty password
        ("nobody", "alice"),                   # unknown user
        ("eve", "eve"),                        # real user, in no allowed group
        ("*", "alice"),                        # wildcard
        ("alice)(uid=*", "alice"),             # filter injection
        ("*)(|(objectClass=*)", "alice"),      # filter injection
        ("bob\x00", "alice"),                  # NUL byte (tornado strips it: bob, wrong password)
        ("alice\x00)(uid=*", "alice"),         # NUL byte + filter injection
        ("alice,ou=people", "alice"),          # DN injection
        ("uid=alice", "alice"),                # DN injection
        ("a" * 300, "alice"),                  # overlong
    ],
)
def test_refused_logins_get_the_login_error(lab, username, password_of):
    if password_of is None:
        password = "not-" + lab.logins["alice"]
    elif password_of == "":
        password = ""
    else:
        password = lab.logins[password_of]
    s = lab.session()
    r = s.login(username, password)
    assert r.status_code == 403, (username, r.status_code)
    assert DENIED in r.text
    # no session was opened, as anybody
    assert s.hub_api("/user").status_code == 403


LOGIN_IN_HUB = """
import asyncio, json, sys
from traitlets.config import Config
from datalab_hub.auth import DataLabLDAPAuthenticator
from datalab_hub.config import configure

runtime = json.load(open("/etc/datalab/hub.json"))
runtime["ldap"]["ca_file"] = sys.argv[2]
c = Config()
configure(c, runtime)
try:
    model = asyncio.run(DataLabLDAPAuthenticator(config=c).authenticate(None, {"username": sys.argv[1],
                                                                               "password": sys.stdin.read()}))
    print("logged in" if model else "refused")
except Exception as e:
    print("refused:", type(e).__name__, e)
"""


def test_directory_certificate_is_checked_even_without_a_ca_file(lab):
    """The hub's own LDAP login code, in the hub's container, against the real slapd: with
    the lab's CA it logs in; configured for an external directory without a CA file it
    must check the certificate against the system's trust store (which does not know the
    lab's CA), not skip the check."""
    def login(ca_file):
        return lab.docker.run("exec", "-i", lab.service_container("hub"), "python3", "-c", LOGIN_IN_HUB,
                              "alice", ca_file, input=lab.logins["alice"]).stdout.strip()

    assert login("/run/secrets/ldap_ca_crt") == "logged in"
    assert login("").startswith("refused"), "an unverifiable directory certificate was accepted"
