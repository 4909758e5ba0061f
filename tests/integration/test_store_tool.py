"""`datalab features status|backfill` as they run next to the store
(datalab_scoring.store_tool), against a real redis-server with a password
(redisserver.py; no lab): a backfill from a CSV of history makes the next
transaction's features those batch gives it; status shows keys, memory,
policy, persistence and the last write; a history missing a column is
refused by name and loads nothing."""

import json

import pytest

from datalab_scoring import store_tool
from fraudlab import features, online, simulate
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
    found = online.FeatureStore(server.client()).score(online.raw_transactions(today.head(1))[0])
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
