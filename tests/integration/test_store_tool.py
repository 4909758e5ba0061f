"""`datalab features status|backfill` as they run next to the store
(datalab_scoring.store_tool), against a real redis-server with a password
(redisserver.py; no lab): a backfill from a CSV of history makes the next
transaction's features those batch gives it; status shows keys, memory,
policy, persistence and the last write; a history missing a column is
refused by name and loads nothing."""

import json

import pytest

from datalab_scoring import store_tool
from fraudlab import features, intake, online, simulate
from redisserver import RedisServer

pytestmark = pytest.mark.integration  # a redis-server of its own, not the lab


@pytest.fixture
def store(tmp_path, monkeypatch):
    server = RedisServer(tmp_path, "--save", "", "--appendonly", "yes", password="store-password")
    server.start()
    (tmp_path / "password").write_text("store-password\n")
    monkeypatch.setenv("SCORING_FEATURE_STORE_URL", server.url)
    yield server, ["--password-file", str(tmp_path / "password")]
    server.stop()


def history(days=40):
    _, _, tx = simulate.simulate(60, 30, days, "2025-01-01", seed=3)
    return features.add_features(tx, delay=features.DELAY)


def test_a_backfilled_store_scores_the_next_transaction_as_batch_does(store, tmp_path, capsys):
    server, password = store
    done = history()
    last_day = done["TX_TIME_DAYS"].max()
    past, today = done[done["TX_TIME_DAYS"] < last_day], done[done["TX_TIME_DAYS"] == last_day]
    past.to_csv(tmp_path / "history.csv", index=False)
    assert store_tool.main([*password, "backfill", str(tmp_path / "history.csv")]) == 0
    assert "transactions loaded" in capsys.readouterr().out

    first = today.iloc[0]
    found = online.FeatureStore(server.client()).score(intake.raw_transactions(today.head(1))[0])
    assert max(abs(found[name] - float(first[name])) for name in features.FEATURES) < 1e-6

    assert store_tool.main([*password, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["keys_in_database"] > len(done["CUSTOMER_ID"].unique())
    assert status["aof_enabled"] and status["last_write"] is not None
    assert store_tool.main([*password, "status"]) == 0
    shown = capsys.readouterr().out
    assert "append-only file" in shown and "keys" in shown


def test_a_history_without_a_column_is_refused_by_name_and_loads_nothing(store, tmp_path, capsys):
    server, password = store
    history().drop(columns=["TX_FRAUD"]).to_csv(tmp_path / "unlabelled.csv", index=False)
    assert store_tool.main([*password, "backfill", str(tmp_path / "unlabelled.csv")]) == 2
    assert "TX_FRAUD" in capsys.readouterr().err
    assert server.client().dbsize() == 0


def test_the_window_holds_the_labelled_transactions_scored_lately_with_their_features(store, tmp_path, capsys):
    """What the promotion gate judges on (store_tool window, run by the controller)."""
    import time

    import pandas as pd

    server, password = store
    fs = online.FeatureStore(server.client())
    raws = intake.raw_transactions(history(days=2).head(40))
    found = fs.score_features(raws)
    now = int(time.time() * 1000)
    fs.log_scored([intake.Served(raw["transaction_id"], "fraud", "3", 0.25, now) for raw in raws])
    labels = [(raw["transaction_id"], i % 10 == 0) for i, raw in enumerate(raws[:30])]
    fs.feedback_many(labels)
    assert store_tool.main([*password, "window", "--days", "7", "--out", str(tmp_path / "w.parquet"),
                            "--features-out", str(tmp_path / "f.parquet")]) == 0
    facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (facts["scored"], facts["labelled"], facts["frauds"]) == (40, 30, 3)
    window = pd.read_parquet(tmp_path / "w.parquet")
    assert list(window.columns) == list(online.WINDOW_COLUMNS)
    # what a model under judgement is given: the same rows' features, not the labels or production's scores
    given = pd.read_parquet(tmp_path / "f.parquet")
    assert list(given.columns) == facts["features"] == list(features.FEATURES)
    assert given.equals(window[list(features.FEATURES)])
    assert window["TRANSACTION_ID"].tolist() == [raw["transaction_id"] for raw in raws[:30]]
    assert window["TX_FRAUD"].tolist() == [float(fraud) for _, fraud in labels]
    assert window["TX_AMOUNT"].tolist() == pytest.approx([f["TX_AMOUNT"] for f in found[:30]])
    # nothing scored in the last hour: an empty window, not an error
    assert store_tool.main([*password, "window", "--days", "0", "--out", str(tmp_path / "none.parquet")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["labelled"] == 0
    # --limit: the latest scored so many at most
    assert store_tool.main([*password, "window", "--days", "7", "--limit", "10", "--out",
                            str(tmp_path / "w10.parquet")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scored"] == 10
