"""The promotion controller: setting the production alias on a model version
in the registry is a promotion; this makes it happen, or undoes it.

MLflow calls /webhook on every alias change (HMAC-signed; an unsigned or
forged delivery is refused and logged) and the controller also polls, since
MLflow's delivery is fire-and-forget. Either way it reconciles: for each
registered model whose production alias names another version than the
one it last accepted, it gates the candidate against what serves, rolls it
out (deploy.rollout, as `datalab deploy` does) or moves the alias back,
tags the version, and appends the attempt to the audit log.

The attempt under way is written to promotions.json before each step with a
side effect, so a restarted controller resumes it (an issued rollout is
followed, not issued again) rather than losing or repeating it.
"""

import datetime
import json
import logging
import os
import threading
import time
from pathlib import Path

from tornado import ioloop, web

from datalab import audit, deploy, images
from datalab.docker import Docker
from datalab.settings import Settings

from . import gate, webhooks
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

    # ---- state ----
    def load(self):
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"accepted": {}, "in_progress": None}

    def save(self, state):
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    # ---- reconcile ----
    def reconcile(self):
        with self.lock:
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
            limits = self.settings["gate"]
            try:
                answer, baked = deploy.prepare(
                    self.docker, self.settings, images.current_ref(self.docker, "scoring"), name, version,
                    evaluate_against=f"{serving['model']}/{serving['version']}" if serving else "",
                    threshold=threshold, accept=lambda a: not gate.failures(a["evaluation"], limits))
            except deploy.DeployError as e:
                return self.undo(state, record, "rejected", [str(e)])
            record["gate"] = answer["evaluation"]
            reasons = gate.failures(answer["evaluation"], limits)
            if reasons:
                return self.undo(state, record, "rejected", reasons)
            if not self.still_wanted(name, version):  # the alias moved on while the gate ran
                return self.finish(state, record, "superseded", ["the alias was moved during the gate"])
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

    def undo(self, state, record, outcome, reasons):
        """The alias goes back to the version accepted before; the candidate says why."""
        name, version = record["model"], record["version"]
        previous = state["accepted"].get(name)
        if self.still_wanted(name, version):  # unless someone has moved it on meanwhile
            if previous:
                self.client.set_registered_model_alias(name, self.alias, previous)
            else:
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


def ensure_webhook(client, url, secret):
    """One webhook of ours, with the current secret (a rotated secret takes effect at restart)."""
    for hook in client.list_webhooks():
        if hook.name == WEBHOOK_NAME:
            client.update_webhook(hook.webhook_id, url=url, events=WEBHOOK_EVENTS, secret=secret, status="ACTIVE")
            return
    client.create_webhook(name=WEBHOOK_NAME, url=url, events=WEBHOOK_EVENTS, secret=secret,
                          description="DataLab: production alias -> gate -> rollout")


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
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s controller] %(message)s")
    from mlflow import MlflowClient

    settings = Settings(json.loads(Path(os.environ["DATALAB_CONTROLLER_SETTINGS"]).read_text()))
    secret = Path("/run/secrets/webhook_secret").read_text().strip()
    client = MlflowClient()
    controller = Controller(settings, client, Docker(settings))
    while True:  # MLflow may still be starting
        try:
            ensure_webhook(client, "http://controller:8080/webhook", secret)
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
