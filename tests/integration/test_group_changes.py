"""A group change in the directory takes effect without a new login: the test
lab reads groups again every few seconds (its [hub] auth_refresh_age and
group_sync_every), so bob, removed from fraud-team with ldapmodify, can no
longer write fraud-team's registry objects and loses the server that mounted
its volume; put back, he gets both again."""

import time

import pytest
from directory import _ldap

from datalab import promotion

pytestmark = pytest.mark.integration

TEAM = "fraud-team"
# group_sync_every (5 s in the test lab) and a pass, plus the registry gateway's 30 s cache of a
# user's groups (datalab_hub.identity), with room for a loaded 2-core machine
WITHIN = 60


def set_member(lab, op, user, group=TEAM):
    """`op` ("add" or "delete") `user` as a member of `group`, with ldapmodify in the directory's container."""
    base = lab.settings["directory"]["base_dn"]
    _ldap(lab.docker, lab.settings, "ldapmodify", f"dn: cn={group},ou=groups,{base}\nchangetype: modify\n"
                                                  f"{op}: member\nmember: uid={user},ou=people,{base}\n")


def writes(lab, user, experiment_id):
    """Whether `user` may change the experiment (a tag) through the registry gateway."""
    try:
        lab.registry(user, "POST", "experiments/set-experiment-tag",
                     {"experiment_id": experiment_id, "key": "group-change-test", "value": user})
        return True
    except promotion.PromotionError as e:
        if ": 403 " in str(e):
            return False
        raise


def team_mounts(container):
    return {m["Destination"] for m in container["Mounts"] if m["Destination"].startswith("/home/jovyan/teams/")}


def test_a_user_removed_from_a_team_loses_its_objects_and_volume_within_the_refresh_age(lab):
    experiment = lab.registry("alice", "POST", "experiments/create",
                              {"name": f"group-change-{time.monotonic_ns()}"})["experiment_id"]
    bob = lab.fresh_server("bob", "python")
    assert team_mounts(lab.notebook_container("bob")) == {f"/home/jovyan/teams/{TEAM}"}
    assert writes(lab, "bob", experiment)
    try:
        set_member(lab, "delete", "bob")
        removed = time.monotonic()
        lab.wait_for(lambda: not writes(lab, "bob", experiment), "bob refused on fraud-team's experiment",
                     timeout=WITHIN)
        # a mounted volume cannot be taken out of a running container: the server goes, his home stays
        lab.wait_for(lambda: "" not in (bob.hub_api("/users/bob").json().get("servers") or {}),
                     "bob's server with fraud-team's volume stopped", timeout=WITHIN)
        print(f"\nbob lost fraud-team's registry objects and volume {time.monotonic() - removed:.0f} s "
              "after leaving the group")
        assert lab.notebook_container("bob") is None
        assert TEAM not in bob.hub_api("/user").json()["groups"]  # his own session: still logged in
        assert writes(lab, "alice", experiment)  # the team itself keeps its rights
        # a server he starts now (with the groups the sync gave the hub) has no team volume
        bob.start("bob", "python")
        assert team_mounts(lab.notebook_container("bob")) == set()
        bob.stop("bob")
    finally:
        set_member(lab, "add", "bob")
    lab.wait_for(lambda: writes(lab, "bob", experiment), "bob writes fraud-team's experiment again", timeout=WITHIN)
    assert TEAM in bob.hub_api("/user").json()["groups"]


def test_the_hubs_directory_reader_reads_groups_and_peoples_dns_only(lab):
    """cn=hub-reader, as which the hub reads groups between logins: groups yes; of a person,
    that the entry exists, not a single attribute; and it changes nothing."""
    base = lab.settings["directory"]["base_dn"]
    directory = lab.service_container("directory")

    def as_reader(tool, *args, ldif=None):
        script = (f'LDAPTLS_CACERT=/run/secrets/ldap_ca_crt {tool} -ZZ -H ldap://directory:1389 '
                  f'-D "cn=hub-reader,{base}" -y /run/secrets/ldap_search_password ' + " ".join(args))
        return lab.docker.run("exec", "-i", directory, "sh", "-c", script, input=ldif, check=False)

    groups = as_reader("ldapsearch", "-LLL", "-b", f"ou=groups,{base}", f"'(member=uid=bob,ou=people,{base})'", "cn")
    assert groups.returncode == 0 and "cn: datascientists" in groups.stdout
    person = as_reader("ldapsearch", "-LLL", "-s", "base", "-b", f"uid=bob,ou=people,{base}")
    assert person.returncode == 0 and f"dn: uid=bob,ou=people,{base}" in person.stdout
    assert "mail:" not in person.stdout and "cn:" not in person.stdout and "userPassword" not in person.stdout
    change = as_reader("ldapmodify", ldif=f"dn: cn={TEAM},ou=groups,{base}\nchangetype: modify\nadd: member\n"
                                          f"member: cn=hub-reader,{base}\n")
    assert change.returncode == 50, change.stderr  # insufficient access
