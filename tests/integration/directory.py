"""Extra users in the demo directory (slapd), for login waves: added with
ldapadd inside the directory's container, as its admin, over StartTLS."""

import secrets

from datalab import credentials


def _ldap(docker, settings, tool, ldif):
    cid = docker.out("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={settings.lab}_directory").split()[0]
    base = settings["directory"]["base_dn"]
    script = (f'LDAPTLS_CACERT=/run/secrets/ldap_ca_crt {tool} -c -ZZ -H ldap://directory:1389 '
              f'-D "cn=admin,{base}" -y /run/secrets/ldap_admin_password')
    proc = docker.run("exec", "-i", cid, "sh", "-c", script, input=ldif, check=False)
    # 68: already exists, 16/20: attribute value missing/present (a re-run after an aborted one)
    if proc.returncode not in (0, 16, 20, 68):
        raise RuntimeError(f"{tool} in the directory failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def add_users(docker, settings, names, group="datascientists"):
    """Add `names` to the directory, members of `group`; returns {name: password}."""
    base = settings["directory"]["base_dn"]
    passwords = {n: secrets.token_urlsafe(12) for n in names}
    entries = [f"dn: uid={n},ou=people,{base}\nobjectClass: inetOrgPerson\nuid: {n}\ncn: {n}\nsn: extra\n"
               f"userPassword: {credentials.ssha(passwords[n])}\n" for n in names]
    _ldap(docker, settings, "ldapadd", "\n".join(entries))
    _ldap(docker, settings, "ldapmodify", f"dn: cn={group},ou=groups,{base}\nchangetype: modify\nadd: member\n"
          + "".join(f"member: uid={n},ou=people,{base}\n" for n in names))
    return passwords


def remove_users(docker, settings, names, group="datascientists"):
    base = settings["directory"]["base_dn"]
    _ldap(docker, settings, "ldapmodify", f"dn: cn={group},ou=groups,{base}\nchangetype: modify\ndelete: member\n"
          + "".join(f"member: uid={n},ou=people,{base}\n" for n in names))
    _ldap(docker, settings, "ldapdelete", "".join(f"uid={n},ou=people,{base}\n" for n in names))
