"""The scoring HTTP API.

    POST /v1/score    one transaction (a JSON object of the signature's fields)
                      or a list of them -> score 0-100, decision, model, version
    GET  /v1/schema   the fields a transaction needs and an example request
    GET  /healthz     the process is alive
    GET  /readyz      the model is loaded and warmed up (503 until then)
    GET  /metrics     Prometheus metrics

Settings come from the environment, so a deployment changes them without a
rebuild: SCORING_THRESHOLD (0-100, a score at or above it is "block"),
SCORING_MODEL_DIR, SCORING_MODEL_NAME, SCORING_MODEL_VERSION, SCORING_PORT,
SCORING_MAX_BATCH, SCORING_MAX_BYTES.
"""

import asyncio
import json
import logging
import os
import time

from tornado import httpserver, web

from . import model as model_mod
from .batching import Batcher
from .metrics import Metrics
from .validate import RequestError, parse

log = logging.getLogger("datalab.scoring")


class State:
    def __init__(self, threshold, max_batch, max_bytes, model_name, model_version):
        self.threshold = threshold
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.model = None
        self.batcher = None
        self.load_error = None
        self.metrics = Metrics(model_name, model_version)

    def serve(self, model):
        self.model = model
        self.batcher = Batcher(model.predict, on_batch=self.metrics.batch_scored)


class JSONHandler(web.RequestHandler):
    @property
    def state(self):
        return self.settings["state"]

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.finish({"error": message})


class Score(JSONHandler):
    async def post(self):
        started = time.perf_counter()
        state = self.state
        try:
            if state.model is None:
                raise RequestError(503, "the model is not loaded yet" if not state.load_error
                                   else f"the model could not be loaded: {state.load_error}")
            rows, many = parse(self.request.body, self.request.headers.get("Content-Type"), state.model.fields,
                               state.max_batch, state.max_bytes)
            results = self.results(await state.batcher.score(rows), many)
        except RequestError as e:
            self.set_status(e.status)
            self.finish({"error": e.message})
            state.metrics.request(e.status, time.perf_counter() - started)
            return
        m = state.model
        self.finish(results[0] if not many else {"results": results, "model": m.name, "version": m.version,
                                                "threshold": state.threshold})
        state.metrics.request(200, time.perf_counter() - started, len(rows))

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


class Schema(JSONHandler):
    def get(self):
        m = self.state.model
        if m is None:
            raise web.HTTPError(503, "the model is not loaded yet")
        self.finish({"model": m.name, "version": m.version, "threshold": self.state.threshold,
                     "fields": [{"name": n, "type": t} for n, t in m.fields],
                     "example": m.example[0] if m.example else None,
                     "request": {"url": "/v1/score", "content_type": "application/json",
                                 "one": m.example[0] if m.example else None,
                                 "many": m.example[:3] if m.example else None}})


class NotFound(JSONHandler):
    def prepare(self):
        raise web.HTTPError(404, f"no such endpoint {self.request.path}: POST /v1/score, GET /v1/schema")


class Health(JSONHandler):
    def get(self):
        self.finish({"status": "alive"})


class Ready(JSONHandler):
    def get(self):
        m = self.state.model
        if m is None:
            self.set_status(503)
            self.finish({"status": "loading" if not self.state.load_error else "failed",
                         "error": self.state.load_error})
            return
        self.finish({"status": "ready", "model": m.name, "version": m.version, "engine": m.engine})


class PromMetrics(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(self.settings["state"].metrics.render())


def app(state):
    return web.Application([(r"/v1/score", Score), (r"/v1/schema", Schema), (r"/healthz", Health),
                            (r"/readyz", Ready), (r"/metrics", PromMetrics)], state=state,
                           default_handler_class=NotFound)


async def main_async():
    env = os.environ
    state = State(threshold=float(env.get("SCORING_THRESHOLD", "50")),
                  max_batch=int(env.get("SCORING_MAX_BATCH", "1000")),
                  # the edge's limit too (images/edge/haproxy.cfg): change both together
                  max_bytes=int(env.get("SCORING_MAX_BYTES", str(1 << 20))),
                  model_name=env.get("SCORING_MODEL_NAME", "model"),
                  model_version=env.get("SCORING_MODEL_VERSION", "0"))
    # Bodies up to twice the limit are read and answered with a 413 that names it; Tornado cuts larger
    # ones off with a bare 400 (the edge refuses any body over the limit that declares its length).
    server = httpserver.HTTPServer(app(state), max_body_size=state.max_bytes * 2)
    server.listen(int(env.get("SCORING_PORT", "8080")), "0.0.0.0")
    log.info("listening; loading the model")
    started = time.monotonic()
    try:
        model = await asyncio.to_thread(model_mod.load, env.get("SCORING_MODEL_DIR", "/model"),
                                        state.metrics.model[0], state.metrics.model[1])
    except Exception as e:
        # Say why, answer /readyz with it for a moment, then exit: the task
        # fails at once and Swarm rolls the update back to the serving version.
        state.load_error = f"{type(e).__name__}: {e}"
        log.error("model failed to load: %s", state.load_error)
        await asyncio.sleep(float(env.get("SCORING_FAIL_GRACE_S", "2")))
        raise SystemExit(3)
    else:
        state.serve(model)
        log.info("model %s v%s ready (%s) in %.1f s", model.name, model.version, model.engine,
                 time.monotonic() - started)
    await asyncio.Event().wait()


def main():
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s scoring] %(message)s")
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
