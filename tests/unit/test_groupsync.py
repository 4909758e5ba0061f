"""Group changes between logins, without a hub or a directory: the group lookup
(ldap3's mock directory, or a fake connection), refresh_user, the group-sync
service's decisions and its calls to the hub's API (fakes)."""

import asyncio
import contextlib
import json
from types import SimpleNamespace

import pytest
from ldap3 import MOCK_SYNC, Connection, Server
from ldap3.core.exceptions import LDAPException, LDAPSocketOpenError
from ldapauthenticator import LDAPAuthenticator

from datalab import credentials, settings as settings_mod
from datalab_hub import groupsync
from datalab_hub.auth import DataLabLDAPAuthenticator, Membership, dn_key

SUFFIX = "dc=lab,dc=example"
PEOPLE, GROUPS = f"ou=people,{SUFFIX}", f"ou=groups,{SUFFIX}"
MEMBERS = {"datascientists": ["alice", "bob", "carol"], "fraud-team": ["alice", "bob"], "gpu-users": ["bob"],
           "lab-admins": ["carol"]}


def authenticator(**traits):
    return DataLabLDAPAuthenticator(**{
        "server_address": "127.0.0.1", "tls_strategy": "insecure", "bind_dn_template": [f"uid={{username}},{PEOPLE}"],
        "group_search_base": GROUPS, "allowed_groups": [f"cn=datascientists,{GROUPS}", f"cn=lab-admins,{GROUPS}"],
        "admin_ldap_groups": {"lab-admins"}, "search_bind_dn": f"cn=hub-reader,{SUFFIX}", **traits})


def directory(members=MEMBERS, people=("alice", "bob", "carol", "eve")):
    """A mock directory, bound as the reader."""
    conn = Connection(Server("directory"), user=f"cn=hub-reader,{SUFFIX}", password="pw", client_strategy=MOCK_SYNC)
    conn.strategy.add_entry(f"cn=hub-reader,{SUFFIX}", {"objectClass": ["organizationalRole"], "cn": "hub-reader",
                                                        "userPassword": "pw"})
    for ou in ("people", "groups"):
        conn.strategy.add_entry(f"ou={ou},{SUFFIX}", {"objectClass": ["organizationalUnit"], "ou": ou})
    for uid in people:
        conn.strategy.add_entry(f"uid={uid},{PEOPLE}", {"objectClass": ["inetOrgPerson"], "uid": uid, "cn": uid,
                                                        "sn": uid})
    for group, uids in members.items():
        conn.strategy.add_entry(f"cn={group},{GROUPS}", {"objectClass": ["groupOfNames"], "cn": group,
                                                         "member": [f"uid={u},{PEOPLE}" for u in uids]})
    conn.bind()
    return conn


def without(group, uid):
    return {**MEMBERS, group: [u for u in MEMBERS[group] if u != uid]}


# ---------------------------------------------------------------- the lookup
def test_membership_reads_the_persons_groups_by_name_and_dn():
    found = authenticator().membership_of(directory(), "bob")
    assert sorted(found.names) == ["datascientists", "fraud-team", "gpu-users"]
    assert dn_key(f"cn=fraud-team,{GROUPS}") in found.dns
    assert "fraud-team" not in authenticator().membership_of(directory(without("fraud-team", "bob")), "bob").names


def test_a_person_not_in_the_directory_has_no_membership_at_all():
    assert authenticator().membership_of(directory(), "mallory") is None


def test_the_persons_dn_is_the_first_template_naming_an_entry_as_at_login():
    auth = authenticator(bind_dn_template=[f"uid={{username}},ou=staff,{SUFFIX}", f"uid={{username}},{PEOPLE}"])
    assert auth.user_dn(directory(), "bob") == f"uid=bob,{PEOPLE}"


class RecordingConnection:
    """Answers every search with success and the given entries; records the searches."""

    def __init__(self, entries=(), result=0):
        self.searches, self.entries = [], list(entries)
        self.result = {"result": result, "description": "success" if result == 0 else "insufficientAccessRights"}

    def search(self, **kwargs):
        self.searches.append(kwargs)
        return bool(self.entries)


def test_the_dn_and_the_filter_are_escaped():
    auth = authenticator(group_membership_filter="(|(member={userdn})(memberUid={uid}))")
    # "a person exists" for any DN, and is in one group
    group = SimpleNamespace(entry_dn=f"cn=t,{GROUPS}", entry_attributes_as_dict={"cn": ["t"]})
    conn = RecordingConnection(entries=[group])
    auth.membership_of(conn, "a*b(c),d")
    person, groups = conn.searches
    assert person["search_base"] == rf"uid=a*b(c)\,d,{PEOPLE}"  # escape_rdn: the comma cannot end the RDN
    # escape_filter_chars: neither * nor parentheses nor the backslash act in the filter; {uid} is the name
    assert groups["search_filter"] == rf"(|(member=uid=a\2ab\28c\29\5c,d,{PEOPLE})(memberUid=a\2ab\28c\29,d))"
    assert groups["search_base"] == GROUPS and groups["attributes"] == ["cn"]


def test_a_refused_search_is_an_error_never_no_groups():
    auth = authenticator()
    with pytest.raises(LDAPException, match="insufficientAccessRights"):
        auth.member_groups(RecordingConnection(result=50), f"uid=bob,{PEOPLE}")
    with pytest.raises(LDAPException, match="insufficientAccessRights"):
        auth.user_dn(RecordingConnection(result=50), "bob")


def test_entitlement_allowed_groups_by_dn_and_admin_by_name():
    auth = authenticator()
    bob = auth.membership_of(directory(), "bob")
    assert auth.entitlement(bob) == {"groups": ["datascientists", "fraud-team", "gpu-users"], "admin": False}
    assert auth.entitlement(auth.membership_of(directory(), "carol"))["admin"] is True
    assert auth.entitlement(auth.membership_of(directory(), "eve")) is None  # in the directory, no allowed group
    assert auth.entitlement(None) is None  # not in the directory
    # DNs compare as LDAP does: case and spaces after commas do not matter
    spaced = authenticator(allowed_groups=["CN=Datascientists, OU=Groups, DC=lab, DC=example"])
    assert spaced.entitlement(bob) is not None
    assert authenticator(allowed_groups=[]).entitlement(Membership((), frozenset())) == {"groups": [],
                                                                                          "admin": False}


# ---------------------------------------------------------------- login and refresh
def test_login_mirrors_groups_and_admin_through_the_same_lookup(monkeypatch):
    membership = {}

    async def parent_login(self, handler, data):
        return {"name": data["username"], "auth_state": {"user_attributes": {"_datalab_groups": membership["of"]}}}

    monkeypatch.setattr(LDAPAuthenticator, "authenticate", parent_login)
    auth = authenticator()
    membership["of"] = auth.membership_of(directory(), "carol")
    model = asyncio.run(auth.authenticate(None, {"username": "carol", "password": "x"}))
    assert model["groups"] == ["datascientists", "lab-admins"] and model["admin"] is True
    assert "_datalab_groups" not in model["auth_state"]["user_attributes"]
    # the lookup finds no allowed group (e.g. a filter that misses them): refused, as a refresh would
    membership["of"] = auth.membership_of(directory(), "eve")
    assert asyncio.run(auth.authenticate(None, {"username": "eve", "password": "x"})) is None


def refreshed(auth, conn, name="bob"):
    auth.search_connection = lambda: contextlib.nullcontext(conn)
    return asyncio.run(auth.refresh_user(SimpleNamespace(name=name)))


def test_refresh_returns_the_directorys_groups_and_admin():
    assert refreshed(authenticator(), directory(without("fraud-team", "bob"))) == {
        "name": "bob", "groups": ["datascientists", "gpu-users"], "admin": False}
    assert refreshed(authenticator(), directory(without("lab-admins", "carol")), "carol") == {
        "name": "carol", "groups": ["datascientists"], "admin": False}


def test_refresh_logs_out_who_left_every_allowed_group_or_the_directory():
    assert refreshed(authenticator(), directory(without("datascientists", "bob"))) is False
    assert refreshed(authenticator(), directory(), "mallory") is False


def test_refresh_without_a_search_account_or_directory_changes_nothing(tmp_path):
    assert asyncio.run(authenticator(search_bind_dn="").refresh_user(SimpleNamespace(name="bob"))) is True

    @contextlib.contextmanager
    def unreachable():
        raise LDAPSocketOpenError("socket connection error while opening: [Errno 111] Connection refused")
        yield

    down = authenticator()
    down.search_connection = unreachable
    assert asyncio.run(down.refresh_user(SimpleNamespace(name="bob"))) is True
    # an unreadable password file: logged, nothing changed
    missing = authenticator(search_password_file=str(tmp_path / "missing"))
    assert asyncio.run(missing.refresh_user(SimpleNamespace(name="bob"))) is True


def test_the_search_account_binds_with_the_password_file_and_a_refused_bind_raises(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("s3cret\n")
    auth = authenticator(search_password_file=str(tmp_path / "pw"))
    binds = []
    conn = directory()
    monkeypatch.setattr(auth, "get_connection", lambda dn, pw: binds.append((dn, pw)) or conn)
    with auth.search_connection() as found:
        assert found is conn
    assert binds == [(f"cn=hub-reader,{SUFFIX}", "s3cret")]
    assert not conn.bound  # unbound after use
    monkeypatch.setattr(auth, "get_connection", lambda dn, pw: None)  # ldapauthenticator: bind refused
    with pytest.raises(LDAPException, match="refused the bind"):
        with auth.search_connection():
            pass


# ---------------------------------------------------------------- the sync's decisions
SPAWN = {"prefix": "lab", "teams": ["fraud-team", "aml-team"], "team_mount": "/home/jovyan/teams/{team}",
         "datasets_mount": "/home/jovyan/datasets", "profiles": [
             {"name": "python", "groups": ["datascientists", "lab-admins"]},
             {"name": "tensorflow-gpu", "groups": ["gpu-users"]}]}


def user(name, groups, admin=False, servers=None):
    return {"name": name, "admin": admin, "groups": list(groups), "servers": servers or {}}


def server(profile="python", **state):
    return {"ready": True, "pending": None, "user_options": {"profile": profile}, **state}


def container(*volumes):
    """Docker's summary of a container mounting these (name, read-write) volumes."""
    return {"Mounts": [{"Type": "volume", "Name": name, "RW": rw} for name, rw in volumes]}


def home(name):
    return (f"lab-user-{name}", True)


def test_memberships_follow_the_directory_both_ways():
    plan = groupsync.plan_user(user("bob", ["datascientists", "fraud-team"]),
                               {"groups": ["datascientists", "aml-team"], "admin": False}, {}, SPAWN)
    assert (plan.join, plan.leave, plan.remove, plan.stop) == (["aml-team"], ["fraud-team"], None, {})
    same = groupsync.plan_user(user("bob", ["datascientists"]), {"groups": ["datascientists"], "admin": False},
                               {}, SPAWN)
    assert not same.changes


def test_a_server_holding_a_team_volume_of_a_team_left_is_stopped():
    servers = {"": server(), "gpu": server()}
    containers = {"lab-bob": container(home("bob"), ("lab-team-fraud-team", True), ("lab-datasets", False)),
                  "lab-bob--gpu": container(home("bob"), ("lab-datasets", False))}
    plan = groupsync.plan_user(user("bob", ["datascientists", "fraud-team"], servers=servers),
                               {"groups": ["datascientists"], "admin": False}, containers, SPAWN)
    assert list(plan.stop) == [""] and "lab-team-fraud-team" in plan.stop[""]
    assert plan.leave == ["fraud-team"] and plan.remove is None


def test_the_mounts_decide_even_when_the_hubs_groups_are_already_fresh():
    # refresh_user already took fraud-team out of the hub; the server started before still holds it
    plan = groupsync.plan_user(user("bob", ["datascientists"], servers={"": server()}),
                               {"groups": ["datascientists"], "admin": False},
                               {"lab-bob": container(home("bob"), ("lab-team-fraud-team", True))}, SPAWN)
    assert list(plan.stop) == [""] and not plan.leave


def test_servers_the_groups_still_allow_keep_running():
    plan = groupsync.plan_user(
        user("alice", ["datascientists", "fraud-team"], servers={"": server(), "x": server(pending="spawn")}),
        {"groups": ["datascientists", "fraud-team"], "admin": False},
        {"lab-alice": container(home("alice"), ("lab-team-fraud-team", True), ("lab-datasets", False),
                                ("unrelated-cache", True))}, SPAWN)
    assert not plan.changes  # "x" has no container yet: it mounts what the refreshed groups give


def test_datasets_read_write_without_admin_and_a_profile_no_longer_open_are_stopped():
    plan = groupsync.plan_user(
        user("bob", ["datascientists", "gpu-users"], servers={"": server(), "gpu": server("tensorflow-gpu")}),
        {"groups": ["datascientists"], "admin": False},
        {"lab-bob": container(home("bob"), ("lab-datasets", True)), "lab-bob--gpu": container(home("bob"))}, SPAWN)
    assert set(plan.stop) == {"", "gpu"}
    assert "lab-datasets" in plan.stop[""] and "tensorflow-gpu" in plan.stop["gpu"]


def test_a_server_already_stopping_or_without_a_readable_engine_is_left_alone():
    servers = {"": server(pending="stop"), "b": server()}
    held = {"lab-bob": container(("lab-team-fraud-team", True)), "lab-bob--b": container(("lab-team-fraud-team", True))}
    plan = groupsync.plan_user(user("bob", ["datascientists"], servers=servers),
                               {"groups": ["datascientists"], "admin": False}, held, SPAWN)
    assert list(plan.stop) == ["b"]
    unknown = groupsync.plan_user(user("bob", ["datascientists"], servers={"b": server()}),
                                  {"groups": ["datascientists"], "admin": False}, None, SPAWN)
    assert not unknown.changes


def test_leaving_every_allowed_group_or_an_admin_group_removes_the_user_from_the_hub():
    gone = groupsync.plan_user(user("bob", ["datascientists", "fraud-team"], servers={"": server()}), None, {}, SPAWN)
    assert gone.remove and gone.leave == ["datascientists", "fraud-team"] and list(gone.stop) == [""]
    demoted = groupsync.plan_user(user("carol", ["datascientists", "lab-admins"], admin=True),
                                  {"groups": ["datascientists"], "admin": False}, {}, SPAWN)
    assert "admin" in demoted.remove
    # admin granted by the directory: not the sync's to give (no admin role); the next hub request does
    promoted = groupsync.plan_user(user("alice", ["datascientists"]),
                                   {"groups": ["datascientists", "lab-admins"], "admin": True}, {}, SPAWN)
    assert promoted.remove is None and promoted.join == ["lab-admins"]


def test_container_names_are_dockerspawners():
    assert groupsync.container_name("lab", "bob", "") == "lab-bob"
    assert groupsync.container_name("lab", "o.neil", "GPU") == "lab-o-2eneil--gpu"


# ---------------------------------------------------------------- a pass, against fakes
class FakeHub:
    def __init__(self, users, groups):
        self.models, self.groups, self.calls = {u["name"]: u for u in users}, set(groups), []

    def users(self):
        return list(self.models.values())

    def servers(self, name):
        return self.models[name]["servers"] if name in self.models else {}

    def join(self, group, name):
        self.calls.append(("join", group, name))
        return group in self.groups

    def leave(self, group, name):
        self.calls.append(("leave", group, name))

    def stop(self, name, server_name):
        self.calls.append(("stop", name, server_name))
        self.models[name]["servers"].pop(server_name)

    def delete_user(self, name):
        self.calls.append(("delete", name))
        del self.models[name]


class FakeEngine:
    def __init__(self, containers):
        self.found = [{"Names": [f"/{name}"], **c} for name, c in containers.items()]

    def containers(self, filters):
        assert filters == {"label": "org.datalab.lab=lab"}
        return self.found


def reader(conn):
    auth = authenticator()
    auth.search_connection = lambda: contextlib.nullcontext(conn)
    return auth


def test_a_pass_applies_the_directorys_changes_to_the_hub():
    hub = FakeHub([user("alice", ["datascientists", "fraud-team"]),
                   user("bob", ["datascientists", "fraud-team", "gpu-users"], servers={"": server()}),
                   user("carol", ["datascientists", "lab-admins"], admin=True, servers={"": server()})],
                  groups=["datascientists", "fraud-team", "gpu-users", "lab-admins"])
    members = {**without("fraud-team", "bob"), "lab-admins": [], "aml-team": ["alice"]}
    engine = FakeEngine({"lab-bob": container(home("bob"), ("lab-team-fraud-team", True)),
                         "lab-carol": container(home("carol"), ("lab-datasets", True))})
    plans = groupsync.sync_once(hub, reader(directory(members)), engine, SPAWN, stop_wait=0)
    assert {p.user for p in plans} == {"alice", "bob", "carol"}
    assert ("join", "aml-team", "alice") in hub.calls  # no such hub group yet: comes with her next request
    assert ("leave", "fraud-team", "bob") in hub.calls and ("stop", "bob", "") in hub.calls
    # carol left lab-admins: out of her groups, her server stopped, then deleted (admin goes with her)
    assert [c for c in hub.calls if "carol" in c] == [
        ("leave", "datascientists", "carol"), ("leave", "lab-admins", "carol"), ("stop", "carol", ""),
        ("delete", "carol")]
    assert set(hub.models) == {"alice", "bob"}


def test_a_pass_changes_nothing_when_the_directory_shows_nobody_allowed():
    hub = FakeHub([user("alice", ["datascientists"]), user("bob", ["datascientists"])], groups=["datascientists"])
    # what a reader that may not read groups (or a wrong filter) looks like
    assert groupsync.sync_once(hub, reader(directory(members={})), FakeEngine({}), SPAWN) == []
    assert hub.calls == []


def test_a_pass_stops_before_any_change_when_the_directory_cannot_be_read():
    hub = FakeHub([user("bob", ["datascientists"])], groups=["datascientists"])
    with pytest.raises(LDAPException):
        groupsync.sync_once(hub, reader(RecordingConnection(result=50)), FakeEngine({}), SPAWN)
    assert hub.calls == []


def test_a_user_still_stopping_is_deleted_at_a_later_pass():
    hub = FakeHub([user("bob", ["datascientists"], servers={"": server()})], groups=["datascientists"])
    hub.stop = lambda name, server_name: hub.calls.append(("stop", name, server_name))  # stays "stopping"
    groupsync.remove_users(hub, [groupsync.Plan("bob", remove="gone")], stop_wait=0)
    assert ("delete", "bob") not in hub.calls and "bob" in hub.models


# ---------------------------------------------------------------- the hub's API
class FakeResponse:
    def __init__(self, status, body=None):
        self.status_code, self._body, self.text = status, body, json.dumps(body)

    def json(self):
        return self._body


class FakeSession:
    def __init__(self, answers):
        self.headers, self.answers, self.requests = {}, answers, []

    def request(self, method, url, timeout, **kwargs):
        self.requests.append((method, url, kwargs))
        return self.answers.pop(0)


def test_the_hub_client_pages_through_users_and_speaks_the_group_and_server_endpoints():
    session = FakeSession([
        FakeResponse(200, {"items": [{"name": "a"}], "_pagination": {"next": {"offset": 200, "limit": 200}}}),
        FakeResponse(200, {"items": [{"name": "b"}], "_pagination": {"next": None}}),
        FakeResponse(404, {"message": "No such group"}), FakeResponse(200, {"name": "fraud-team", "users": []}),
        FakeResponse(202), FakeResponse(204)])
    hub = groupsync.Hub("http://hub:8081/hub/api/", "tok", session)
    assert [u["name"] for u in hub.users()] == ["a", "b"]
    assert hub.join("new team", "a") is False
    hub.leave("fraud-team", "a")
    hub.stop("a", "my gpu")
    hub.delete_user("a")
    urls = [(m, u) for m, u, _ in session.requests]
    assert urls[1] == ("GET", "http://hub:8081/hub/api/users?offset=200&limit=200")
    assert session.requests[0][2]["headers"] == {"Accept": "application/jupyterhub-pagination+json"}
    assert urls[2:] == [("POST", "http://hub:8081/hub/api/groups/new%20team/users"),
                        ("DELETE", "http://hub:8081/hub/api/groups/fraud-team/users"),
                        ("DELETE", "http://hub:8081/hub/api/users/a/servers/my%20gpu"),
                        ("DELETE", "http://hub:8081/hub/api/users/a")]
    assert session.requests[3][2]["json"] == {"users": ["a"]}
    assert session.headers["Authorization"] == "token tok"


def test_the_builtin_directory_gets_a_reader_password_generated_once(tmp_path):
    s = settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path)}})
    files = credentials.ensure(s)
    password = files["ldap_search_password"]
    assert oct(password.stat().st_mode & 0o777) == "0o600" and len(password.read_text()) >= 24
    assert credentials.ensure(s)["ldap_search_password"].read_text() == password.read_text()
