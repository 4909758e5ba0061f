"""The idle culler (jupyterhub-idle-culler, a hub-managed service) against real
notebook servers: it stops an idle server, keeps one whose kernel is busy, and
never sends a credential to a user's server, whose code the user controls."""

import json
import time

import pytest
from kernel import Kernel

pytestmark = pytest.mark.integration

# the idle-culler service's role (hub/datalab_hub/config.py): one pass below runs with exactly these
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
# A hostile user's server config: every request the server gets, with its credentials, goes to a file.
LOG_EVERY_REQUEST = '''
import json
from jupyter_server.base.handlers import JupyterHandler

_prepare = JupyterHandler.prepare

def prepare(self, *args, **kwargs):
    with open("/home/jovyan/seen-requests.jsonl", "a") as f:
        f.write(json.dumps({"path": self.request.path,
                            "authorization": self.request.headers.get("Authorization", ""),
                            "cookie": self.request.headers.get("Cookie", "")}) + "\\n")
    return _prepare(self, *args, **kwargs)

JupyterHandler.prepare = prepare
'''


def in_home(lab, user, *command):
    """Run a command on the user's home volume, in a throw-away container with no network."""
    return lab.docker.out("run", "--rm", "--user", "1000", "--network", "none", "-v",
                          f"{lab.name}-user-{user}:/home/jovyan", "--entrypoint", command[0],
                          "datalab/base:build", *command[1:])


def cull_once(lab, token, timeout):
    """One pass of the idle culler's own code in the hub's container; returns its log."""
    script = ("import asyncio, logging, os, sys; from jupyterhub_idle_culler import cull_idle; "
              "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s'); "
              "asyncio.run(cull_idle('http://127.0.0.1:8081/hub/api', os.environ['JUPYTERHUB_API_TOKEN'], "
              f"{timeout}, logging.getLogger('culler')))")
    return lab.docker.out("exec", "-e", f"JUPYTERHUB_API_TOKEN={token}", lab.service_container("hub"),
                          "python3", "-c", script)


def test_culler_stops_idle_servers_keeps_busy_ones_and_sends_servers_no_credential(lab):
    carol = lab.login("carol")
    assert "idle-culler" in {s["name"] for s in carol.hub_api("/services").json().values()}
    r = carol.hub_api("/users/carol/tokens", method="POST",
                      json={"note": "culler pass", "expires_in": 600, "scopes": CULLER_SCOPES})
    assert r.status_code == 201, r.text
    culler_token = r.json()["token"]

    # alice's server runs her own config: it records every request it is sent
    alice = lab.fresh_server("alice", "python")
    in_home(lab, "alice", "sh", "-c", "mkdir -p /home/jovyan/.jupyter && rm -f /home/jovyan/seen-requests.jsonl "
                                      f"&& cat > /home/jovyan/.jupyter/jupyter_server_config.py <<'EOF'\n{LOG_EVERY_REQUEST}EOF")
    try:
        alice.stop("alice")
        alice.start("alice", "python")
        token = alice.token("alice")
        kernel = Kernel(alice.server_url("alice"), token)
        try:
            msg = kernel.execute("import time; time.sleep(600)", wait=False)
            # silent and busy for longer than the timeout: kept (the image's datalab_activity
            # reports the busy kernel; without it the last activity is the execute request)
            time.sleep(25)
            log = cull_once(lab, culler_token, timeout=15)
            assert "alice" not in log, log
            assert lab.notebook_container("alice") is not None
            kernel.interrupt()
            status, _ = kernel.collect(msg, timeout=30)
            assert status == "error"  # KeyboardInterrupt
        finally:
            kernel.close()
        # idle for longer than the timeout (and a report interval): stopped, the volume stays
        time.sleep(25)
        log = cull_once(lab, culler_token, timeout=15)
        assert "Culling server alice" in log, log
        lab.wait_for(lambda: lab.notebook_container("alice") is None, "culled container removed")
        assert not (carol.hub_api("/users/alice").json().get("servers") or {})
        assert f"{lab.name}-user-alice" in lab.docker.out("volume", "ls", "-q").split()

        seen = [json.loads(line) for line in in_home(lab, "alice", "cat", "/home/jovyan/seen-requests.jsonl").splitlines()]
        assert any(token in r["authorization"] for r in seen), "the request log recorded nothing: the attack did not run"
        leaked = [r["path"] for r in seen if culler_token in r["authorization"] + r["cookie"]]
        assert not leaked, f"the culler's credential reached alice's server on {leaked}"
        assert {r["authorization"] for r in seen} <= {"", f"token {token}"}, "a credential other than alice's own"
    finally:
        in_home(lab, "alice", "rm", "-rf", "/home/jovyan/.jupyter/jupyter_server_config.py",
                "/home/jovyan/seen-requests.jsonl")
