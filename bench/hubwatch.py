"""What the hub went through while a bench loaded it: its worst event-loop lag
and whether it restarted (bench/spawn.py's login storms).

The lag comes from two places that each miss something: the histogram
`jupyterhub_event_loop_interval_seconds` on /hub/metrics (every stall, but
only to a bucket's bounds) and the hub's "Event loop was unresponsive for at
least N s!" log lines (exact, but only stalls over its log threshold, 1 s by
default). The larger of the two is reported."""

import re
import subprocess
from datetime import datetime, timezone

import requests
from prometheus_client.parser import text_string_to_metric_families

from datalab.docker import DockerError

LAG_METRIC = "jupyterhub_event_loop_interval_seconds"
LAG_LOG_LINE = re.compile(r"Event loop was unresponsive for at least ([0-9.]+)s")
LAG_LOG_THRESHOLD_S = 1.0  # JupyterHub's event_loop_interval_log_threshold, which this lab leaves as it is
# what reading a metric, a log or docker's answers can fail with; each is a note in the report, not a crash
FAILURES = (requests.RequestException, LookupError, ValueError, DockerError, subprocess.SubprocessError, OSError)


def lag_buckets(hub_url, token):
    """The hub's event-loop interval histogram: {upper bound in s: cumulative count}."""
    r = requests.get(f"{hub_url}/hub/metrics", headers={"Authorization": f"token {token}"}, timeout=30)
    r.raise_for_status()
    for family in text_string_to_metric_families(r.text):
        if family.name == LAG_METRIC:
            return {float(s.labels["le"]): s.value for s in family.samples if s.name == f"{LAG_METRIC}_bucket"}
    raise LookupError(f"{LAG_METRIC} is not on /hub/metrics (JupyterHub.metrics event_loop_interval_enabled off?)")


def worst_bucket(before, after):
    """(lower, upper) bounds of the highest bucket that gained observations between two
    scrapes, or None; and whether the counters were reset (a hub restart starts them at 0,
    so everything after it counts)."""
    reset = any(after.get(b, 0) < count for b, count in before.items())
    if reset:
        before = {}
    worst, lower, below = None, 0.0, 0
    for bound in sorted(after):
        gained = after[bound] - before.get(bound, 0)  # cumulative: everything ≤ bound
        if gained > below:
            worst = (lower, bound)
        lower, below = bound, gained
    return worst, reset


class HubWatch:
    """Snapshot the hub before a storm (`HubWatch(...)`), then `report()` after it."""

    def __init__(self, docker, lab, hub_url, admin_token):
        self.docker, self.service, self.hub_url, self.token = docker, f"{lab}_hub", hub_url, admin_token
        self.notes = []
        # docker's --since takes RFC 3339; whole seconds, so a line of this very second is not lost
        self.since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.identity_before = self._try("hub task and container before", self.identity)
        self.buckets_before = self._try("/hub/metrics before", self.buckets)

    def _try(self, what, read):
        try:
            return read()
        except FAILURES as e:
            self.notes.append(f"{what}: {type(e).__name__}: {str(e)[:200]}")
            return None

    def identity(self):
        """The hub service's running task(s) and container(s): new ids mean it restarted."""
        tasks = self.docker.out("service", "ps", "-q", "--filter", "desired-state=running", self.service, timeout=30)
        containers = self.docker.out("ps", "-q", "--no-trunc", "--filter",
                                     f"label=com.docker.swarm.service.name={self.service}", timeout=30)
        return {"tasks": sorted(tasks.split()), "containers": sorted(containers.split())}

    def buckets(self):
        if not self.token:
            raise LookupError("no admin token to read it with")
        return lag_buckets(self.hub_url, self.token)

    def logged_lags(self):
        # the hub logs to stderr, which `docker service logs` may keep apart from stdout: read both
        proc = self.docker.run("service", "logs", "--since", self.since, "--raw", self.service, timeout=60)
        return [float(m.group(1)) for m in LAG_LOG_LINE.finditer(proc.stdout + proc.stderr)]

    def report(self, proxy_5xx):
        """The worst lag since the snapshot, and whether the hub restarted. `proxy_5xx`: how many
        answers the clients got from the proxy for the hub (it could not reach the hub)."""
        lag = {"worst_lag_s": None, "worst_lag": "unknown", "worst_lag_is_lower_bound": False,
               "lag_metric_bucket": None, "lag_log_max_s": None, "lag_log_lines": None}
        after = self._try("/hub/metrics after", self.buckets)
        if self.buckets_before is not None and after is not None:
            bucket, reset = worst_bucket(self.buckets_before, after)
            if reset:
                self.notes.append("the lag histogram's counters went down (hub restarted): "
                                  "counted all since the restart")
            if bucket:
                lower, upper = bucket
                over = upper == float("inf")
                lag.update(lag_metric_bucket=f"> {lower:g} s" if over else f"<= {upper:g} s",
                           worst_lag_s=lower if over else upper, worst_lag_is_lower_bound=over,
                           worst_lag=f"> {lower:g} s" if over else f"<= {upper:g} s")
        logged = self._try("hub logs", self.logged_lags)
        if logged is not None:
            lag["lag_log_lines"] = len(logged)
            if logged:
                lag["lag_log_max_s"] = max(logged)
                if lag["worst_lag_s"] is None or max(logged) > lag["worst_lag_s"]:
                    lag.update(worst_lag_s=max(logged), worst_lag=f"{max(logged):.2f} s",
                               worst_lag_is_lower_bound=False)
            elif lag["worst_lag_s"] is None:
                # no histogram to read, but no stall logged: all were under the log threshold
                lag.update(worst_lag_s=LAG_LOG_THRESHOLD_S, worst_lag=f"< {LAG_LOG_THRESHOLD_S:g} s (logs)")

        evidence = []
        identity_after = self._try("hub task and container after", self.identity)
        if self.identity_before and identity_after:
            for kind in ("tasks", "containers"):
                if self.identity_before[kind] != identity_after[kind]:
                    evidence.append(f"hub {kind} {self.identity_before[kind]} -> {identity_after[kind]}")
        if proxy_5xx:
            evidence.append(f"{proxy_5xx} answer(s) from the proxy: the hub did not answer it")
        known = bool(evidence) or (self.identity_before is not None and identity_after is not None)
        return {**lag, "hub_restarted": bool(evidence) if known else None, "restart_evidence": evidence,
                "hub_notes": self.notes}
