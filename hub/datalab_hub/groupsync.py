"""The group-sync service: keeps the hub in step with the directory between logins.

JupyterHub reads a user's groups again (refresh_user, auth.py) only when a
request of theirs reaches the hub. A user who never comes to the hub - their
scheduled job, an MLflow client whose token the registry gateway checks with
the hub - would keep groups the directory took away. So this hub-managed
service (like the idle culler: a loop, the hub's REST API, a role of its own)
reads every hub user's groups from the directory every `hub.group_sync_every`
seconds, with the authenticator's own lookup and settings, and:

- sets the user's hub group memberships to match: removed from groups they
  left, added to groups the hub has (a group new to the hub comes with their
  next login or hub request, which create it);
- deletes from the hub a user who is in no allowed group any more, or a hub
  admin no longer in the admin groups, once their servers are stopped: every
  token and session of theirs goes with them; their volumes, jobs and models
  stay, and a new login (if allowed) makes them again with the directory's
  groups. JupyterHub lets only an admin take admin away (PATCH /users/{name}),
  and deleting needs `delete:users` only, so this service holds no admin role;
- stops a running server that mounts a volume the user would not get now (a
  team's, the datasets read-write) or runs a profile their groups no longer
  open: a volume cannot be unmounted from a running container. Their home stays.

What the servers mount is read from the Docker engine (the hub's container has
its socket): the hub's groups may already be fresh (refresh_user) while a
server started earlier still holds the volume.

A pass changes nothing when the directory cannot be read, nor when it shows
none of the hub's users in an allowed group: a search account that may not
read groups or people looks exactly like that.
"""

import logging
import os
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import docker
import requests
from dockerspawner import DockerSpawner
from ldap3.core.exceptions import LDAPException
from traitlets.config import Config

from datalab_client import logs

from . import profiles as profile_policy
from .auth import DataLabLDAPAuthenticator
from .config import configure, runtime_settings
from .volumes import volume_mounts

log = logging.getLogger("datalab.groupsync")
PAGINATED = "application/jupyterhub-pagination+json"
# How long one pass waits for the servers of users it removes to stop before deleting them
# (a later pass deletes those that took longer).
STOP_WAIT_SECONDS = 60


@dataclass
class Plan:
    """What one pass changes for one hub user."""

    user: str
    remove: str | None = None  # why the user is deleted from the hub (once their servers are stopped)
    join: list = field(default_factory=list)
    leave: list = field(default_factory=list)
    stop: dict = field(default_factory=dict)  # server name ("" = default) -> why

    @property
    def changes(self):
        return bool(self.remove or self.join or self.leave or self.stop)


def container_name(prefix, user, server):
    """The container DockerSpawner names for a server (its default name_template)."""
    name = f"{prefix}-{DockerSpawner._escape(user)}"
    return f"{name}--{DockerSpawner._escape(server.lower())}" if server else name


def excess_mounts(mounts, expected, prefix):
    """The lab's volumes among a container's `mounts` (Docker's inspect format) that
    `expected` (volumes.volume_mounts) does not give, or gives read-only where they
    are mounted read-write."""
    excess = []
    for mount in mounts:
        name = mount.get("Name") or ""
        if mount.get("Type") != "volume" or not name.startswith(f"{prefix}-"):
            continue
        wanted = expected.get(name)
        if wanted is None or (mount.get("RW") and wanted["mode"] == "ro"):
            excess.append(name)
    return excess


def plan_user(model, entitled, containers, spawn):
    """Plan for the hub user `model` (the hub's user model, with groups and servers),
    given what the directory entitles them to now (auth.entitlement: None = nothing).

    containers: {name: Docker's container summary} of the lab, or None when the engine
    could not be read (then no server is stopped for its mounts this pass).
    spawn: the hub's spawner settings (prefix, teams, team_mount, datasets_mount, profiles)."""
    name, servers = model["name"], model.get("servers") or {}
    in_hub = set(model.get("groups") or [])
    if entitled is None or (model.get("admin") and not entitled["admin"]):
        why = "in no allowed group of the directory" if entitled is None else "no longer in the admin groups"
        return Plan(name, remove=why, leave=sorted(in_hub), stop={s: why for s in servers})
    groups = set(entitled["groups"])
    plan = Plan(name, join=sorted(groups - in_hub), leave=sorted(in_hub - groups))
    # admin as the hub has it: a server was started with that (a promotion waits for the user's next hub request)
    expected = volume_mounts(spawn, name, groups, bool(model.get("admin")))
    for server, info in servers.items():
        if info.get("pending") == "stop":
            continue
        profile = (info.get("user_options") or {}).get("profile")
        if profile:
            try:
                profile_policy.choose(spawn["profiles"], groups, profile)
            except profile_policy.ProfileError as e:
                plan.stop[server] = e.message
                continue
        if containers is None:
            continue
        container = containers.get(container_name(spawn["prefix"], name, server))
        if container is None:
            if info.get("ready"):
                log.error("%s: no container %s for its running server %r; its volumes cannot be checked",
                          name, container_name(spawn["prefix"], name, server), server)
            continue  # a server still starting mounts what the (refreshed) groups give
        excess = excess_mounts(container.get("Mounts") or [], expected, spawn["prefix"])
        if excess:
            plan.stop[server] = f"it mounts {', '.join(excess)}, which {name}'s groups no longer give"
    return plan


class Hub:
    """The hub's REST API, with this service's token."""

    def __init__(self, api_url, token, session=None):
        self.api_url = api_url.rstrip("/")
        self.http = session or requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def call(self, method, path, ok=(200, 201, 202, 204), **kwargs):
        r = self.http.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
        if r.status_code not in ok:
            raise requests.HTTPError(f"{method} {path}: {r.status_code} {r.text[:300]}", response=r)
        return r

    def users(self):
        """Every hub user's model (groups, admin, active servers), page by page."""
        found, offset = [], 0
        while True:
            page = self.call("GET", f"/users?offset={offset}&limit=200", headers={"Accept": PAGINATED}).json()
            found.extend(page["items"])
            following = page["_pagination"].get("next")
            if not following:
                return found
            offset = following["offset"]

    def servers(self, user):
        """The user's active servers ({} when there is no such user any more)."""
        r = self.call("GET", f"/users/{quote(user, safe='')}", ok=(200, 404))
        return (r.json().get("servers") or {}) if r.status_code == 200 else {}

    def join(self, group, user):
        """Add `user` to `group`; False when the hub has no such group."""
        r = self.call("POST", f"/groups/{quote(group, safe='')}/users", ok=(200, 404), json={"users": [user]})
        return r.status_code == 200

    def leave(self, group, user):
        self.call("DELETE", f"/groups/{quote(group, safe='')}/users", ok=(200, 404), json={"users": [user]})

    def stop(self, user, server):
        path = f"/users/{quote(user, safe='')}/" + (f"servers/{quote(server, safe='')}" if server else "server")
        self.call("DELETE", path, ok=(202, 204, 400, 404))  # 400/404: already stopped or stopping

    def delete_user(self, user):
        self.call("DELETE", f"/users/{quote(user, safe='')}", ok=(204, 404))


def lab_containers(engine, prefix):
    """{name: summary} of the lab's containers, or None when the engine cannot be read."""
    try:
        found = engine.containers(filters={"label": f"org.datalab.lab={prefix}"})
    except Exception as e:  # docker-py raises its own, requests' and socket errors alike
        log.error("the Docker engine could not be read, servers' volumes not checked this pass: %s", e)
        return None
    return {c["Names"][0].lstrip("/"): c for c in found if c.get("Names")}


def sync_once(hub, auth, engine, spawn, stop_wait=STOP_WAIT_SECONDS):
    """One pass over every hub user; returns the plans that changed something.
    Raises LDAPException (and changes nothing) when the directory cannot be read."""
    users = hub.users()
    if not users:
        return []
    with auth.search_connection() as conn:
        entitled = {u["name"]: auth.entitlement(auth.membership_of(conn, u["name"])) for u in users}
    if not any(entitled.values()):
        # A search account that may not read groups or people, or a wrong filter, looks
        # like this too; it is far likelier than everyone leaving the lab at once.
        log.error("the directory shows none of the hub's %d users in an allowed group: changing nothing "
                  "(can %s read group entries and people's DNs?)", len(users), auth.search_bind_dn)
        return []
    containers = lab_containers(engine, spawn["prefix"])
    plans = [p for p in (plan_user(u, entitled[u["name"]], containers, spawn) for u in users) if p.changes]
    for plan in plans:
        apply(hub, plan)
    remove_users(hub, [p for p in plans if p.remove], stop_wait)
    return plans


def apply(hub, plan):
    for group in plan.leave:
        hub.leave(group, plan.user)
        log.info("%s removed from group %s (directory)", plan.user, group)
    for group in plan.join:
        if hub.join(group, plan.user):
            log.info("%s added to group %s (directory)", plan.user, group)
        else:
            log.info("%s is in %s, which the hub does not have yet: it comes with their next hub request",
                     plan.user, group)
    for server, why in plan.stop.items():
        hub.stop(plan.user, server)
        log.warning("stopping %s's server %r: %s", plan.user, server, why)


def remove_users(hub, plans, stop_wait):
    """Delete the planned users once their servers have stopped (JupyterHub refuses to
    delete a user with an active server); those still stopping are left to the next pass."""
    waiting = {p.user: p.remove for p in plans}
    deadline = time.monotonic() + stop_wait
    while waiting:
        for user, why in list(waiting.items()):
            if not hub.servers(user):
                hub.delete_user(user)
                log.warning("%s deleted from the hub: %s (their volumes stay; a login makes them again)", user, why)
                del waiting[user]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(1)
    for user in waiting:
        log.warning("%s: servers still stopping; deleted at a later pass", user)


def main():
    logs.configure()
    runtime = runtime_settings()
    # the hub's own configuration: the same directory, TLS, templates, filters and groups as its logins
    config = Config()
    configure(config, runtime)
    auth = DataLabLDAPAuthenticator(config=config, log=log)
    hub = Hub(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    engine = docker.from_env().api
    every = float(runtime["hub"]["group_sync_every"])
    log.info("every %g s: hub users' groups from %s as %s", every, auth.server_address, auth.search_bind_dn)
    while True:
        began = time.monotonic()
        try:
            sync_once(hub, auth, engine, runtime["spawner"])
        except (LDAPException, OSError) as e:  # OSError: the password file or the hub's API (requests' errors)
            log.warning("pass not completed: %s", e)
        except Exception:
            log.exception("pass failed")
        time.sleep(max(1.0, every - (time.monotonic() - began)))


if __name__ == "__main__":
    main()
