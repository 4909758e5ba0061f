"""The scoring HTTP API.

    POST /v1/score     one transaction or a list of them -> score 0-100,
                       decision, model, version; ?explain=1 adds the features
                       each was scored with. A transaction is the model
                       signature's fields or, when the model declares its
                       feature set (model.py), a raw transaction, its
                       features computed from the feature store's state
                       (featurestore.py) and its answer logged there
    POST /v1/feedback  fraud labels of raw transactions scored here
                       (Authorization: Bearer <feedback token>)
    GET  /v1/schema    the fields a transaction needs and an example request
    GET  /healthz      the process is alive
    GET  /startedz     the model is loaded and warmed up (503 until then): the
                       image's health check, which gates a rollout
    GET  /readyz       ready to score: that, and for raw transactions the
                       feature store answering (the edge routes on it)
    GET  /metrics      Prometheus metrics

Settings come from the environment, so a deployment changes them without a
rebuild: SCORING_THRESHOLD (0-100, a score at or above it is "block"),
SCORING_MODEL_DIR, SCORING_MODEL_NAME, SCORING_MODEL_VERSION, SCORING_PORT,
SCORING_MAX_BATCH, SCORING_MAX_BYTES, SCORING_FEEDBACK_TOKEN_FILE (default
/run/secrets/feedback_token), SCORING_ENGINE (model.py: "auto", the numpy pass
where it applies, or "graph"), and the feature store's (featurestore.py).
"""

import asyncio
import gc
import hmac
import logging
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fraudlab import intake, online
from tornado import httpserver, web
from tornado.log import access_log

from datalab_client import logs

from . import featurestore
from . import model as model_mod
from .batching import Batcher
from . import metrics as metrics_mod
from .metrics import Metrics
from .validate import RequestError, parse, parse_labels, parse_raw, shown

log = logging.getLogger("datalab.scoring")


# The raw transaction a model with a feature set takes (fraudlab.intake.validate checks it)
RAW_FIELDS = [
    {"name": "transaction_id", "type": "string",
     "about": f"1 to {intake.MAX_ID_LENGTH} characters, one per transaction: a retry with the same id is answered "
              "as the first time and counted once"},
    {"name": "customer_id", "type": "integer or string", "about": "the card holder; 5 and \"5\" are the same"},
    {"name": "terminal_id", "type": "integer or string", "about": "the merchant's terminal; 5 and \"5\" are the same"},
    {"name": "amount", "type": "number", "about": ">= 0"},
    {"name": "datetime", "type": "string",
     "about": "ISO-8601, UTC when it has no offset; at most "
              f"{intake.FUTURE_TOLERANCE.total_seconds() / 60:.0f} minutes ahead of this server's clock"},
]


def read_token(path):
    """(the feedback token, None), or (None, why feedback is refused)."""
    try:
        token = Path(path).read_bytes().strip()
    except FileNotFoundError:
        return None, f"feedback is not configured: no token file at {path} (SCORING_FEEDBACK_TOKEN_FILE)"
    except OSError as e:
        return None, f"feedback is not configured: cannot read the token file {path}: {e.strerror}"
    if not token:
        return None, f"feedback is not configured: the token file {path} is empty"
    return token, None


class State:
    def __init__(self, threshold, max_batch, max_bytes, model_name, model_version, feedback_token=None,
                 feedback_refused="feedback is not configured: no token file (SCORING_FEEDBACK_TOKEN_FILE)"):
        self.threshold = threshold
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.model = None
        self.batcher = None
        self.store = None  # featurestore.Link: the model takes raw transactions
        self.load_error = None
        self.feedback_token = feedback_token  # bytes; None: feedback_refused says why feedback is refused
        self.feedback_refused = feedback_refused
        self.metrics = Metrics(model_name, model_version)

    def serve(self, model, store=None):
        if bool(model.feature_set) != (store is not None):
            raise ValueError("a model that declares a feature set is served with a feature store, and only it")
        self.model = model
        self.store = store
        self.batcher = Batcher(model.predict, on_batch=self.metrics.batch_scored,
                               on_request=self.metrics.waited_and_scored)


class JSONHandler(web.RequestHandler):
    @property
    def state(self):
        return self.settings["state"]

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.finish({"error": message})

    def refuse(self, error):
        self.set_status(error.status)
        if error.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="scoring feedback"')
        self.finish(error.body())

    def loaded_model(self):
        state = self.state
        if state.model is None:
            raise RequestError(503, "the model is not loaded yet" if not state.load_error
                               else f"the model could not be loaded: {state.load_error}")
        return state.model


class Score(JSONHandler):
    async def post(self):
        started = time.perf_counter()
        state = self.state
        try:
            m = self.loaded_model()
            explain = self.explain()
            body, content_type = self.request.body, self.request.headers.get("Content-Type")
            names = [name for name, _ in m.fields]
            if state.store:
                transactions, many = parse_raw(body, content_type, state.max_batch, state.max_bytes,
                                               datetime.now(timezone.utc))
                parsed = time.perf_counter()
                state.metrics.stage("parse", parsed - started)
                features = await state.store.features(transactions)
                rows = [[row[name] for name in names] for row in features]
                state.metrics.stage("features", time.perf_counter() - parsed)
            else:
                rows, many = parse(body, content_type, m.fields, state.max_batch, state.max_bytes)
                features = [dict(zip(names, row)) for row in rows] if explain else None
                state.metrics.stage("parse", time.perf_counter() - started)
            probabilities = await state.batcher.score(rows)
            answered = time.perf_counter()
            results = self.results(probabilities, many)
        except RequestError as e:
            self.refuse(e)
            state.metrics.request(e.status, time.perf_counter() - started)
            return
        if state.store:
            scored_at = int(time.time() * 1000)
            state.store.served([intake.Served(tx.transaction_id, m.name, m.version, p, scored_at)
                                for tx, p in zip(transactions, probabilities)])
        if explain:
            for result, row in zip(results, features):
                result["features"] = row
        self.finish(results[0] if not many else {"results": results, "model": m.name, "version": m.version,
                                                "threshold": state.threshold})
        done = time.perf_counter()
        state.metrics.stage("respond", done - answered)
        state.metrics.request(200, done - started, len(rows))

    def explain(self):
        value = self.get_query_argument("explain", "0")
        if value.lower() not in ("0", "1", "true", "false"):
            raise RequestError(400, f"'explain' must be 1 (add the features each transaction was scored with) "
                                    f"or 0, got {shown(value)}", "explain")
        return value.lower() in ("1", "true")

    def results(self, probabilities, many):
        m, threshold = self.state.model, self.state.threshold
        results = []
        for i, p in enumerate(probabilities):
            # NaN too: a float32 network overflows inside on huge values (3e38 times a weight of 2 is
            # inf, and inf - inf is NaN), and NaN >= threshold is False: it would read "allow".
            if not 0.0 <= p <= 1.0:
                where = f"transaction {i}: " if many else ""
                raise RequestError(422, f"{where}the model's score is {p!r}, not a probability: the transaction's "
                                        "values are beyond what the model can compute with")
            score = round(100.0 * p, 2)
            results.append({"score": score, "decision": "block" if score >= threshold else "allow",
                            "model": m.name, "version": m.version})
        return results


class Feedback(JSONHandler):
    async def post(self):
        state = self.state
        try:
            m = self.loaded_model()
            if state.store is None:
                raise RequestError(409, f"{m.name} v{m.version} takes its features in the request, not raw "
                                        "transactions: no state here for a label to change (feedback needs a model "
                                        f"that declares {model_mod.FEATURE_SET_KEY} in its MLmodel metadata)")
            self.authorize()
            labels, many = parse_labels(self.request.body, self.request.headers.get("Content-Type"),
                                        state.max_batch, state.max_bytes)
            results = await state.store.feedback(labels)
        except RequestError as e:
            self.refuse(e)
            state.metrics.feedback_request(e.status)
            return
        answers = [{"transaction_id": tid, "result": result.value} for (tid, _), result in zip(labels, results)]
        if many:
            counts = {kind.value: results.count(kind) for kind in intake.Feedback}
            status, body = 200, {"results": answers, **counts}
        elif results[0] is intake.Feedback.UNKNOWN:
            status, body = 404, {"error": f"no transaction {labels[0][0]!r} was scored here, or its record has "
                                          f"expired ({online.RECORD_TTL // 86400} days after scoring)", **answers[0]}
        else:
            status, body = 200, answers[0]
        self.set_status(status)
        self.finish(body)
        state.metrics.feedback_request(status, [result.value for result in results])

    def authorize(self):
        token = self.state.feedback_token
        if token is None:
            raise RequestError(503, self.state.feedback_refused)
        header = self.request.headers.get("Authorization")
        if not header:
            raise RequestError(401, "feedback needs the header 'Authorization: Bearer <feedback token>' "
                                    "(`datalab scoring feedback-token` prints the token)")
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise RequestError(401, "the Authorization header must be 'Bearer <feedback token>'")
        # headers arrive as latin-1 text: every character encodes back to its byte
        if not hmac.compare_digest(given.strip().encode("latin-1"), token):
            raise RequestError(401, "the feedback token is not valid")


class Schema(JSONHandler):
    def get(self):
        m = self.state.model
        if m is None:
            raise web.HTTPError(503, "the model is not loaded yet")
        if self.state.store:
            self.finish(self.raw())
            return
        self.finish({"model": m.name, "version": m.version, "threshold": self.state.threshold,
                     "fields": [{"name": n, "type": t} for n, t in m.fields],
                     "example": m.example[0] if m.example else None,
                     "request": {"url": "/v1/score", "content_type": "application/json",
                                 "one": m.example[0] if m.example else None,
                                 "many": m.example[:3] if m.example else None}})

    def raw(self):
        m, now = self.state.model, datetime.now(timezone.utc).replace(microsecond=0)
        examples = [{"transaction_id": f"tx-{n}", "customer_id": customer, "terminal_id": terminal, "amount": amount,
                     "datetime": (now - timedelta(minutes=n)).isoformat()}
                    for n, customer, terminal, amount in ((3, 4242, 977, 57.16), (2, 4242, 12, 8.5),
                                                           (1, "C-0193", "T-77", 120.0))]
        return {"model": m.name, "version": m.version, "threshold": self.state.threshold,
                "feature_set": m.feature_set, "fields": RAW_FIELDS, "example": examples[0],
                "features": [name for name, _ in m.fields],
                "request": {"url": "/v1/score", "content_type": "application/json", "one": examples[0],
                            "many": examples, "explain": "/v1/score?explain=1 adds the features each was scored with"},
                "feedback": {"url": "/v1/feedback", "method": "POST", "content_type": "application/json",
                             "auth": "Authorization: Bearer <feedback token> (datalab scoring feedback-token)",
                             "configured": self.state.feedback_token is not None,
                             "one": {"transaction_id": examples[0]["transaction_id"], "fraud": True},
                             "many": [{"transaction_id": e["transaction_id"], "fraud": False} for e in examples]}}


class NotFound(JSONHandler):
    def prepare(self):
        raise web.HTTPError(404, f"no such endpoint {self.request.path}: POST /v1/score, POST /v1/feedback, "
                                 "GET /v1/schema")


class Health(JSONHandler):
    def get(self):
        self.finish({"status": "alive"})


class Started(JSONHandler):
    def not_loaded(self):
        """Answered 503 when the model is not loaded (yet, or ever); else False."""
        if self.state.model is not None:
            return False
        self.set_status(503)
        self.finish({"status": "loading" if not self.state.load_error else "failed", "error": self.state.load_error})
        return True

    def get(self):
        if self.not_loaded():
            return
        m = self.state.model
        self.finish({"status": "started", "model": m.name, "version": m.version, "engine": m.engine})


class Ready(Started):
    async def get(self):
        if self.not_loaded():
            return
        m = self.state.model
        problem = await self.state.store.ready() if self.state.store else None
        if problem:
            self.set_status(503)
            self.finish({"status": "unready", "error": problem})
            return
        self.finish({"status": "ready", "model": m.name, "version": m.version, "engine": m.engine,
                     "input": "raw transactions" if self.state.store else "features"})


class PromMetrics(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", metrics_mod.CONTENT_TYPE)
        self.finish(self.settings["state"].metrics.render())


def log_request(handler):
    """A line per request only where it says something: refusals (4xx) and failures (5xx).
    A replica answers hundreds of requests a second, and Tornado's default line for each
    filled the engine's log and cost the loop a write to stderr per request, a source of
    its tail latency (bench/README.md). Answers are counted and timed on /metrics; at
    DEBUG every request has its line again."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        access_log.log(level, "%d %s %.2fms", status, handler._request_summary(),
                       1000.0 * handler.request.request_time())


def app(state):
    return web.Application([(r"/v1/score", Score), (r"/v1/feedback", Feedback), (r"/v1/schema", Schema),
                            (r"/healthz", Health), (r"/startedz", Started), (r"/readyz", Ready),
                            (r"/metrics", PromMetrics)], state=state, default_handler_class=NotFound,
                           log_function=log_request)


def state_from(env):
    token, refused = read_token(env.get("SCORING_FEEDBACK_TOKEN_FILE", "/run/secrets/feedback_token"))
    return State(threshold=float(env.get("SCORING_THRESHOLD", "50")),
                 max_batch=int(env.get("SCORING_MAX_BATCH", "1000")),
                 # the edge's limit too (images/edge/haproxy.cfg): change both together
                 max_bytes=int(env.get("SCORING_MAX_BYTES", str(1 << 20))),
                 model_name=env.get("SCORING_MODEL_NAME", "model"),
                 model_version=env.get("SCORING_MODEL_VERSION", "0"),
                 feedback_token=token, feedback_refused=refused)


def open_store(model, env, metrics):
    """The feature store link a model needs (None: it takes its features in the request)."""
    return featurestore.Link.open(featurestore.Settings.from_env(env), metrics) if model.feature_set else None


async def main_async():
    env = os.environ
    state = state_from(env)
    # Bodies up to twice the limit are read and answered with a 413 that names it; Tornado cuts larger
    # ones off with a bare 400 (the edge refuses any body over the limit that declares its length).
    server = httpserver.HTTPServer(app(state), max_body_size=state.max_bytes * 2)
    server.listen(int(env.get("SCORING_PORT", "8080")), "0.0.0.0")
    log.info("listening; loading the model")
    started = time.monotonic()
    try:
        model = await asyncio.to_thread(model_mod.load, env.get("SCORING_MODEL_DIR", "/model"),
                                        state.metrics.model[0], state.metrics.model[1],
                                        engine=env.get("SCORING_ENGINE", "auto"))
        store = open_store(model, env, state.metrics)
    except Exception as e:
        # Say why, answer /readyz with it for a moment, then exit: the task
        # fails at once and Swarm rolls the update back to the serving version.
        state.load_error = f"{type(e).__name__}: {e}"
        log.error("model failed to load: %s", state.load_error)
        await asyncio.sleep(float(env.get("SCORING_FAIL_GRACE_S", "2")))
        raise SystemExit(3)
    # TensorFlow, Keras and MLflow leave half a million objects for the collector: a full
    # collection walked them all in 230 ms, a pause every request then waited out (a p99 of
    # tens of ms). Frozen, they are never walked again; what requests allocate still is.
    gc.collect()
    gc.freeze()
    state.serve(model, store)
    state.metrics.loaded(time.monotonic() - started)
    log.info("model %s v%s ready (%s, %s) in %.1f s", model.name, model.version, model.engine,
             f"raw transactions, {model.feature_set}" if store else "features in the request",
             time.monotonic() - started)
    if store:
        await serve_raw(server, store)
    else:
        await asyncio.Event().wait()


async def serve_raw(server, store):
    """Serve until SIGTERM (a rollout, a scale-in), then log the answers still
    waiting (featurestore.py) before exiting: Swarm's stop grace period (5 s)
    bounds this; the requests cut short are replayed by the edge."""
    flusher = asyncio.create_task(store.flush_periodically())
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    server.stop()
    flusher.cancel()
    try:
        logged = await asyncio.wait_for(store.flush(), timeout=2)
    except asyncio.TimeoutError:
        logged = False
    log.info("stopping; %s", "every answer logged" if logged else f"{len(store.pending)} answers not logged")
    store.close()


def main():
    logs.configure()
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
