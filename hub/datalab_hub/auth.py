"""LDAP login that also mirrors the user's LDAP groups into JupyterHub groups.

ldapauthenticator 2.0 only reports which *allowed* groups matched, so the
hub's groups (and admin rights) need their own lookup, done here with the
user's own bind while it is still open.

ldapauthenticator's `authenticate` is a coroutine in name only: its binds and
searches are blocking ldap3 calls. On the hub's event loop, a login wave (each
login a StartTLS handshake, a bind and several searches) froze every other
request for seconds, health checks included, so it runs in a worker thread.
"""

import asyncio

from ldap3 import SUBTREE
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldapauthenticator import LDAPAuthenticator
from tornado import web
from traitlets import Int, Set, Unicode

# Key under which get_user_attributes hands the groups to authenticate().
_GROUPS_KEY = "_datalab_groups"

DIRECTORY_DOWN_MESSAGE = (
    "The directory service cannot be reached, so your login cannot be checked "
    "right now. Running notebook servers are not affected; try again in a minute."
)


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
        "is re-checked at every login, so removal from the group revokes admin.",
    )
    max_username_length = Int(
        64,
        config=True,
        help="Longer login names are refused before any LDAP request is made.",
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
        groups = auth_model["auth_state"]["user_attributes"].pop(_GROUPS_KEY, [])
        auth_model["groups"] = sorted(groups)
        auth_model["admin"] = bool(self.admin_ldap_groups & set(groups))
        return auth_model

    def get_user_attributes(self, conn, userdn):
        attributes = dict(super().get_user_attributes(conn, userdn))
        attributes[_GROUPS_KEY] = self.member_groups(conn, userdn)
        return attributes

    def member_groups(self, conn, userdn):
        """Names of the groups under group_search_base listing userdn."""
        if not self.group_search_base:
            return []
        uid = userdn.split(",", 1)[0].split("=", 1)[-1]
        conn.search(
            search_base=self.group_search_base,
            search_scope=SUBTREE,
            search_filter=self.group_membership_filter.format(
                userdn=escape_filter_chars(userdn), uid=escape_filter_chars(uid)
            ),
            attributes=[self.group_name_attribute],
        )
        names = []
        for entry in conn.entries:
            values = entry.entry_attributes_as_dict.get(self.group_name_attribute) or []
            names.extend(str(v) for v in values[:1])
        return names
