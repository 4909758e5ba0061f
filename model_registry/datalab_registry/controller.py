"""The promotion controller: setting the production alias on a model version
in the registry is a promotion; this makes it happen, or undoes it.

MLflow calls /webhook on every alias change (HMAC-signed; an unsigned or
forged delivery is refused and logged) and the controller also polls, since
MLflow's delivery is fire-and-forget. Either way it reconciles: it seals the
versions it has not seen yet (seals.py), then, for each registered model
whose production alias names another version than the one it last
accepted, it fetches the candidate's sealed artifacts itself (no model code
runs here), has them scored and judged in sandboxes with no network
(sandbox.py), rolls the very files it judged out (deploy.bake and
deploy.rollout, as `datalab deploy` does) or moves the alias back, tags the
version, and appends the attempt to the audit log. Only the controller
talks to MLflow; webhooks are the platform's, and what it does to them is
audited too.

The attempt under way is written to promotions.json before each step with a
side effect, so a restarted controller resumes it (an issued rollout is
followed, not issued again) rather than losing or repeating it.
"""

import datetime
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from tornado import ioloop, web

from datalab import audit, deploy, images
from datalab.docker import Docker
from datalab.settings import Settings
from datalab_client import logs

from . import gate, sandbox, seals, webhooks
from .tenancy import REQUESTED_BY_TAG

log = logging.getLogger("datalab.controller")
WEBHOOK_NAME = "datalab-controller"
WEBHOOK_EVENTS = ["model_version_alias.created", "model_version_alias.deleted"]
REJECTED_TAG = "datalab.promotion.rejected"
MAX_TRIES = 3  # failures (not decisions) before an attempt is given up


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Controller:
    def __init__(self, settings, client, docker):
        self.settings, self.client, self.docker = settings, client, docker
        self.alias = settings["registry"]["production_alias"]
        self.served_model = settings["registry"]["served_model"]
        self.state_path = deploy.deployments_dir(settings) / "promotions.json"
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.unsealed = set()  # versions whose sealing failed (logged once)

    # ---- state ----
    def load(self):
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"accepted": {}, "in_progress": None}

    def save(self, state):
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    # ---- seals ----
    def seal_new_versions(self):
        """Seal every version not sealed yet (the gateway has kept its artifacts
        as they were since its registration), once READY."""
        served = f"name='{self.served_model}'" if self.served_model else None
        token = None
        while True:
            page = self.client.search_model_versions(filter_string=served, max_results=1000, page_token=token)
            for version in page:
                if seals.SEAL_TAG not in version.tags and str(version.status) == "READY":
                    self.seal(version)
            token = page.token
            if not token:
                return

    def seal(self, version):
        key = (version.name, str(version.version))
        try:
            with tempfile.TemporaryDirectory(prefix="datalab-seal-") as work:
                digest = seals.fetch(version, work).digest
        except Exception as e:  # noqa: BLE001 (its artifacts unreadable now: again at the next poll)
            if key not in self.unsealed:
                log.warning("cannot seal %s v%s yet: %s", *key, f"{type(e).__name__}: {e}"[:300])
            self.unsealed.add(key)
            return
        self.client.set_model_version_tag(version.name, version.version, seals.SEAL_TAG, digest)
        self.unsealed.discard(key)
        log.info("sealed %s v%s: sha256 %s", *key, digest)

    # ---- reconcile ----
    def reconcile(self):
        with self.lock:
            self.seal_new_versions()
            state = self.load()
            if state.get("in_progress"):
                log.info("resuming the promotion of %(model)s v%(version)s (%(step)s)", state["in_progress"])
                self.attempt(state, state["in_progress"])
            for model in self.client.search_registered_models(max_results=1000):
                if self.served_model and model.name != self.served_model:
                    continue
                version = (model.aliases or {}).get(self.alias)
                accepted = state["accepted"].get(model.name)
                if version is None or str(version) == accepted:
                    continue
                serving = deploy.current(self.settings)
                if accepted is None and serving and (serving["model"], serving["version"]) == (model.name, str(version)):
                    # rolled out by `datalab deploy` before: nothing to do but take note
                    state["accepted"][model.name] = str(version)
                    record = {"model": model.name, "version": str(version), "started_at": now_iso(), "t0": time.time(),
                              "from": None, "by": self.requested_by(model.name, version)}
                    self.finish(state, record, "adopted", ["already serving (datalab deploy)"])
                    continue
                self.attempt(state, {"model": model.name, "version": str(version), "step": "gate"})

    def requested_by(self, name, version):
        tags = self.client.get_model_version(name, version).tags
        return tags.get(REQUESTED_BY_TAG, "unknown (set outside the registry gateway)")

    def attempt(self, state, record):
        """promote(), giving up after MAX_TRIES failures that are not a decision
        (MLflow or the engine failing): the alias goes back, the audit says why."""
        try:
            self.promote(state, record)
        except Exception as e:  # noqa: BLE001 (anything: the next poll tries again)
            record["tries"] = record.get("tries", 0) + 1
            log.exception("promotion of %s v%s failed (try %d)", record["model"], record["version"], record["tries"])
            if record["tries"] < MAX_TRIES:
                state["in_progress"] = record
                self.save(state)
                return
            try:
                self.undo(state, record, "failed", [f"{type(e).__name__}: {e}"[:1000]])
            except Exception:  # noqa: BLE001 (MLflow unreachable: record it, leave the alias)
                log.exception("could not move the alias back")
                self.finish(state, record, "failed", [f"{type(e).__name__}: {e}"[:1000],
                                                      "the alias could not be moved back"])

    def exists(self, name, version):
        return any(str(v.version) == version for v in self.client.search_model_versions(f"name='{name}'"))

    def still_wanted(self, name, version):
        return str((self.client.get_registered_model(name).aliases or {}).get(self.alias)) == version

    def promote(self, state, record):
        name, version = record["model"], record["version"]
        if "started_at" not in record:
            serving = deploy.current(self.settings)
            record.update(
                started_at=now_iso(), t0=time.time(), by=self.requested_by(name, version),
                **{"from": f"{serving['model']} v{serving['version']}" if serving else None},
                serving=serving)
        state["in_progress"] = record
        self.save(state)
        log.info("promotion of %s v%s by %s: %s", name, version, record["by"], record["step"])
        if record["step"] == "gate":
            serving = record["serving"]
            threshold = float(serving["threshold"]) if serving else float(self.settings["scoring"]["threshold"])
            scoring_ref = images.current_ref(self.docker, "scoring")
            with tempfile.TemporaryDirectory(prefix="datalab-gate-") as work:
                try:
                    candidate = self.verified(name, version, work)
                    transactions, to_score, judged_on = self.judged_on(candidate, scoring_ref, work)
                    record["gate"] = sandbox.evaluate(self.docker, self.settings, scoring_ref, candidate.model,
                                                      transactions, serving, threshold, scored_set=to_score)
                    record["gate"]["judged_on"] = judged_on
                except (seals.Broken, sandbox.GateError, gate.Unreadable) as e:
                    return self.undo(state, record, "rejected", [str(e)])
                reasons = gate.failures(record["gate"], self.settings["gate"])
                if reasons:
                    return self.undo(state, record, "rejected", reasons)
                if not self.still_wanted(name, version):  # the alias moved on while the gate ran
                    return self.finish(state, record, "superseded", ["the alias was moved during the gate"])
                # the very files judged: the image serves nothing else
                baked = deploy.bake(self.docker, self.settings, scoring_ref,
                                    {"name": name, "version": version, "run_id": candidate.run_id},
                                    candidate.model.parent)
            replicas = serving["replicas"] if serving else self.settings["scoring"]["replicas"]
            record.update(step="rolling out", issued=False, rollout_t0=time.time(),
                          target={**baked, "replicas": int(replicas), "threshold": threshold})
            self.save(state)
        if not record.get("issued"):
            # (a restart between issuing and saving finds the service on the target already)
            if deploy.service_image(self.docker, self.settings) != record["target"]["image"]:
                deploy.start_rollout(self.docker, self.settings, record["target"])
            record["issued"] = True
            self.save(state)
        # issued: follow it; a service back on another image was rolled back by Swarm
        outcome, why = deploy.rollout(self.docker, self.settings, record["target"], started=True)
        record["rollout_s"] = round(time.time() - record["rollout_t0"], 1)
        if outcome != "completed":
            return self.undo(state, record, "rolled back", [f"the rollout was rolled back: {why or 'never ready'}"])
        for key, value in {"datalab.deployed_at": now_iso(), "datalab.deployed_by": record["by"],
                           **gate.summary(record["gate"])}.items():
            self.client.set_model_version_tag(name, version, key, value)
        if REJECTED_TAG in self.client.get_model_version(name, version).tags:  # an earlier attempt's
            self.client.delete_model_version_tag(name, version, REJECTED_TAG)
        state["accepted"][name] = version
        self.finish(state, record, "deployed", [])

    def judged_on(self, candidate, scoring_ref, work):
        """The labelled transactions to judge on (a parquet file), what the models are
        given of them (None: the same file), and what they are: production's recent
        ones when there are enough (the models see their features, not their labels),
        else the candidate's evaluation set, with why. GateError: refused."""
        window = sandbox.production_window(self.docker, self.settings, scoring_ref, work)
        source, why = gate.judged_on(window, self.settings["gate"], candidate.input_fields())
        if source == gate.REFUSED:
            raise sandbox.GateError(why)
        if source == gate.PRODUCTION:
            return window["path"], window["features_path"], {
                "source": source, "why": why, **{k: window[k] for k in ("since", "until", "labelled", "frauds")}}
        log.info("judging on the candidate's evaluation set: %s", why)
        run_tags = self.client.get_run(candidate.run_id).data.tags if candidate.run_id else {}
        return candidate.evaluation_set(run_tags), None, {"source": source, "why": why}

    def verified(self, name, version, work):
        """The candidate's artifacts, fetched and checked against its seal (made now if
        the version was registered and promoted within one poll: this is first sight)."""
        found = self.client.get_model_version(name, version)
        fetched = seals.fetch(found, work)
        if seals.SEAL_TAG not in found.tags:
            self.client.set_model_version_tag(name, version, seals.SEAL_TAG, fetched.digest)
        else:
            seals.verify(found, fetched)
        return fetched

    def undo(self, state, record, outcome, reasons):
        """The alias goes back to the version accepted before; the candidate says why."""
        name, version = record["model"], record["version"]
        previous = state["accepted"].get(name)
        if self.still_wanted(name, version):  # unless someone has moved it on meanwhile
            if previous and self.exists(name, previous):
                self.client.set_registered_model_alias(name, self.alias, previous)
            else:  # (an approver may have deleted the version accepted before: its image still serves)
                self.client.delete_registered_model_alias(name, self.alias)
        self.client.set_model_version_tag(name, version, REJECTED_TAG, f"{outcome}: " + "; ".join(reasons)[:4000])
        self.finish(state, record, outcome, reasons)

    def finish(self, state, record, outcome, reasons):
        audit.append(self.settings, {
            "at": record["started_at"], "model": record["model"], "version": record["version"],
            "from": record["from"], "by": record["by"], "outcome": outcome, "reasons": reasons,
            "gate": record.get("gate"), "rollout_s": record.get("rollout_s"),
            "duration_s": round(time.time() - record["t0"], 1)})
        state["in_progress"] = None
        self.save(state)
        log.info("%s v%s: %s %s", record["model"], record["version"], outcome, "; ".join(reasons))

    # ---- loop ----
    def run_forever(self, every):
        while True:
            try:
                self.reconcile()
            except Exception:
                log.exception("reconcile failed; again in %s s", every)
            self.wake.wait(every)
            self.wake.clear()


def ensure_webhook(client, settings, url, secret):
    """One webhook, ours, with the current secret (a rotated secret takes effect at
    restart). Webhooks are the platform's: any other is removed. Every change is
    a platform action, appended to the audit log."""
    fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:16]  # MLflow never gives a secret back
    description = f"DataLab: production alias -> gate -> rollout (secret sha256 {fingerprint})"
    ours = None
    for hook in client.list_webhooks():
        if hook.name == WEBHOOK_NAME and ours is None:
            ours = hook
        else:
            client.delete_webhook(hook.webhook_id)
            platform_action(settings, "webhook removed", f"{hook.name} -> {hook.url}: not the platform's")
    if ours is None:
        client.create_webhook(name=WEBHOOK_NAME, url=url, events=WEBHOOK_EVENTS, secret=secret,
                              description=description)
        platform_action(settings, "webhook registered", f"{WEBHOOK_NAME} -> {url} ({', '.join(WEBHOOK_EVENTS)})")
    elif (ours.url, sorted(str(e) for e in ours.events), str(ours.status), ours.description) != \
            (url, sorted(WEBHOOK_EVENTS), "ACTIVE", description):
        client.update_webhook(ours.webhook_id, url=url, events=WEBHOOK_EVENTS, secret=secret, status="ACTIVE",
                              description=description)
        platform_action(settings, "webhook updated", f"{WEBHOOK_NAME} -> {url} ({', '.join(WEBHOOK_EVENTS)})")


def platform_action(settings, action, detail):
    """An audit record of something only the platform does (kind "platform": not a
    promotion, no model or version, so `datalab promote --wait` never takes it for one)."""
    audit.append(settings, {"at": now_iso(), "kind": "platform", "model": "", "version": "", "from": None,
                            "by": "controller", "outcome": action, "reasons": [detail], "gate": None,
                            "rollout_s": None, "duration_s": 0})
    log.info("platform: %s (%s)", action, detail)


class WebhookHandler(web.RequestHandler):
    def post(self):
        try:
            webhooks.verify(self.settings["secret"], self.request.headers, self.request.body)
        except webhooks.Forged as e:
            log.warning("refused a webhook delivery from %s: %s", self.request.remote_ip, e)
            self.set_status(401)
            return self.finish({"error": f"refused: {e}"})
        payload = json.loads(self.request.body or b"{}")
        data = payload.get("data") or {}
        log.info("webhook %s.%s %s", payload.get("entity"), payload.get("action"), data)
        if data.get("alias") == self.settings["alias"]:
            self.settings["controller"].wake.set()
        self.finish({"ok": True})


class HealthHandler(web.RequestHandler):
    def get(self):
        self.finish({"ok": True})


def quiet_health(handler):
    if not isinstance(handler, HealthHandler):  # Docker's healthcheck every 5 s is not news
        log.info("%d %s", handler.get_status(), handler._request_summary())


def main():
    logs.configure()
    from mlflow import MlflowClient

    settings = Settings(json.loads(Path(os.environ["DATALAB_CONTROLLER_SETTINGS"]).read_text()))
    secret = Path("/run/secrets/webhook_secret").read_text().strip()
    client = MlflowClient()
    controller = Controller(settings, client, Docker(settings))
    sandbox.remove_leftovers(controller.docker, settings.lab)
    while True:  # MLflow may still be starting
        try:
            ensure_webhook(client, settings, "http://controller:8080/webhook", secret)
            break
        except Exception as e:  # noqa: BLE001 (any failure: MLflow not up yet)
            log.info("registering the webhook with MLflow: %s; again in 3 s", str(e).splitlines()[0][:200])
            time.sleep(3)
    threading.Thread(target=controller.run_forever, args=(float(settings["registry"]["poll_every"]),),
                     daemon=True).start()
    app = web.Application([("/webhook", WebhookHandler), ("/healthz", HealthHandler)],
                          secret=secret, alias=controller.alias, controller=controller, log_function=quiet_health)
    app.listen(8080, "0.0.0.0")
    log.info("controller up: webhook on :8080/webhook, polling every %s s", settings["registry"]["poll_every"])
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
