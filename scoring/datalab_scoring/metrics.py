"""Prometheus metrics in the text exposition format (no client library)."""

import bisect
import threading

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
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

    def request(self, status, seconds, transactions=0):
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self.transactions += transactions
            self.latency.observe(seconds)

    def batch_scored(self, size):
        with self.lock:
            self.batch.observe(size)

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
                      f'scoring_model_info{{model="{name}",version="{version}"}} 1']
        return "\n".join(lines) + "\n"
