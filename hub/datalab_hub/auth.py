"""LDAP login that also mirrors the user's LDAP groups into JupyterHub groups,
and reads them again between logins.

ldapauthenticator 2.0 only reports which *allowed* groups matched, so the
hub's groups (and admin rights) need their own lookup: at login with the
user's own bind while it is still open; later (refresh_user, and the
group-sync service in groupsync.py) with a read-only search account, since
the hub has no password of the user's after the login. Both go through
`membership_of` and `entitlement`, so a login, a refresh and a sync pass
decide the same way.

ldapauthenticator's `authenticate` is a coroutine in name only: its binds and
searches are blocking ldap3 calls. On the hub's event loop, a login wave (each
login a StartTLS handshake, a bind and several searches) froze every other
request for seconds, health checks included, so it runs in a worker thread;
so does a refresh's lookup.
"""

import asyncio
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ldap3 import BASE, NO_ATTRIBUTES, SUBTREE
from ldap3.core.exceptions import LDAPBindError, LDAPException
from ldap3.core.results import RESULT_NO_SUCH_OBJECT, RESULT_SUCCESS
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn
from ldapauthenticator import LDAPAuthenticator
from tornado import web
from traitlets import Int, Set, Unicode

# Key under which get_user_attributes hands the membership to authenticate().
_GROUPS_KEY = "_datalab_groups"

DIRECTORY_DOWN_MESSAGE = (
    "The directory service cannot be reached, so your login cannot be checked "
    "right now. Running notebook servers are not affected; try again in a minute."
)


def dn_key(dn):
    """A DN as LDAP compares the DNs used here: attribute types and values without
    regard to case, spaces around the separators ignored ("CN=Team, ou=Groups")."""
    rdns = re.split(r"(?<!\\),", dn)
    return tuple((rdn.partition("=")[0].strip().lower(), rdn.partition("=")[2].strip().lower()) for rdn in rdns)


@dataclass(frozen=True)
class Membership:
    """The groups the directory lists a user in: their names (the hub's group names)
    and their DNs (as dn_key), which allowed_groups is given as."""

    names: tuple
    dns: frozenset


class DataLabLDAPAuthenticator(LDAPAuthenticator):
    group_search_base = Unicode(
        "",
        config=True,
        help="Base DN under which the user's groups are searched for mirroring.",
    )
    group_membership_filter = Unicode(
        "(&(objectClass=groupOfNames)(member={userdn}))",
        config=True,
        help="LDAP filter finding the groups a user belongs to; {userdn} and "
        "{uid} are replaced, escaped.",
    )
    group_name_attribute = Unicode(
        "cn",
        config=True,
        help="Attribute of a group entry used as the JupyterHub group name.",
    )
    admin_ldap_groups = Set(
        Unicode(),
        config=True,
        help="Names of LDAP groups whose members are hub admins; membership "
        "is re-checked at every login and refresh, so removal from the group revokes admin.",
    )
    max_username_length = Int(
        64,
        config=True,
        help="Longer login names are refused before any LDAP request is made.",
    )
    search_bind_dn = Unicode(
        "",
        config=True,
        help="DN of a read-only directory account that may read group entries and "
        "people's DNs. The hub binds as it to read a user's groups between logins "
        "(refresh_user, the group-sync service). Empty: groups change at login only.",
    )
    search_password_file = Unicode(
        "",
        config=True,
        help="File holding search_bind_dn's password (a Swarm secret); read at each "
        "bind, so a rotated password needs no restart.",
    )

    async def authenticate(self, handler, data):
        username = (data.get("username") or "").lower()
        if len(username) > self.max_username_length:
            self.log.warning("Refused login: username longer than %d characters", self.max_username_length)
            return None
        try:
            # the parent coroutine awaits nothing: it runs to completion on the thread's own loop
            ldap_login = super().authenticate(handler, {**data, "username": username})
            auth_model = await asyncio.to_thread(asyncio.run, ldap_login)
        except LDAPException as e:
            self.log.error("Directory unreachable during login of %r: %s", username, e)
            raise web.HTTPError(503, DIRECTORY_DOWN_MESSAGE) from None
        if not auth_model:
            return None
        entitled = self.entitlement(auth_model["auth_state"]["user_attributes"].pop(_GROUPS_KEY))
        if entitled is None:
            # Refreshes and the sync pass would log them out again at once: refuse now, saying why.
            self.log.warning("Refused login of %r: none of the groups that group_membership_filter finds under "
                             "group_search_base is an allowed group", username)
            return None
        auth_model.update(entitled)
        return auth_model

    def get_user_attributes(self, conn, userdn):
        attributes = dict(super().get_user_attributes(conn, userdn))
        attributes[_GROUPS_KEY] = self.member_groups(conn, userdn)
        return attributes

    def member_groups(self, conn, userdn):
        """Membership of userdn: the groups under group_search_base that list it.
        An answer other than success raises: "no groups" must mean no groups, never
        a search the directory refused."""
        if not self.group_search_base:
            return Membership((), frozenset())
        # {uid}: the value of the DN's first RDN, its RFC 4514 escapes undone (escape_rdn made them)
        uid = re.sub(r"\\(.)", r"\1", re.split(r"(?<!\\),", userdn, maxsplit=1)[0].split("=", 1)[-1])
        conn.search(
            search_base=self.group_search_base,
            search_scope=SUBTREE,
            search_filter=self.group_membership_filter.format(
                userdn=escape_filter_chars(userdn), uid=escape_filter_chars(uid)
            ),
            attributes=[self.group_name_attribute],
        )
        if conn.result["result"] != RESULT_SUCCESS:
            raise LDAPException(f"group search under {self.group_search_base} failed: {conn.result['description']}")
        names, dns = [], set()
        for entry in conn.entries:
            values = entry.entry_attributes_as_dict.get(self.group_name_attribute) or []
            names.extend(str(v) for v in values[:1])
            dns.add(dn_key(entry.entry_dn))
        return Membership(tuple(names), frozenset(dns))

    # ---- between logins ----------------------------------------------------
    @contextmanager
    def search_connection(self):
        """A connection bound as the search account (blocking; TLS as for logins)."""
        password = Path(self.search_password_file).read_text().strip()
        conn = self.get_connection(self.search_bind_dn, password)
        if conn is None:
            raise LDAPBindError(f"the directory refused the bind of the search account {self.search_bind_dn}")
        try:
            yield conn
        finally:
            conn.unbind()

    def user_dn(self, conn, username):
        """The DN of `username`: the first bind_dn_template naming an entry, as a login
        tries them; None when there is no such person."""
        for template in self.bind_dn_template:
            userdn = template.format(username=escape_rdn(username))
            conn.search(search_base=userdn, search_filter="(objectClass=*)", search_scope=BASE,
                        attributes=NO_ATTRIBUTES)
            if conn.result["result"] == RESULT_SUCCESS and conn.entries:
                return userdn
            if conn.result["result"] not in (RESULT_SUCCESS, RESULT_NO_SUCH_OBJECT):
                raise LDAPException(f"looking up {userdn} failed: {conn.result['description']}")
        return None

    def membership_of(self, conn, username):
        """Membership of `username` read with `conn` (the search account's), or None
        when the directory has no such person. Blocking."""
        userdn = self.user_dn(conn, username)
        return None if userdn is None else self.member_groups(conn, userdn)

    def entitlement(self, membership):
        """What the hub gives a user with this membership (None: no such person):
        {"groups": names, "admin": bool}, or None when they are in no allowed group."""
        if membership is None:
            return None
        if self.allowed_groups and not membership.dns & {dn_key(dn) for dn in self.allowed_groups}:
            return None
        return {"groups": sorted(membership.names), "admin": bool(self.admin_ldap_groups & set(membership.names))}

    async def refresh_user(self, user, handler=None):
        """Called by the hub on a request of `user` once auth_refresh_age has passed
        (and the group-sync service for everyone): their groups and admin flag as the directory has them
        now, or False (a new login is needed, which is refused) once they are in no
        allowed group or gone. A directory that does not answer changes nothing: the
        group-sync service catches up when it answers again."""
        if not self.search_bind_dn:
            return True

        def lookup():
            with self.search_connection() as conn:
                return self.membership_of(conn, user.name)

        try:
            entitled = self.entitlement(await asyncio.to_thread(lookup))
        except (LDAPException, OSError) as e:  # OSError: the password file could not be read
            self.log.warning("Groups of %s not refreshed, the directory could not be read: %s", user.name, e)
            return True
        if entitled is None:
            self.log.warning("%s is no longer in any allowed group of the directory: logged out", user.name)
            return False
        return {"name": user.name, **entitled}
