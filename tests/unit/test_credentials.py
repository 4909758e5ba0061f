import base64
import hashlib
import json

import pytest
from cryptography import x509

from datalab import credentials, settings as settings_mod


def lab_settings(tmp_path):
    return settings_mod.defaults().with_overrides({"lab": {"data_dir": str(tmp_path)}})


def test_ssha_verifies_like_slapd():
    hashed = credentials.ssha("s3cret")
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    digest, salt = raw[:20], raw[20:]
    assert hashlib.sha1(b"s3cret" + salt).digest() == digest
    assert credentials.ssha("s3cret") != hashed  # salted


def test_seed_gets_a_hash_per_person_and_no_clear_password():
    ldif = credentials.SEED_LDIF.read_text()
    users = credentials.seed_users(ldif)
    assert {"alice", "bob", "carol"} <= set(users)
    rendered = credentials.render_seed(ldif, "dc=x", {u: f"pw-{u}" for u in users})
    assert rendered.count("userPassword: {SSHA}") == len(users)
    assert "pw-alice" not in rendered and "@SUFFIX@" not in rendered
    for group in ("datascientists", "fraud-team", "gpu-users", "model-approvers", "lab-admins"):
        assert f"dn: cn={group},ou=groups,dc=x" in rendered


def test_ensure_generates_once_privately_and_reuses(tmp_path):
    s = lab_settings(tmp_path)
    files = credentials.ensure(s)
    sdir = tmp_path / "secrets"
    assert oct(sdir.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in sdir.iterdir())
    first = {name: path.read_bytes() for name, path in files.items()}
    again = credentials.ensure(s)
    assert {name: path.read_bytes() for name, path in again.items()} == first
    logins = json.loads(credentials.demo_logins_file(s).read_text())
    assert len(set(logins.values())) == len(logins)  # one password each


def test_directory_certificate_is_signed_by_the_lab_ca_for_its_names(tmp_path):
    files = credentials.ensure(lab_settings(tmp_path))
    ca = x509.load_pem_x509_certificate(files["ldap_ca_crt"].read_bytes())
    server = x509.load_pem_x509_certificate(files["ldap_server_crt"].read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"directory", "tasks.directory"} <= set(sans.get_values_for_type(x509.DNSName))


def test_the_hubs_certificate_covers_its_host_and_every_origin_under_it_and_follows_the_host(tmp_path):
    s = lab_settings(tmp_path).with_overrides({"hub": {"https": True, "public_host": "lab.bank.example"}})
    files = credentials.ensure(s)
    ca = x509.load_pem_x509_certificate(files["ldap_ca_crt"].read_bytes())
    hub = x509.load_pem_x509_certificate(files["hub_tls_crt"].read_bytes())
    hub.verify_directly_issued_by(ca)  # one lab CA for the directory and the front door
    names = hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"lab.bank.example", "*.lab.bank.example", "localhost"}
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]  # the scoring edge's
    assert credentials.lab_ca_file(s) == tmp_path / "secrets" / "ca.crt"
    assert credentials.ensure(s)["hub_tls_crt"].read_bytes() == files["hub_tls_crt"].read_bytes()  # made once
    moved = s.with_overrides({"hub": {"public_host": "lab2.bank.example"}})
    again = x509.load_pem_x509_certificate(credentials.ensure(moved)["hub_tls_crt"].read_bytes())
    assert set(again.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
               .get_values_for_type(x509.DNSName)) == {"lab2.bank.example", "*.lab2.bank.example", "localhost"}
    # a site's own certificate is used as given, and clients trust the system's store for it
    (tmp_path / "lab.crt").write_text("site's"), (tmp_path / "lab.key").write_text("site's")
    site = s.with_overrides({"hub": {"tls_cert_file": str(tmp_path / "lab.crt"),
                                     "tls_key_file": str(tmp_path / "lab.key")}})
    assert credentials.hub_tls(site) == (tmp_path / "lab.crt", tmp_path / "lab.key")
    assert credentials.lab_ca_file(site) is None
    missing = site.with_overrides({"hub": {"tls_key_file": "/etc/ssl/nowhere.key"}})
    with pytest.raises(settings_mod.SettingsError, match="tls_key_file: /etc/ssl/nowhere.key is not a file"):
        credentials.hub_tls(missing)
    assert "hub_tls_crt" not in credentials.ensure(lab_settings(tmp_path))  # plain HTTP: no certificate in the stack


def test_the_scoring_edge_gets_the_hubs_certificate_and_key_in_one_file_made_again_when_they_change(tmp_path):
    s = lab_settings(tmp_path).with_overrides({"scoring": {"https": True}})
    files = credentials.ensure(s)
    pem = files["scoring_edge_pem"]
    crt, key = credentials.hub_tls(s)
    assert pem.read_bytes() == crt.read_bytes().rstrip(b"\n") + b"\n" + key.read_bytes()  # HAProxy's crt file
    assert pem.stat().st_mode & 0o777 == 0o600 and "hub_tls_crt" not in files  # the hub itself plain HTTP
    assert credentials.lab_ca_file(s) == tmp_path / "secrets" / "ca.crt"
    before = pem.read_bytes()
    assert credentials.ensure(s)["scoring_edge_pem"].read_bytes() == before  # unchanged: the same file
    moved = s.with_overrides({"hub": {"public_host": "lab2.bank.example"}})
    crt, key = credentials.hub_tls(moved)  # a certificate for the new host, and so a new file for the edge
    assert credentials.ensure(moved)["scoring_edge_pem"].read_bytes() == crt.read_bytes() + key.read_bytes() != before
    assert credentials.lab_ca_file(lab_settings(tmp_path)) is None  # no HTTPS: nothing to trust


def test_the_demo_logins_say_who_is_in_no_lab_group(tmp_path, monkeypatch, capsys):
    from datalab import cli

    monkeypatch.setattr(credentials, "demo_logins", lambda s: {"alice": "pw-a", "carol": "pw-c", "eve": "pw-e"})
    cli.print_logins(lab_settings(tmp_path))
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:4]}
    assert "login is refused" in lines["eve"] and "refused" not in lines["alice"] + lines["carol"]
    cli.print_logins(lab_settings(tmp_path).with_overrides({"hub": {"allowed_groups": ["lab-admins"]}}))
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:4]}
    assert "login is refused" in lines["alice"] and "refused" not in lines["carol"]
