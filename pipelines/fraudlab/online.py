"""The online path of the features in features.py: the same definition
(windows, delay, names: features.py's constants), computed one transaction at
a time from state kept in Redis, for real-time scoring. Batch training
(add_features) and online serving agree within 1e-6 on every feature
(tests/integration/test_feature_store.py replays a simulation through both).

A raw transaction: {"transaction_id": str, "customer_id": int|str,
"terminal_id": int|str, "amount": float >= 0, "datetime": ISO-8601 str, UTC
when it has no offset}. Its day (for the terminal windows) is the number of
whole days since the Unix epoch of its UTC time; the calendar flags are read
in UTC too.

Keys, for prefix P (default "fs:"); ids as given, so customer 5 and "5" are
the same customer:

  P c:{customer}  sorted set: one member "{amount}:{transaction id}" per
                  transaction, scored by its time in epoch microseconds
                  (integers, exact in a double: the windows' edges compare
                  exactly). Members at or before (time - 30 days) of the
                  transaction being scored are removed by it. Expires 30 days
                  after the customer's last transaction.
  P t:{terminal}  hash: n{day} transactions and f{day} frauds of that day.
                  Days that no window reads any more (before d - delay - 30,
                  d the day of the transaction being scored) are removed
                  once the hash holds more than 2 x (30 + delay + 1) fields.
                  Expires 38 days (30 + delay + 1) after the terminal's last
                  transaction.
  P tx:{transaction id}  hash: customer, terminal, day, features (the reply
                  of its first scoring), fraud (its latest label; absent
                  until one arrives), logged (the id of its entry in the
                  scored log; absent until it is logged). Expires 38 days
                  after scoring: a retry within that is answered from it and
                  counts nothing; after it, the transaction's day is out of
                  every window anyway.
  P scored        stream, the scored log: one entry per transaction served
                  (transaction_id, model, version, score: the model's 0-1
                  probability, scored_at: epoch milliseconds on the server
                  that scored it), in the order they were logged; XADD
                  MAXLEN ~ N (default SCORED_LOG_MAXLEN) keeps the latest N
                  or a few more. A transaction is logged once, by the first
                  call that logs it (its record's "logged"), so retries,
                  repeats and replays add nothing. No expiry: its length
                  bounds it. labelled_window() joins it with the records:
                  what each served version scored, and what turned out fraud.
  P last_write    Redis's own time of the last write, "seconds.microseconds".

Windows: the customer's over (t - w days, t], this transaction and the ones
before it at the same time included (pandas' rolling("{w}D") in time order);
the terminal's over days [d - delay - w, d - delay), labels as they stand.

Faults:
- Each call is one Lua script, which Redis runs atomically: a call takes
  effect whole or not at all, and repeating one is safe (a transaction id already
  scored is answered from its record; a label given twice is a no-op), so a
  caller retries on a timeout or a lost connection. Redis unreachable:
  redis.ConnectionError / TimeoutError reach the caller (a 503 for it).
- A restarted Redis has forgotten the scripts: the call loads them and runs
  again (one more round trip, once).
- Durability is Redis's: appendonly yes, appendfsync everysec loses at most
  about a second of writes in a crash (retries of those transactions count
  them once again); without persistence a restart loses all state: backfill().
- Memory: maxmemory-policy noeviction makes a full Redis refuse writes (an
  error the caller sees). Every key here but the scored log has an expiry,
  so a volatile-* or allkeys-* policy would evict state silently and
  features would undercount: status() shows the policy.
- Expiries run on Redis's clock, windows on the transactions' times: in live
  scoring the two agree; replaying old data only keeps state longer.
- A transaction that arrives after later ones of its customer may miss
  customer entries that those removed (more than 30 days before them).
- feedback() writes the terminal key named in the transaction's record, which
  is not among the script's declared keys: right on one Redis server, not on
  Redis Cluster. The scripts write after reading Redis's clock: Redis >= 5.
- The scored log is written after the model has scored, so not by the script
  that computes the features: score_and_log() sends the log entries of
  earlier transactions in the same round trip as the next features (a server
  keeps them until then). Logging is idempotent per transaction (its
  record's "logged"), so a batch sent again after a lost reply logs nothing
  twice; a record that has expired is not logged (nor created again).
"""

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import redis

from .features import (CUSTOMER_AVG_AMOUNT, CUSTOMER_NB_TX, DELAY, FEATURES, NIGHT_UNTIL, TERMINAL_NB_TX,
                       TERMINAL_RISK, WEEKEND_FROM, WINDOWS)
from .intake import EPOCH, FUTURE_TOLERANCE, Feedback, InvalidField, checked_label, raw_transactions, validate

HISTORY_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")
# About 100 MB of Redis memory; at 300 transactions/s the last hour
SCORED_LOG_MAXLEN = 1_000_000
DAY_SECONDS = 86400
LONGEST = max(WINDOWS)
CUSTOMER_TTL = LONGEST * DAY_SECONDS
TERMINAL_TTL = RECORD_TTL = (LONGEST + DELAY + 1) * DAY_SECONDS
# per window: its customer count, customer mean amount, terminal count and terminal risk
WINDOW_FEATURES = [tuple(name.format(w) for name in (CUSTOMER_NB_TX, CUSTOMER_AVG_AMOUNT,
                                                     TERMINAL_NB_TX, TERMINAL_RISK)) for w in WINDOWS]

# Reply (and stored features): "time amount" then, per window in WINDOWS order,
# the customer's counts, their amounts' sums (%.17g: exact), the terminal's
# counts, its frauds. Python divides (Lua would print numbers at 14 digits).
SCORE = """
-- KEYS: 1 record, 2 customer, 3 terminal, 4 last write
-- ARGV: 1 transaction id, 2 customer id, 3 terminal id, 4 time (epoch microseconds), 5 day,
--       6 amount, 7 delay (days), 8 record, 9 customer, 10 terminal expiry (seconds), 11... windows (days, ascending)
local known = redis.call('HGET', KEYS[1], 'features')
if known then return known end
local time, day, delay = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local windows = {}
for i = 11, #ARGV do windows[#windows + 1] = tonumber(ARGV[i]) end
local longest = windows[#windows]
local microseconds_a_day = 86400000000

redis.call('ZADD', KEYS[2], time, ARGV[6] .. ':' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.17g', time - longest * microseconds_a_day))
redis.call('EXPIRE', KEYS[2], ARGV[9])
-- not past this transaction's time (one that arrived late sees no later ones), in time order:
-- window k holds the last counts[k] of them
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local counts, sums, sum, k = {}, {}, 0, 1
for w = 1, #windows - 1 do
  local after = string.format('(%.17g', time - windows[w] * microseconds_a_day)
  counts[w] = redis.call('ZCOUNT', KEYS[2], after, ARGV[4])
end
counts[#windows] = #members
for back = 1, #members do
  local member = members[#members + 1 - back]
  sum = sum + tonumber(string.sub(member, 1, string.find(member, ':', 1, true) - 1))
  while k <= #windows and back == counts[k] do sums[k], k = sum, k + 1 end
end

redis.call('HINCRBY', KEYS[3], 'n' .. ARGV[5], 1)
-- more days than the windows and the delay span: drop those that no window from this day on reads
if redis.call('HLEN', KEYS[3]) > 2 * (longest + delay + 1) then
  for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    if tonumber(string.sub(field, 2)) < day - delay - longest then redis.call('HDEL', KEYS[3], field) end
  end
end
redis.call('EXPIRE', KEYS[3], ARGV[10])
-- days day - delay - 1 back to day - delay - longest: window k sums the first windows[k] of them
local fields = {}
for back = 1, longest do
  local past = day - delay - back
  fields[2 * back - 1], fields[2 * back] = 'n' .. past, 'f' .. past
end
local values = redis.call('HMGET', KEYS[3], unpack(fields))
local terminal_counts, frauds, n, f = {}, {}, 0, 0
k = 1
for back = 1, longest do
  n, f = n + (tonumber(values[2 * back - 1]) or 0), f + (tonumber(values[2 * back]) or 0)
  if back == windows[k] then terminal_counts[k], frauds[k], k = n, f, k + 1 end
end

local reply = {ARGV[4], ARGV[6]}
for k = 1, #windows do reply[#reply + 1] = counts[k] end
for k = 1, #windows do reply[#reply + 1] = string.format('%.17g', sums[k]) end
for k = 1, #windows do reply[#reply + 1] = terminal_counts[k] end
for k = 1, #windows do reply[#reply + 1] = frauds[k] end
local features = table.concat(reply, ' ')
redis.call('HSET', KEYS[1], 'customer', ARGV[2], 'terminal', ARGV[3], 'day', ARGV[5], 'features', features)
redis.call('EXPIRE', KEYS[1], ARGV[8])
local now = redis.call('TIME')
redis.call('SET', KEYS[4], now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
return features
"""

FEEDBACK = """
-- KEYS: 1 record, 2 last write
-- ARGV: 1 label (1 fraud, 0 genuine), 2 terminal key prefix, 3 terminal expiry (seconds)
local record = redis.call('HMGET', KEYS[1], 'terminal', 'day', 'fraud')
if not record[1] then return 'unknown' end
if record[3] == ARGV[1] then return 'unchanged' end
local change = tonumber(ARGV[1]) - (tonumber(record[3]) or 0)
redis.call('HSET', KEYS[1], 'fraud', ARGV[1])
if change ~= 0 then
  local terminal = ARGV[2] .. record[1]
  redis.call('HINCRBY', terminal, 'f' .. record[2], change)
  -- a terminal key that had gone would otherwise come back without an expiry
  if redis.call('TTL', terminal) < 0 then redis.call('EXPIRE', terminal, ARGV[3]) end
end
local now = redis.call('TIME')
redis.call('SET', KEYS[2], now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
return 'recorded'
"""


LOG = """
-- KEYS: 1 scored log, 2 last write, 3... the records of the transactions served
-- ARGV: 1 the log's length (approximate), then per record: transaction id, model, version, score,
--       scored at (epoch milliseconds)
local logged = 0
for i = 3, #KEYS do
  local a = (i - 3) * 5 + 2
  -- a record that has expired is not created again: it would have no expiry, nor features
  if redis.call('HEXISTS', KEYS[i], 'features') == 1 and redis.call('HEXISTS', KEYS[i], 'logged') == 0 then
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'transaction_id', ARGV[a],
                          'model', ARGV[a + 1], 'version', ARGV[a + 2], 'score', ARGV[a + 3], 'scored_at', ARGV[a + 4])
    redis.call('HSET', KEYS[i], 'logged', id)
    logged = logged + 1
  end
end
if logged > 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
end
return logged
"""

WINDOW_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", *FEATURES, "TX_FRAUD", "MODEL",
                  "VERSION", "SCORE", "SCORED_AT")


def _features(reply):
    """The scoring script's reply as features, in FEATURES order."""
    time, amount, *rest = (float(value) for value in reply.split())
    n = len(WINDOWS)
    counts, sums, terminal_counts, frauds = (rest[i * n:(i + 1) * n] for i in range(4))
    when = EPOCH + timedelta(microseconds=int(time))
    values = {"TX_AMOUNT": amount, "TX_DURING_WEEKEND": int(when.weekday() >= WEEKEND_FROM),
              "TX_DURING_NIGHT": int(when.hour <= NIGHT_UNTIL)}
    for names, count, total, terminal_count, fraud in zip(WINDOW_FEATURES, counts, sums, terminal_counts, frauds):
        values.update(zip(names, (count, total / count,  # never 0: the transaction itself counts
                                  terminal_count, fraud / terminal_count if terminal_count else 0.0)))
    return {name: values[name] for name in FEATURES}


def feature_matrix(rows):
    """Feature dicts (score_features') as a float32 matrix, columns in FEATURES order."""
    return np.array([[row[name] for name in FEATURES] for row in rows], dtype=np.float32).reshape(
        len(rows), len(FEATURES))


def _text(reply):
    return reply.decode() if isinstance(reply, bytes) else reply


class FeatureStore:
    def __init__(self, client: redis.Redis, prefix="fs:", future_tolerance=FUTURE_TOLERANCE,
                 scored_log_maxlen=SCORED_LOG_MAXLEN):
        self.client = client
        self.prefix = prefix
        self.future_tolerance = future_tolerance
        self.last_write_key = f"{prefix}last_write"
        self.scored_log_key = f"{prefix}scored"
        self.scored_log_maxlen = scored_log_maxlen
        self._score = client.register_script(SCORE)
        self._feedback = client.register_script(FEEDBACK)
        self._log = client.register_script(LOG)

    def customer_key(self, customer_id):
        return f"{self.prefix}c:{customer_id}"

    def terminal_key(self, terminal_id):
        return f"{self.prefix}t:{terminal_id}"

    def record_key(self, transaction_id):
        return f"{self.prefix}tx:{transaction_id}"

    def score(self, raw):
        """One transaction's features (a dict in FEATURES order), in one round trip."""
        return _features(self._score(*self._score_call(validate(raw, datetime.now(timezone.utc),
                                                                   self.future_tolerance))))

    def score_features(self, raws):
        """Features of many transactions, in order, in one round trip. Every
        transaction is checked before any is scored: one invalid transaction
        refuses the batch (InvalidField, its message saying which)."""
        now = datetime.now(timezone.utc)
        return [_features(reply) for reply in self._pipelined(
            [(self._score, *self._score_call(tx)) for tx in self._validated(raws, now, "transaction")])]

    def score_and_log(self, transactions, served=()):
        """Features of validated transactions (Transaction, as validate()
        gives them), in order, and how many of `served` (Served: earlier
        answers) the scored log gained, in one round trip."""
        calls = [(self._score, *self._score_call(tx)) for tx in transactions]
        if served:
            calls.append((self._log, *self._log_call(served)))
        replies = self._pipelined(calls)
        return [_features(reply) for reply in replies[:len(transactions)]], (replies[-1] if served else 0)

    def log_scored(self, served):
        """Add answers (Served) to the scored log, each transaction once; how
        many it gained (one already logged, or whose record has expired, adds nothing)."""
        return self._pipelined([(self._log, *self._log_call(served))])[0] if served else 0

    def feedback(self, transaction_id, fraud):
        """Record a transaction's label (Feedback says what came of it): its
        terminal's fraud count for its day follows the change."""
        return Feedback(_text(self._feedback(*self._feedback_call(transaction_id, fraud))))

    def feedback_many(self, labels):
        """[(transaction id, fraud)] in one round trip; a Feedback for each."""
        calls = [(self._feedback, *self._feedback_call(tid, fraud)) for tid, fraud in labels]
        return [Feedback(_text(reply)) for reply in self._pipelined(calls)]

    def backfill(self, history, chunk=5_000, progress=None):
        """Load what a new deployment needs from a history of labelled
        transactions (columns HISTORY_COLUMNS; TX_DATETIME UTC when naive;
        TX_FRAUD 1, 0, or NaN while unknown), so that its first transaction
        gets the features batch would give it. Only the transactions of the
        last LONGEST + DELAY days up to the latest one's day are read by any
        later window, so only those are loaded: scored and labelled in time
        order, `chunk` of them a round trip. Safe to run again. progress(done,
        total) after each chunk; returns how many were loaded."""
        missing = [name for name in HISTORY_COLUMNS if name not in history.columns]
        if missing:
            raise InvalidField(missing[0], f"the history lacks column(s): {', '.join(missing)}")
        times = pd.to_datetime(history["TX_DATETIME"], utc=True)
        cutoff = times.max().floor("D") - pd.Timedelta(days=LONGEST + DELAY)
        recent = history.assign(TX_DATETIME=times)[times >= cutoff].sort_values("TX_DATETIME", kind="stable")
        raws, frauds = raw_transactions(recent), recent["TX_FRAUD"].tolist()
        now, total = datetime.now(timezone.utc), len(raws)
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            transactions = self._validated(raws[start:stop], now, "history transaction", first=start)
            labels = [(tx.transaction_id, bool(fraud)) for tx, fraud in zip(transactions, frauds[start:stop])
                      if not pd.isna(fraud)]
            self._pipelined([(self._score, *self._score_call(tx)) for tx in transactions]
                            + [(self._feedback, *self._feedback_call(tid, fraud)) for tid, fraud in labels])
            if progress:
                progress(stop, total)
        return total

    def status(self):
        """What an operator watches: keys (the whole database's), memory and
        its eviction policy, persistence, and the last write here."""
        pipe = self.client.pipeline(transaction=False)
        pipe.dbsize().info("memory").info("persistence").get(self.last_write_key)
        keys, memory, persistence, last_write = pipe.execute()
        return {
            "keys_in_database": keys,
            "used_memory": memory["used_memory"],
            "maxmemory": memory["maxmemory"],
            "maxmemory_policy": memory["maxmemory_policy"],
            "aof_enabled": bool(persistence["aof_enabled"]),
            "aof_last_write_status": persistence["aof_last_write_status"],
            "aof_last_bgrewrite_status": persistence["aof_last_bgrewrite_status"],
            "rdb_last_bgsave_status": persistence["rdb_last_bgsave_status"],
            "rdb_last_save_time": persistence["rdb_last_save_time"],
            "last_write": float(last_write) if last_write else None,  # epoch seconds, Redis's clock
        }

    def _validated(self, raws, now, what, first=0):
        transactions = []
        for i, raw in enumerate(raws, first):
            try:
                transactions.append(validate(raw, now, self.future_tolerance))
            except InvalidField as e:
                raise InvalidField(e.field, f"{what} {i}: {e}") from None
        return transactions

    def _score_call(self, tx):
        keys = [self.record_key(tx.transaction_id), self.customer_key(tx.customer_id),
                self.terminal_key(tx.terminal_id), self.last_write_key]
        # redis-py sends a float as repr(): the amount comes back exactly as sent
        args = [tx.transaction_id, tx.customer_id, tx.terminal_id, tx.epoch_microseconds, tx.day, tx.amount,
                DELAY, RECORD_TTL, CUSTOMER_TTL, TERMINAL_TTL, *WINDOWS]
        return keys, args

    def _feedback_call(self, transaction_id, fraud):
        checked_label(transaction_id, fraud)
        return [self.record_key(transaction_id), self.last_write_key], [int(fraud), self.terminal_key(""),
                                                                        TERMINAL_TTL]

    def _log_call(self, served):
        keys = [self.scored_log_key, self.last_write_key, *(self.record_key(s.transaction_id) for s in served)]
        args = [self.scored_log_maxlen]
        for s in served:
            args += [s.transaction_id, s.model, s.version, repr(float(s.score)), int(s.scored_at)]
        return keys, args

    def _pipelined(self, calls):
        """Many script calls in one round trip. redis-py's pipelined Script
        asks SCRIPT EXISTS first, a second round trip: these go by sha, and
        when Redis no longer has a script (a restart empties its cache) it is
        loaded and the whole batch sent again, which every call here allows."""
        if not calls:
            return []
        try:
            return self._send(calls)
        except redis.exceptions.NoScriptError:
            for script in {call[0] for call in calls}:
                script.sha = self.client.script_load(script.script)
            return self._send(calls)

    def _send(self, calls):
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return pipe.execute()


def _timestamp(value):
    """A stream id's millisecond bound of a time: a datetime or pandas Timestamp (UTC when naive), or an ISO string."""
    time = pd.Timestamp(value)
    time = time.tz_localize("UTC") if time.tzinfo is None else time.tz_convert("UTC")
    return time.value // 1_000_000


def _identifiers(values):
    """Ids as the records keep them (text), as integers when every one is an
    integer (customer 5 and "5" are the same customer)."""
    text = pd.Series(values, dtype=object)
    if text.str.fullmatch(r"-?[0-9]+").all():
        try:
            return text.astype("int64")
        except OverflowError:  # validate() takes unsigned 64-bit ids too: past int64 they stay text
            pass
    return text


def labelled_window(r, since=None, until=None, limit=None, prefix="fs:", chunk=10_000):
    """What was scored and what turned out fraud: a DataFrame (columns
    WINDOW_COLUMNS) of the transactions the scored log holds, logged between
    `since` and `until` (inclusive; datetimes, UTC when naive, or ISO
    strings; None: no bound), the latest `limit` of them if given, in the
    order they were logged. Per transaction: its id, time, customer and
    terminal, the features it was scored with, TX_FRAUD (its latest label:
    1.0, 0.0, or NaN while none has arrived), and the MODEL, VERSION, SCORE
    (0-1) and SCORED_AT that served it. `r`: a redis client; `prefix` the
    FeatureStore's. A transaction whose record has expired (38 days after
    scoring) is left out: its features and label are gone."""
    key = f"{prefix}scored"
    low = "-" if since is None else str(_timestamp(since))
    high = "+" if until is None else str(_timestamp(until))
    entries, wanted = [], math.inf if limit is None else max(limit, 0)
    # in pages, newest first, so that `limit` reads no more than it keeps
    while len(entries) < wanted:
        page = r.xrevrange(key, high, low, count=int(min(chunk, wanted - len(entries))))
        if not page:
            break
        entries += page
        high = f"({_text(page[-1][0])}"
    entries.reverse()
    rows = []
    for start in range(0, len(entries), chunk):
        part = [{_text(k): _text(v) for k, v in fields.items()} for _, fields in entries[start:start + chunk]]
        pipe = r.pipeline(transaction=False)
        for fields in part:
            pipe.hmget(f"{prefix}tx:{fields['transaction_id']}", "features", "customer", "terminal", "fraud")
        for fields, record in zip(part, pipe.execute()):
            features, customer, terminal, fraud = (None if v is None else _text(v) for v in record)
            if features is None:
                continue
            rows.append({"TRANSACTION_ID": fields["transaction_id"], "TX_DATETIME": int(features.split(" ", 1)[0]),
                         "CUSTOMER_ID": customer, "TERMINAL_ID": terminal, **_features(features),
                         "TX_FRAUD": math.nan if fraud is None else float(fraud), "MODEL": fields["model"],
                         "VERSION": fields["version"], "SCORE": float(fields["score"]),
                         "SCORED_AT": int(fields["scored_at"])})
    frame = pd.DataFrame(rows, columns=list(WINDOW_COLUMNS))
    return frame.assign(
        TX_DATETIME=pd.to_datetime(frame["TX_DATETIME"].astype("int64"), unit="us", utc=True),
        SCORED_AT=pd.to_datetime(frame["SCORED_AT"].astype("int64"), unit="ms", utc=True),
        CUSTOMER_ID=_identifiers(frame["CUSTOMER_ID"].tolist()),
        TERMINAL_ID=_identifiers(frame["TERMINAL_ID"].tolist()), TX_FRAUD=frame["TX_FRAUD"].astype(float))
