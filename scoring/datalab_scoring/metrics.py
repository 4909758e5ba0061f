"""The replica's Prometheus metrics (`/metrics`), with prometheus_client.

Each `Metrics` has a registry of its own, so that a process (or a test) may
hold several; the exposition is prometheus_client's."""

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# No `*_created` series beside every counter and histogram: a replica's start
# time is not a figure anyone scrapes it for.
prometheus_client.disable_created_metrics()

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
STORE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
STAGE_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
# Where a scoring request's time goes (the tail's breakdown, scoring/README.md).
STAGES = ("parse", "features", "queue", "model", "respond")


class Metrics:
    def __init__(self, model_name, model_version):
        self.model = (model_name, model_version)
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("scoring_requests", "Scoring requests by HTTP status.", ["code"], registry=registry)
        self.transactions = Counter("scoring_transactions", "Transactions scored.", registry=registry)
        self.latency = Histogram("scoring_request_seconds", "Time to answer a scoring request.",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.batch = Histogram("scoring_batch_size", "Transactions per model call.",
                               buckets=BATCH_BUCKETS, registry=registry)
        stages = Histogram("scoring_stage_seconds",
                           "Time a scoring request spends in each stage: parse (read and check the body), features "
                           "(the feature store's round trips; raw transactions only), queue (waiting for the model), "
                           "model (the model call of the batch it is in), respond (scores, JSON, writing).",
                           ["stage"], buckets=STAGE_BUCKETS, registry=registry)
        self.stages = {name: stages.labels(name) for name in STAGES}
        Gauge("scoring_model_info", "The model version served.", ["model", "version"],
              registry=registry).labels(model_name, model_version).set(1)
        self.load_seconds = Gauge("scoring_model_load_seconds",
                                  "From the server's start to the model loaded and warmed up (0 until then).",
                                  registry=registry)
        # the feature store (raw transactions only): per call ("score", "feedback", "log", "ping")
        self.store_latency = Histogram("scoring_feature_store_seconds",
                                       "Round trips to the feature store that succeeded, by call.", ["call"],
                                       buckets=STORE_BUCKETS, registry=registry)
        self.store_errors = Counter("scoring_feature_store_errors",
                                    "Feature store calls that failed, by call and kind "
                                    "(unreachable, timeout, refused, busy).", ["call", "kind"], registry=registry)
        self.log_written = Counter("scoring_scored_log_written", "Transactions added to the scored log.",
                                   registry=registry)
        self.log_dropped = Counter("scoring_scored_log_dropped", "Answers never logged: the buffer was full.",
                                   registry=registry)
        self.log_pending = Gauge("scoring_scored_log_pending", "Answers waiting to be logged.", registry=registry)
        self.feedback = Counter("scoring_feedback_requests", "Feedback requests by HTTP status.", ["code"],
                                registry=registry)
        self.labels = Counter("scoring_feedback_labels",
                              "Labels received, by what came of them (recorded, unchanged, unknown).", ["result"],
                              registry=registry)

    def loaded(self, seconds):
        self.load_seconds.set(seconds)

    def request(self, status, seconds, transactions=0):
        self.requests.labels(status).inc()
        if transactions:
            self.transactions.inc(transactions)
        self.latency.observe(seconds)

    def stage(self, name, seconds):
        self.stages[name].observe(seconds)

    def waited_and_scored(self, queue_s, model_s):
        self.stages["queue"].observe(queue_s)
        self.stages["model"].observe(model_s)

    def batch_scored(self, size):
        self.batch.observe(size)

    def store_call(self, call, seconds):
        self.store_latency.labels(call).observe(seconds)

    def store_error(self, call, kind):
        self.store_errors.labels(call, kind).inc()

    def scored_log(self, written=0, dropped=0, pending=0):
        if written:
            self.log_written.inc(written)
        if dropped:
            self.log_dropped.inc(dropped)
        self.log_pending.set(pending)

    def feedback_request(self, status, results=()):
        self.feedback.labels(status).inc()
        for result in results:
            self.labels.labels(result).inc()

    def render(self):
        return prometheus_client.generate_latest(self.registry).decode()
