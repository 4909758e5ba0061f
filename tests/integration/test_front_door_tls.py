"""The hub's front door over HTTPS ([hub] https): the proxy terminates TLS with
a certificate from the lab's CA for the public host and every origin under it,
plain HTTP on its own port is redirected, the session cookies are Secure, and
a browser, the host's CLI and a user's server work over it; a server started
behind the plain-HTTP door is stopped when the hub restarts behind the new
one. And the scoring edge over HTTPS only ([scoring] https), with the same
certificate.

(Marked disruptive: the test lab is brought up with https on, then back to
plain HTTP; the proxy and the hub restart twice.)"""

import base64
import hashlib
import json
from urllib.parse import urlsplit

import pytest
import requests
from conftest import Lab, browser_login, chromium
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from datalab import deploy

pytestmark = [pytest.mark.integration, pytest.mark.disruptive]

REDIRECT_PORT = 18080


@pytest.fixture(scope="module")
def tls_lab(lab, tmp_path_factory):
    """The test lab's settings with https on for the hub and the scoring edge (same
    ports: they now speak TLS)."""
    text = lab.settings_path.read_text()
    assert text.count("[hub]\n") == 1 and text.count("[scoring]\n") == 1
    variant = tmp_path_factory.mktemp("tls") / "settings.toml"
    variant.write_text(text.replace("[hub]\n", f"[hub]\nhttps = true\nhttp_redirect_port = {REDIRECT_PORT}\n")
                       .replace("[scoring]\n", "[scoring]\nhttps = true\n"))
    tls = Lab(variant)
    lab.fresh_server("alice", "python")  # a server started behind the plain-HTTP door
    tls.server_before = lab.notebook_container("alice")["Id"]
    lab.exec(tls.server_before, "sh", "-c", "echo kept > /home/jovyan/.door-switch")
    try:
        up = tls.datalab("up", "--no-demo", timeout=900).stdout
        assert f"DataLab is up: https://{tls.settings['hub']['public_host']}:" in up, up
        assert "trust " + str(tls.settings.data_dir / "secrets" / "ca.crt") in up, up
        yield tls
    finally:  # the later suites' lab: plain HTTP again
        lab.datalab("up", "--no-demo", timeout=900)
        lab.wait_healthy()


def ca_file(tls):
    return str(tls.settings.data_dir / "secrets" / "ca.crt")


def test_a_server_started_behind_the_old_door_is_stopped_when_the_hub_restarts(tls_lab):
    # it was given http:// public URLs at its start: its login would redirect off the new door
    tls_lab.wait_for(lambda: (tls_lab.notebook_container("alice") or {}).get("Id") != tls_lab.server_before,
                     "alice's server of before stopped by the restarted hub", timeout=120)
    alice = tls_lab.login("alice")
    assert not alice.hub_api("/users/alice").json()["servers"]
    alice.start("alice", "python")  # behind the new door, on the same volume
    assert tls_lab.exec(tls_lab.notebook_container("alice"), "cat", "/home/jovyan/.door-switch").stdout == "kept\n"


def test_the_front_door_speaks_tls_from_the_labs_ca_and_redirects_plain_http(tls_lab):
    assert tls_lab.url.startswith("https://")
    login = requests.get(f"{tls_lab.url}/hub/login", verify=ca_file(tls_lab), timeout=10)
    assert login.status_code == 200
    # browsers that saw it keep to HTTPS, for the hub and every user's origin under it
    assert login.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    with pytest.raises(requests.exceptions.SSLError):  # a certificate of the lab's CA, not one the system knows
        requests.get(f"{tls_lab.url}/hub/login", timeout=10)
    host = tls_lab.settings["hub"]["public_host"]
    plain = requests.get(f"http://{host}:{REDIRECT_PORT}/hub/login?next=%2Fhub%2Fhome", allow_redirects=False,
                         timeout=10)
    assert plain.status_code in (301, 302, 307, 308), plain.status_code
    assert plain.headers["Location"] == f"{tls_lab.url}/hub/login?next=%2Fhub%2Fhome"
    # the host's CLI talks to the hub over it, trusting the lab's CA
    status = json.loads(tls_lab.datalab("status", "--json").stdout)
    assert status["url"] == f"{tls_lab.url}/"


def test_the_scoring_edge_answers_over_tls_only(tls_lab):
    assert tls_lab.edge == f"https://127.0.0.1:{tls_lab.settings['scoring']['port']}"
    serving = deploy.current(tls_lab.settings)
    schema = requests.get(f"{tls_lab.edge}/v1/schema", verify=ca_file(tls_lab), timeout=10)
    assert schema.status_code == (200 if serving else 503), schema.text[:300]
    assert schema.headers["Content-Type"].startswith("application/json")
    # plain HTTP is not answered at all: its bytes fail the TLS handshake
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_lab.settings['scoring']['port']}/v1/schema", timeout=10)
    # the host's CLI names the HTTPS edge and trusts it
    status = json.loads(tls_lab.datalab("scoring", "status", "--json").stdout)
    assert status["url"] == f"{tls_lab.edge}/v1/score"


def test_cookies_are_secure_and_a_users_server_answers_over_tls(tls_lab):
    alice = tls_lab.fresh_server("alice", "python")  # logged in over TLS, a server started behind it
    page = alice.open_server("alice")
    assert page.status_code == 200 and urlsplit(page.url).scheme == "https", page.url
    cookies = {c.name: c for c in alice.http.cookies}
    # the login cookies with the __Host- prefix: no subdomain (another user's origin) can set them
    assert "__Host-jupyterhub-hub-login" in cookies and "__Host-jupyterhub-user-alice" in cookies, sorted(cookies)
    plain = [(c.name, c.domain, c.path) for c in alice.http.cookies if not c.secure]
    assert not plain, plain  # the hub's, the server's (its _xsrf too)


def test_a_browser_logs_in_over_tls(tls_lab):
    # chromium trusts the hub's certificate by its key (headless chromium has no CA store to add to)
    certificate = x509.load_pem_x509_certificate(
        (tls_lab.settings.data_dir / "secrets" / "hub-tls.crt").read_bytes())
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    with chromium(f"--ignore-certificate-errors-spki-list={pin}") as browser:
        browser_login(browser, tls_lab, "alice")
        assert browser.current_url.startswith(f"{tls_lab.url}/") or browser.current_url.startswith("https://alice.")
        assert browser.get_cookies() and all(c["secure"] for c in browser.get_cookies())
