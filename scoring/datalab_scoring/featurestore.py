"""The scoring service's feature store: the Redis state (fraudlab.online) that
a raw transaction's features are computed from, where labels go, and the
scored log. The concern here is the service's side of it: settings, a
connection that fails fast, the calls kept off the event loop, readiness,
and the answers waiting to be logged.

Settings (environment):

    SCORING_FEATURE_STORE_URL            redis://featurestore:6379/0 (a password in the URL wins over the file's)
    SCORING_FEATURE_STORE_PASSWORD_FILE  /run/secrets/featurestore_password; none if the file is absent
    SCORING_FEATURE_STORE_TIMEOUT_MS     50: connect and read timeouts of every call
    SCORING_SCORED_LOG_MAXLEN            1000000: the scored log keeps about the latest this many
    SCORING_SCORED_LOG_FLUSH_MS          200: how long an answer may wait to be logged when no request comes

Faults: the store unreachable (refused, reset, still loading its data after a
restart) or silent past the timeout answers 503 "feature store unreachable:
..." at once or within the timeout; every request tries again, so the
service recovers as soon as the store does. The store answering with an
error (out of memory: noeviction refuses writes) answers 503 too. More calls
in flight than MAX_IN_FLIGHT are refused at once (503): a store that does not
answer would otherwise queue requests behind the threads it holds. No call
is retried here: every one is idempotent, and the edge replays a 503 on
another task.
"""

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from fraudlab import online
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from .validate import RequestError

log = logging.getLogger("datalab.scoring")

HEALTH_TTL_S = 1.0  # how long the outcome of a call (or PING) answers /readyz
# The blocking calls run on THREADS threads (one takes about 1 ms: a few serve hundreds a second).
# Up to MAX_IN_FLIGHT calls may be running or waiting for a thread, so that when the store does not
# answer a call waits at most one timeout for a thread; past that a call is refused at once (503).
THREADS = 16
MAX_IN_FLIGHT = 32
# Transactions (or labels) per round trip: a request's batch goes in round trips of at most this
# many, one after the other, so that each is answered well within the timeout (Redis runs a
# pipeline's scripts one by one: 500 take longer than 50 ms on a busy host). A batch failing
# half-way is a 503 with no score; its retry is answered from the records, each counted once.
CHUNK = 64
LOG_BATCH = 1000  # answers logged per call
LOG_BUFFER = 100_000  # answers kept while the store is away (a few minutes of traffic); the oldest go first


class StoreUnavailable(RequestError):
    def __init__(self, message):
        super().__init__(503, message)


@dataclass(frozen=True)
class Settings:
    url: str
    password: str | None
    timeout_s: float
    scored_log_maxlen: int
    flush_s: float

    @classmethod
    def from_env(cls, env):
        def number(name, default, kind=float):
            text = env.get(name, default)
            try:
                value = kind(text)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {text!r}") from None
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {text!r}")
            return value

        path = Path(env.get("SCORING_FEATURE_STORE_PASSWORD_FILE", "/run/secrets/featurestore_password"))
        try:
            password = path.read_text().strip() or None
        except FileNotFoundError:  # a store without a password (a test's, a developer's)
            password = None
        except OSError as e:
            raise ValueError(f"cannot read the feature store's password from {path}: {e.strerror}") from None
        return cls(url=env.get("SCORING_FEATURE_STORE_URL", "redis://featurestore:6379/0"), password=password,
                   timeout_s=number("SCORING_FEATURE_STORE_TIMEOUT_MS", "50") / 1000,
                   scored_log_maxlen=number("SCORING_SCORED_LOG_MAXLEN", str(online.SCORED_LOG_MAXLEN), int),
                   flush_s=number("SCORING_SCORED_LOG_FLUSH_MS", "200") / 1000)


def redacted(url):
    """The URL without the password it may carry: what messages and logs show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def connect(settings):
    # redis-py retries a failed call 10 times by default, with backoff: that would hold a request for
    # seconds. One try within the timeout; the caller's next call is the retry.
    return redis.Redis.from_url(settings.url, password=settings.password, socket_timeout=settings.timeout_s,
                                socket_connect_timeout=settings.timeout_s, retry=Retry(NoBackoff(), 0))


class Link:
    """The feature store as the service calls it: coroutines, each call one
    round trip made on a thread of its own pool (redis-py blocks)."""

    def __init__(self, store, where, timeout_s, metrics, flush_s=0.2):
        self.store = store  # fraudlab.online.FeatureStore
        self.where = where  # the store's URL, for messages
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.flush_s = flush_s
        self.executor = ThreadPoolExecutor(THREADS, thread_name_prefix="featurestore")
        self.pending = collections.deque()  # intake.Served not yet in the scored log, oldest first
        self.health = None  # (monotonic time, None or why the store is unreachable) of the latest call
        self.in_flight = 0

    @classmethod
    def open(cls, settings, metrics):
        store = online.FeatureStore(connect(settings), scored_log_maxlen=settings.scored_log_maxlen)
        where = redacted(settings.url)
        log.info("feature store %s (%s parser), timeout %.0f ms", where, "hiredis" if HIREDIS_AVAILABLE else "Python",
                 settings.timeout_s * 1000)
        return cls(store, where, settings.timeout_s, metrics, settings.flush_s)

    async def features(self, transactions):
        """The features of validated transactions, in order: a round trip per CHUNK
        of them, the first also carrying answers waiting for the scored log."""
        batch = self._take()
        features = []
        try:
            for start in range(0, max(len(transactions), 1), CHUNK):
                found, logged = await self._call("score", self.store.score_and_log,
                                                 transactions[start:start + CHUNK], batch if start == 0 else ())
                features += found
                if start == 0:
                    self.metrics.scored_log(written=logged, pending=len(self.pending))
        except StoreUnavailable:
            if not features:  # the scored log's batch went with the first round trip, or not at all
                self._put_back(batch)
            raise
        return features

    async def feedback(self, labels):
        """[(transaction id, fraud)] recorded: a fraudlab.intake.Feedback each (a round trip per CHUNK)."""
        recorded = []
        for start in range(0, len(labels), CHUNK):
            recorded += await self._call("feedback", self.store.feedback_many, labels[start:start + CHUNK])
        return recorded

    def served(self, answers):
        """Answers (intake.Served) to log: sent with the next request's round
        trip, or by flush() when none comes."""
        self.pending.extend(answers)
        dropped = max(0, len(self.pending) - LOG_BUFFER)
        for _ in range(dropped):
            self.pending.popleft()
        self.metrics.scored_log(dropped=dropped, pending=len(self.pending))

    async def flush(self):
        """Log every answer waiting; False if the store could not take them (they wait on)."""
        while self.pending:
            batch = self._take()
            try:
                logged = await self._call("log", self.store.log_scored, batch)
            except StoreUnavailable:
                self._put_back(batch)
                return False
            self.metrics.scored_log(written=logged, pending=len(self.pending))
        return True

    async def flush_periodically(self):
        while True:
            await asyncio.sleep(self.flush_s)
            if self.pending:
                await self.flush()

    async def ready(self):
        """None while the store answers, else why not: the latest call's
        outcome if it is less than a second old, else a PING's."""
        if self.health is None or time.monotonic() - self.health[0] >= HEALTH_TTL_S:
            try:
                await self._call("ping", self.store.client.ping)
            except StoreUnavailable as e:
                return e.message
        return self.health[1]

    def close(self):
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.store.client.close()

    def _take(self):
        return [self.pending.popleft() for _ in range(min(LOG_BATCH, len(self.pending)))]

    def _put_back(self, batch):
        self.pending.extendleft(reversed(batch))
        dropped = max(0, len(self.pending) - LOG_BUFFER)
        for _ in range(dropped):
            self.pending.popleft()
        self.metrics.scored_log(dropped=dropped, pending=len(self.pending))

    async def _call(self, call, function, *args):
        if self.in_flight >= MAX_IN_FLIGHT:
            self.metrics.store_error(call, "busy")
            raise StoreUnavailable(f"the feature store ({self.where}) is not keeping up: {self.in_flight} calls "
                                   "are waiting for it")
        self.in_flight += 1
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        except redis.TimeoutError:
            self._unreachable(call, "timeout", f"no answer from {self.where} within {self.timeout_s * 1000:.0f} ms")
        except redis.ConnectionError as e:  # refused, reset, a wrong password, still loading its data
            self._unreachable(call, "unreachable", f"{self.where}: {e}")
        except redis.RedisError as e:  # it answered with an error: out of memory (noeviction), a script's
            self.metrics.store_error(call, "refused")
            raise StoreUnavailable(f"the feature store ({self.where}) refused the call: {e}") from None
        finally:
            self.in_flight -= 1
        if self.health and self.health[1]:
            log.info("feature store %s answers again", self.where)
        self.health = (time.monotonic(), None)
        self.metrics.store_call(call, time.perf_counter() - started)
        return result

    def _unreachable(self, call, kind, detail):
        self.metrics.store_error(call, kind)
        why = f"feature store unreachable: {detail}"
        if not (self.health and self.health[1]):
            log.warning("%s", why)
        self.health = (time.monotonic(), why)
        raise StoreUnavailable(why) from None
