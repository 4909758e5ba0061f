"""Per-user origins, attacked in a real browser: a page that bob's server serves
(bob controls everything his server sends) is opened by alice, logged in to the
hub with her server running. Its script must not read the hub's cookies, mint a
token as alice, read her files or drive her server."""

import json

import pytest
from conftest import browser_login

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# What bob's page tries, run in the page's own context (execute_async_script), each
# outcome recorded: a thrown error means the browser refused it.
ATTACK = """
const [hub, aliceServer, done] = arguments;
(async () => {
const out = {cookies: document.cookie};
async function attempt(name, f) {
  try { out[name] = await f(); } catch (e) { out[name] = "refused: " + e; }
}
await attempt("whoami", async () => { const r = await fetch(hub + "/hub/api/user", {credentials: "include"});
                                      return r.status + " " + (await r.text()).slice(0, 200); });
await attempt("mint_json", async () => (await fetch(hub + "/hub/api/users/alice/tokens", {
  method: "POST", credentials: "include", headers: {"Content-Type": "application/json"}, body: "{}"})).status);
// a "simple" request is sent without a preflight (its answer unreadable): the hub must refuse it
await attempt("mint_simple", async () => (await fetch(hub + "/hub/api/users/alice/tokens", {
  method: "POST", credentials: "include", mode: "no-cors", body: "{}"})).type);
await attempt("her_files", async () => { const r = await fetch(aliceServer + "api/contents", {credentials: "include"});
                                         return r.status + " " + (await r.text()).slice(0, 200); });
await attempt("hub_frame_cookies", () => new Promise((resolve, reject) => {
  const frame = document.createElement("iframe");
  frame.src = hub + "/hub/home";
  const read = () => { try { resolve(frame.contentDocument ? frame.contentDocument.cookie : "no document"); }
                       catch (e) { reject(e); } };
  frame.onload = read;
  setTimeout(read, 5000);  // a frame the hub refuses to be shown in may never report a load
  document.body.appendChild(frame);
}));
done(out);
})();
"""


def test_a_page_on_bobs_server_cannot_act_as_alice_who_opens_it(lab, browser):
    bob = lab.fresh_server("bob", "python")
    alice = lab.login("alice")
    alice.start("alice", "python")
    carol = lab.login("carol")

    browser_login(browser, lab, "alice")
    alices_cookies = {}
    for page in (lab.url + "/hub/home", alice.server_url("alice") + "api/status"):
        browser.get(page)  # what the browser holds for the hub's origin and for her server's
        alices_cookies.update({c["name"]: c["value"] for c in browser.get_cookies()})
    assert any(name.startswith("jupyterhub-user-alice") or name == "jupyterhub-hub-login" for name in alices_cookies)
    # (her visit to her server made an OAuth token: counted from here)
    tokens_before = {t["id"] for t in carol.hub_api("/users/alice/tokens").json()["api_tokens"]}
    # A page of bob's server that needs no login (its static files): it stays on bob's origin.
    browser.get(bob.server_url("bob") + "static/no-such-file")
    assert browser.current_url.startswith(bob.origin("bob")), browser.current_url
    assert bob.origin("bob") not in (lab.url, alice.origin("alice"))

    browser.set_script_timeout(30)
    seen = browser.execute_async_script(ATTACK, lab.url, alice.server_url("alice"))
    report = json.dumps(seen, indent=1)
    # none of alice's cookies of the hub's or her server's origin is readable there (bob's own
    # server may set cookies of its origin; JupyterHub shares its session id, which signs nothing
    # by itself, with every subdomain on purpose: logout everywhere)
    leaked = [name for name, value in alices_cookies.items()
              if name != "jupyterhub-session-id" and value in seen["cookies"]]
    assert not leaked, f"alice's cookies {leaked} readable by bob's page: {report}"
    assert str(seen["whoami"]).startswith("refused"), report  # no CORS: unreadable
    assert str(seen["mint_json"]).startswith("refused"), report  # its preflight is refused
    assert str(seen["her_files"]).startswith("refused"), report
    # another origin's document: unreadable (or the hub refuses to be framed at all)
    assert str(seen["hub_frame_cookies"]).startswith("refused") or seen["hub_frame_cookies"] == "no document", report
    minted = [t for t in carol.hub_api("/users/alice/tokens").json()["api_tokens"] if t["id"] not in tokens_before]
    assert not minted, f"a token was minted as alice: {minted} {report}"
