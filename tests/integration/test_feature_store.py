"""The online feature store (fraudlab.online) against a real redis-server that
this module starts on a free port (redisserver.py: Debian's redis-server,
which `make test` installs; no lab needed): online features equal batch
features on a replayed simulation and at the windows' edges, retries count
once, labels count from the day the delay says, state expires and survives a
restart."""

import time
import uuid

import numpy as np
import pandas as pd
import pytest

from fraudlab import features, intake, online, simulate
from fraudlab.features import DELAY, FEATURES
from redisserver import RedisServer, server  # noqa: F401 (server: a fixture)

pytestmark = pytest.mark.integration  # its fixtures start a redis-server, not the lab


@pytest.fixture
def store(server):
    return online.FeatureStore(server.client(), prefix=f"test-{uuid.uuid4().hex[:8]}:")


@pytest.fixture(scope="module")
def simulated():
    # fewer terminals, each in reach of more customers (radius 20): busier terminals, more frauds per window.
    # The simulation starts at a midnight: its TX_TIME_DAYS are then the online day numbers less a constant.
    _, _, tx = simulate.simulate(n_customers=300, n_terminals=100, nb_days=40, start_date="2018-04-01",
                                 radius=20, seed=3)
    return tx, features.add_features(tx)


def replay(store, tx, first_day=0, batch=500):
    """Score tx's transactions from `first_day` on, in time order, `batch` per round trip; before each day d
    the labels of day d - DELAY arrive (the terminal windows of day d read days before d - DELAY)."""
    raws, days = intake.raw_transactions(tx), tx["TX_TIME_DAYS"].to_numpy()
    rows = []
    for day in range(first_day, days.max() + 1):
        labelled = tx[days == day - DELAY]
        if day - DELAY >= first_day:
            store.feedback_many(zip(labelled["TRANSACTION_ID"].astype(str).tolist(),
                                    (labelled["TX_FRAUD"] == 1).tolist()))
        today = np.flatnonzero(days == day)
        for start in range(0, len(today), batch):
            rows += store.score_features([raws[i] for i in today[start:start + batch]])
    return rows


def worst_difference(rows, batch):
    return float(np.abs(np.array([[row[name] for name in FEATURES] for row in rows])
                        - batch[FEATURES].to_numpy(dtype=float)).max())


def test_replayed_simulation_matches_batch_features(store, simulated):
    tx, batch = simulated
    started = time.monotonic()
    rows = replay(store, tx)
    seconds = time.monotonic() - started
    difference = worst_difference(rows, batch)
    print(f"\n{len(rows):,} transactions replayed in {seconds:.1f} s; worst |online - batch| over all "
          f"{len(FEATURES)} features: {difference:.3g}")
    assert difference <= 1e-6
    # the replay went through what matters: frauds in terminal windows, customers with history
    assert (batch["TERMINAL_ID_RISK_7DAY_WINDOW"] > 0).mean() > 0.05
    assert (batch["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] > 10).any()
    matrix = online.feature_matrix(rows)
    assert matrix.dtype == np.float32 and matrix.shape == (len(tx), len(FEATURES))


def test_windows_edges_and_ties_match_batch(store):
    """Transactions exactly 1, 7 and 30 days apart (outside the window: it is (t - w, t]), two at the same
    second (the first does not see the second), and terminal days at the delayed windows' edges."""
    at = pd.Timestamp("2018-04-01")
    rows = [  # (time, customer, terminal, amount, fraud)
        (at + pd.Timedelta(hours=10), 0, 0, 10.0, 1),
        (at + pd.Timedelta(days=1, hours=10), 0, 1, 20.5, 0),
        (at + pd.Timedelta(days=1, hours=10), 0, 1, 33.25, 0),
        (at + pd.Timedelta(days=1, hours=10, seconds=1), 0, 0, 0.0, 0),
        (at + pd.Timedelta(days=7, hours=10), 0, 0, 7.0, 0),
        (at + pd.Timedelta(days=8, hours=3), 1, 0, 5.0, 0),
        (at + pd.Timedelta(days=30, hours=10), 0, 1, 99.99, 0),
        (at + pd.Timedelta(days=37, hours=23), 1, 0, 1.0, 0),
        (at + pd.Timedelta(days=38), 1, 0, 2.0, 0),
    ]
    tx = pd.DataFrame(rows, columns=["TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"])
    tx.insert(0, "TRANSACTION_ID", range(len(tx)))
    tx["TX_TIME_DAYS"] = (tx["TX_DATETIME"] - at).dt.days
    batch = features.add_features(tx)
    online_rows = replay(store, tx, batch=1)
    assert worst_difference(online_rows, batch) <= 1e-6
    # what the edges mean, read from the batch definition that both follow
    assert batch["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist()[:4] == [1, 1, 2, 3]
    # terminal 0 has transactions on days 0 (a fraud), 1, 7 and 8: day 0 is in day 37's 30-day window, not 38's
    assert batch["TERMINAL_ID_NB_TX_30DAY_WINDOW"].tolist()[-2:] == [4, 3]
    assert batch["TERMINAL_ID_RISK_30DAY_WINDOW"].tolist()[-2:] == [0.25, 0]


def counted(server, store):
    """What the store has counted: every customer's transactions and every terminal's days."""
    client = server.client()
    return {key: client.zrange(key, 0, -1) if client.type(key) == b"zset" else client.hgetall(key)
            for key in client.scan_iter(f"{store.prefix}[ct]:*")}


def test_backfill_then_score_as_batch(store, server, simulated):
    tx, batch = simulated
    last = tx["TX_TIME_DAYS"].max()
    history = tx[tx["TX_TIME_DAYS"] < last]
    calls = []
    loaded = store.backfill(history, chunk=2_000, progress=lambda done, total: calls.append((done, total)))
    # only the days a later window reads: the last 30 + 7 of the history
    assert loaded == (history["TX_TIME_DAYS"] >= last - 1 - 37).sum() < len(history)
    assert calls[-1] == (loaded, loaded) and len(calls) == -(-loaded // 2_000)
    rows = replay(store, tx[tx["TX_TIME_DAYS"] == last], first_day=last)
    assert worst_difference(rows, batch[tx["TX_TIME_DAYS"] == last]) <= 1e-6
    state = counted(server, store)
    assert store.backfill(history) == loaded and counted(server, store) == state  # again: nothing counted twice


def raw(transaction_id, customer_id=1, terminal_id=1, amount=10.0, when="2024-01-01T12:00:00"):
    return {"transaction_id": transaction_id, "customer_id": customer_id, "terminal_id": terminal_id,
            "amount": amount, "datetime": when}


def test_a_retry_is_answered_from_the_record_and_counted_once(store, server):
    first = store.score(raw("a", amount=12.5))
    assert store.score(raw("a", amount=12.5)) == first
    assert store.score_features([raw("a", amount=12.5), raw("a", amount=12.5)]) == [first, first]
    client = server.client()
    assert client.zcard(store.customer_key(1)) == 1
    assert client.hget(store.terminal_key(1), f"n{intake.day_number(pd.Timestamp('2024-01-01', tz='UTC'))}") == b"1"
    second = store.score(raw("b", amount=7.5, when="2024-01-01T13:00:00"))
    assert second["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    assert second["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx(10.0)


def test_a_label_counts_from_the_day_the_delay_says_and_flipping_it_back_undoes_it(store):
    day = pd.Timestamp("2024-01-01T12:00:00")
    store.score(raw("fraud", customer_id="c0", terminal_id="T", when=day.isoformat()))

    def probe(days, name):  # another customer's transaction at the same terminal, `days` later
        return store.score(raw(name, customer_id=name, terminal_id="T",
                               when=(day + pd.Timedelta(days=days)).isoformat()))

    before = probe(DELAY + 1, "p1")
    assert before["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1 and before["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0
    assert store.feedback("fraud", True) is intake.Feedback.RECORDED
    on_time = probe(DELAY, "p2")  # day + DELAY reads days before day: not yet
    assert on_time["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0 and on_time["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0
    after = probe(DELAY + 1, "p3")  # reads day: the fraud counts
    assert [after[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] for w in features.WINDOWS] == [1.0, 1.0, 1.0]
    assert store.feedback("fraud", True) is intake.Feedback.UNCHANGED
    assert probe(DELAY + 1, "p4")["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0  # not counted twice
    assert store.feedback("fraud", False) is intake.Feedback.RECORDED
    undone = probe(DELAY + 1, "p5")
    assert undone["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1 and undone["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0
    assert store.feedback_many([("fraud", True), ("fraud", True)]) == [intake.Feedback.RECORDED,
                                                                        intake.Feedback.UNCHANGED]


def test_a_label_for_an_unknown_transaction_is_reported(store, server):
    assert store.feedback("never-scored", True) is intake.Feedback.UNKNOWN
    assert not server.client().keys(f"{store.prefix}*")  # nothing written
    with pytest.raises(intake.InvalidField) as refused:
        store.feedback("never-scored", "yes")
    assert refused.value.field == "fraud"


@pytest.mark.parametrize("bad, field", [
    ({"amount": -1.0}, "amount"), ({"amount": float("nan")}, "amount"), ({"customer_id": 1.5}, "customer_id"),
    ({"terminal_id": None}, "terminal_id"), ({"datetime": "yesterday"}, "datetime"),
    ({"transaction_id": ""}, "transaction_id"), ({"merchant": "x"}, "merchant"),
])
def test_an_invalid_transaction_refuses_its_batch_and_names_the_field(store, server, bad, field):
    with pytest.raises(intake.InvalidField) as refused:
        store.score_features([raw("good"), {**raw("bad"), **bad}])
    assert refused.value.field == field and "transaction 1" in str(refused.value) and field in str(refused.value)
    assert not server.client().keys(f"{store.prefix}*")  # the valid one was not scored either


def test_every_key_expires(store, server):
    store.score(raw("a", customer_id=5, terminal_id=6))
    store.feedback("a", True)
    client = server.client()
    assert 0 < client.ttl(store.customer_key(5)) <= online.CUSTOMER_TTL
    assert 0 < client.ttl(store.terminal_key(6)) <= online.TERMINAL_TTL
    assert 0 < client.ttl(store.record_key("a")) <= online.RECORD_TTL
    assert online.CUSTOMER_TTL == 30 * 86400 and online.TERMINAL_TTL == online.RECORD_TTL == 38 * 86400


def test_status_reports_memory_persistence_and_the_last_write(store):
    store.score(raw("a"))
    status = store.status()
    assert status["keys_in_database"] >= 4 and status["used_memory"] > 0
    assert status["maxmemory_policy"] == "noeviction" and status["aof_enabled"] is False
    assert abs(status["last_write"] - time.time()) < 60


def test_state_survives_a_restart_with_appendonly(tmp_path):
    server = RedisServer(tmp_path, "--save", "", "--appendonly", "yes")
    server.start()
    try:
        store = online.FeatureStore(server.client())
        first = store.score(raw("a", terminal_id=9, when="2024-01-01T12:00:00"))
        assert store.feedback("a", True) is intake.Feedback.RECORDED
        assert store.status()["aof_enabled"] is True
        server.stop()
        server.start()  # same directory and port: the append-only file is read back; the scripts are gone
        probe = raw("b", customer_id=2, terminal_id=9, when="2024-01-09T12:00:00")
        again, seen = store.score_features([raw("a", terminal_id=9), probe])  # pipelined: scripts reloaded
        assert again == first and seen["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0
        server.stop()
        server.start()
        assert store.score(raw("a", terminal_id=9)) == first  # one call: reloaded too
        assert store.feedback("a", True) is intake.Feedback.UNCHANGED
        assert server.client().ttl(store.terminal_key(9)) > 0
    finally:
        server.stop()
