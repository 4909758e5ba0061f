"""Prometheus metrics in the text exposition format (no client library)."""

import bisect
import threading

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
STORE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


class Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name, labels=""):
        out, cumulative = [], 0
        for bound, count in zip(self.buckets + (float("inf"),), self.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {cumulative}')
        out.append(f"{name}_sum{{{labels}}} {self.sum}" if labels else f"{name}_sum {self.sum}")
        out.append(f"{name}_count{{{labels}}} {cumulative}" if labels else f"{name}_count {cumulative}")
        return out


class Metrics:
    def __init__(self, model_name, model_version):
        self.lock = threading.Lock()
        self.requests = {}  # status code -> count
        self.transactions = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)
        self.model = (model_name, model_version)
        # the feature store (raw transactions only): per call ("score", "feedback", "log", "ping")
        self.store_latency = {}  # call -> Histogram of its round trips that succeeded
        self.store_errors = {}  # (call, kind) -> count; kind: unreachable, timeout, refused, busy
        self.log = {"written": 0, "dropped": 0, "pending": 0}  # the scored log's entries
        self.feedback = {}  # status code -> count
        self.labels = {}  # result ("recorded", "unchanged", "unknown") -> count

    def request(self, status, seconds, transactions=0):
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self.transactions += transactions
            self.latency.observe(seconds)

    def batch_scored(self, size):
        with self.lock:
            self.batch.observe(size)

    def store_call(self, call, seconds):
        with self.lock:
            self.store_latency.setdefault(call, Histogram(STORE_BUCKETS)).observe(seconds)

    def store_error(self, call, kind):
        with self.lock:
            self.store_errors[call, kind] = self.store_errors.get((call, kind), 0) + 1

    def scored_log(self, written=0, dropped=0, pending=0):
        with self.lock:
            self.log["written"] += written
            self.log["dropped"] += dropped
            self.log["pending"] = pending

    def feedback_request(self, status, results=()):
        with self.lock:
            self.feedback[status] = self.feedback.get(status, 0) + 1
            for result in results:
                self.labels[result] = self.labels.get(result, 0) + 1

    def render(self):
        name, version = self.model
        with self.lock:
            lines = ["# HELP scoring_requests_total Scoring requests by HTTP status.",
                     "# TYPE scoring_requests_total counter"]
            lines += [f'scoring_requests_total{{code="{code}"}} {n}' for code, n in sorted(self.requests.items())]
            lines += ["# HELP scoring_transactions_total Transactions scored.", "# TYPE scoring_transactions_total counter",
                      f"scoring_transactions_total {self.transactions}",
                      "# HELP scoring_request_seconds Time to answer a scoring request.",
                      "# TYPE scoring_request_seconds histogram", *self.latency.lines("scoring_request_seconds"),
                      "# HELP scoring_batch_size Transactions per model call.", "# TYPE scoring_batch_size histogram",
                      *self.batch.lines("scoring_batch_size"),
                      "# HELP scoring_model_info The model version served.", "# TYPE scoring_model_info gauge",
                      f'scoring_model_info{{model="{name}",version="{version}"}} 1',
                      "# HELP scoring_feature_store_seconds Round trips to the feature store that succeeded, by call.",
                      "# TYPE scoring_feature_store_seconds histogram"]
            for call, histogram in sorted(self.store_latency.items()):
                lines += histogram.lines("scoring_feature_store_seconds", f'call="{call}"')
            lines += ["# HELP scoring_feature_store_errors_total Feature store calls that failed, by call and kind.",
                      "# TYPE scoring_feature_store_errors_total counter"]
            lines += [f'scoring_feature_store_errors_total{{call="{call}",kind="{kind}"}} {n}'
                      for (call, kind), n in sorted(self.store_errors.items())]
            lines += ["# HELP scoring_scored_log_written_total Transactions added to the scored log.",
                      "# TYPE scoring_scored_log_written_total counter",
                      f"scoring_scored_log_written_total {self.log['written']}",
                      "# HELP scoring_scored_log_dropped_total Answers never logged: the buffer was full.",
                      "# TYPE scoring_scored_log_dropped_total counter",
                      f"scoring_scored_log_dropped_total {self.log['dropped']}",
                      "# HELP scoring_scored_log_pending Answers waiting to be logged.",
                      "# TYPE scoring_scored_log_pending gauge", f"scoring_scored_log_pending {self.log['pending']}",
                      "# HELP scoring_feedback_requests_total Feedback requests by HTTP status.",
                      "# TYPE scoring_feedback_requests_total counter"]
            lines += [f'scoring_feedback_requests_total{{code="{code}"}} {n}'
                      for code, n in sorted(self.feedback.items())]
            lines += ["# HELP scoring_feedback_labels_total Labels received, by what came of them.",
                      "# TYPE scoring_feedback_labels_total counter"]
            lines += [f'scoring_feedback_labels_total{{result="{result}"}} {n}'
                      for result, n in sorted(self.labels.items())]
        return "\n".join(lines) + "\n"
