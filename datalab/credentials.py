"""Secrets generated at first `up`: cookie secret, proxy token, directory admin
password, the password of the hub's read-only directory account, the lab's
CA and the directory's (and, with [hub] or [scoring] https, the hub's) server
certificate, the feature store's password, the scoring feedback token, and the
demo users' passwords. Written
once into <data_dir>/secrets (0600), reused afterwards, never printed (except
the demo logins, on purpose, by `demo-logins`, and the feedback token, by
`scoring feedback-token`)."""

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .settings import SettingsError

REPO = Path(__file__).resolve().parent.parent
SEED_LDIF = REPO / "directory" / "seed.ldif"
DIRECTORY_HOSTNAMES = ("directory", "tasks.directory", "localhost")


def secrets_dir(settings):
    return settings.data_dir / "secrets"


def _write_private(path, data):
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def _ensure(path, make):
    """Create path with make() unless it exists; return its content."""
    if not path.exists():
        _write_private(path, make())
    return path.read_bytes()


def ssha(password):
    """An LDAP {SSHA} hash, as slappasswd makes it."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def seed_users(ldif_text):
    return re.findall(r"^uid: (\S+)$", ldif_text, flags=re.M)


def render_seed(ldif_text, suffix, passwords):
    """The seed LDIF with the suffix filled in and a password hash per person."""
    out = []
    for line in ldif_text.replace("@SUFFIX@", suffix).splitlines():
        out.append(line)
        uid = re.fullmatch(r"uid: (\S+)", line)
        if uid:
            out.append(f"userPassword: {ssha(passwords[uid.group(1)])}")
    return "\n".join(out) + "\n"


def _new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject_cn, public_key, issuer_name, signing_key, *, ca, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650 if ca else 825))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        names = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


def ensure_lab_ca(sdir):
    """The lab's own CA (made once): it signs the directory's certificate and, unless
    the site gives one, the hub's. Its certificate is what clients are told to trust."""
    ca_key_path, ca_crt_path = sdir / "ca.key", sdir / "ca.crt"
    if not ca_crt_path.exists():
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DataLab lab CA")])
        cert = _certificate("DataLab lab CA", key.public_key(), name, key, ca=True)
        _write_private(ca_key_path, _pem_key(key))
        _write_private(ca_crt_path, cert.public_bytes(serialization.Encoding.PEM))
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    return ca_key, x509.load_pem_x509_certificate(ca_crt_path.read_bytes())


def _ensure_server_certificate(sdir, name, subject_cn, sans):
    """<name>.crt and .key signed by the lab's CA for exactly `sans`: made again when
    the names asked for change (a new public host)."""
    crt_path, key_path = sdir / f"{name}.crt", sdir / f"{name}.key"
    if crt_path.exists() and key_path.exists():
        current = x509.load_pem_x509_certificate(crt_path.read_bytes())
        try:
            names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(n.value) for n in names}
        except x509.ExtensionNotFound:
            have = set()
        if have == set(sans):
            return crt_path, key_path
    ca_key, ca_cert = ensure_lab_ca(sdir)
    key = _new_key()
    cert = _certificate(subject_cn, key.public_key(), ca_cert.subject, ca_key, ca=False, sans=tuple(sans))
    _write_private(key_path, _pem_key(key))
    _write_private(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path


def ensure_directory_pki(sdir):
    """A lab CA and the directory's server certificate signed by it."""
    _ensure_server_certificate(sdir, "ldap-server", "directory", DIRECTORY_HOSTNAMES + ("127.0.0.1",))


def hub_tls_names(settings):
    """The names the certificate DataLab makes covers: the hub's public host, every
    user's and service's origin under it (alice.<host>, registry--service.<host>), and
    this machine's loopback, where the scoring edge is called from ([scoring] https)."""
    host = settings["hub"]["public_host"]
    return (host, *([f"*.{host}"] if settings["hub"]["per_user_origins"] else []), "localhost", "127.0.0.1")


def hub_tls(settings):
    """(certificate, key) of the hub's HTTPS: the site's files, or a certificate DataLab
    makes from the lab's CA (whose file clients are then given: lab_ca_file)."""
    hub = settings["hub"]
    if hub["tls_cert_file"]:
        for key in ("tls_cert_file", "tls_key_file"):
            if not Path(hub[key]).is_file():
                raise SettingsError(f"[hub] {key}: {hub[key]} is not a file on this host")
        return Path(hub["tls_cert_file"]), Path(hub["tls_key_file"])
    return _ensure_server_certificate(secrets_dir(settings), "hub-tls", hub["public_host"], hub_tls_names(settings))


def image_registry_tls(settings):
    """(certificate, key) of the image registry's HTTPS, from the lab's CA, for the
    address the nodes pull from and this machine's loopback."""
    host = settings["lab"]["advertise_addr"]
    return _ensure_server_certificate(secrets_dir(settings), "image-registry-tls", host,
                                      tuple(dict.fromkeys((host, "localhost", "127.0.0.1"))))


def lab_ca_file(settings):
    """The CA file a client of the hub or the scoring edge trusts: the lab's own when
    either serves HTTPS with the certificate DataLab made; None otherwise (the
    system's store)."""
    tls = settings["hub"]["https"] or settings["scoring"]["https"]
    return secrets_dir(settings) / "ca.crt" if tls and not settings["hub"]["tls_cert_file"] else None


def scoring_edge_pem(settings):
    """The hub's certificate and key in one file, as HAProxy loads them (the
    scoring edge's `bind ... ssl crt`): written again when either changes."""
    crt, key = hub_tls(settings)
    pem = crt.read_bytes().rstrip(b"\n") + b"\n" + key.read_bytes()
    path = secrets_dir(settings) / "scoring-edge.pem"
    if not path.exists() or path.read_bytes() != pem:
        _write_private(path, pem)
    return path


def cli_token(settings):
    """The token of the hub service "datalab-cli", with which the host's `datalab`
    calls the hub, the jobs service (`--as USER`) and issues users' short-lived tokens."""
    return (secrets_dir(settings) / "cli_token").read_text().strip()


def jobs_client(settings):
    """The jobs service from the lab's host: through the hub's proxy, as datalab-cli."""
    from datalab_client.jobs import JobsClient

    return JobsClient(settings.service_url("jobs"), cli_token(settings))


def ensure(settings):
    """Generate whatever secret is missing; return the secret files by name."""
    sdir = secrets_dir(settings)
    sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(sdir, 0o700)
    files = {
        "cookie_secret": sdir / "cookie_secret",
        "proxy_token": sdir / "proxy_token",
        # the host's `datalab jobs` acts as the hub service "datalab-cli"
        "cli_token": sdir / "cli_token",
        # MLflow signs the alias webhook with it; the controller checks the signature
        "webhook_secret": sdir / "webhook_secret",
        # MLflow keeps webhook secrets encrypted with this Fernet key (else they are lost at restart)
        "mlflow_webhook_key": sdir / "mlflow_webhook_key",
        # the feature store's password: scoring tasks and the platform only
        "featurestore_password": sdir / "featurestore_password",
        # what a bank's systems send fraud labels to POST /v1/feedback with (`datalab scoring feedback-token`)
        "feedback_token": sdir / "feedback_token",
        # the image registry's one account (`datalab`): who pushes model images and pulls them on every node
        "image_registry_password": sdir / "image_registry_password",
    }
    for name in ("cookie_secret", "proxy_token", "cli_token", "webhook_secret", "featurestore_password",
                 "feedback_token", "image_registry_password"):
        _ensure(files[name], lambda: secrets.token_hex(32))
    _ensure(files["mlflow_webhook_key"], lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)))
    if settings["directory"]["builtin"]:
        ensure_directory_pki(sdir)
        _ensure(sdir / "ldap_admin_password", lambda: secrets.token_urlsafe(24))
        # the hub reads users' groups between logins as cn=hub-reader (directory/start-slapd makes it)
        _ensure(sdir / "ldap_search_password", lambda: secrets.token_urlsafe(24))
        ldif = SEED_LDIF.read_text()
        logins = json.loads(
            _ensure(
                demo_logins_file(settings),
                lambda: json.dumps({u: secrets.token_urlsafe(12) for u in seed_users(ldif)}, indent=2),
            )
        )
        _ensure(sdir / "ldap-seed.ldif", lambda: render_seed(ldif, settings["directory"]["base_dn"], logins))
        files.update(
            ldap_admin_password=sdir / "ldap_admin_password",
            ldap_search_password=sdir / "ldap_search_password",
            ldap_seed=sdir / "ldap-seed.ldif",
            ldap_server_crt=sdir / "ldap-server.crt",
            ldap_server_key=sdir / "ldap-server.key",
            ldap_ca_crt=sdir / "ca.crt",
        )
    else:
        if settings["directory"]["ca_file"]:
            files["ldap_ca_crt"] = Path(settings["directory"]["ca_file"])
        # the password of [directory] search_bind_dn, a file on the host the operator keeps
        if settings["directory"]["search_password_file"]:
            files["ldap_search_password"] = Path(settings["directory"]["search_password_file"])
    files["image_registry_tls_crt"], files["image_registry_tls_key"] = image_registry_tls(settings)
    if settings["hub"]["https"]:
        files["hub_tls_crt"], files["hub_tls_key"] = hub_tls(settings)
    if settings["scoring"]["https"]:
        files["scoring_edge_pem"] = scoring_edge_pem(settings)
    if settings["mlflow"]["aws_credentials_file"]:
        files["aws_credentials"] = Path(settings["mlflow"]["aws_credentials_file"])
    return files


def demo_logins_file(settings):
    return secrets_dir(settings) / "demo-logins.json"


def seed_groups():
    """{group: {user, ...}} of the demo directory (directory/seed.ldif)."""
    groups, current = {}, None
    for line in SEED_LDIF.read_text().splitlines():
        if line.startswith("dn: cn="):
            current = groups.setdefault(line[len("dn: cn="):].split(",", 1)[0], set())
        elif line.startswith("member: uid=") and current is not None:
            current.add(line[len("member: uid="):].split(",", 1)[0])
        elif not line.strip():
            current = None
    return groups


def demo_logins(settings):
    """{username: password} of the seeded demo users, or {} if none."""
    path = demo_logins_file(settings)
    return json.loads(path.read_text()) if path.exists() else {}
