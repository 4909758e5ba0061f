"""The scoring service on raw transactions (datalab_scoring with a model that
declares fraudlab's feature set) against a real redis-server of the tests'
own (redisserver.py; no lab): the real tornado app, in this process on a
thread of its own, as server.main_async wires it, a stand-in model behind
model.load (no MLflow, no TensorFlow). Features and scores equal the batch
features of a replayed simulation; retries count and log once; feedback
needs the token, reports unknown ids, and moves the terminal's risk on the
day the delay says; a store that is down or frozen answers 503 within about
the timeout, naming the feature store, and the service recovers by itself;
state survives a Redis restart with appendonly; malformed transactions are
4xx naming the field; a model without the feature set keeps its engineered
input; the scored log (fraudlab.online.labelled_window) joins what was
served with what turned out fraud."""

import asyncio
import json
import math
import statistics
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import requests
from tornado import httpserver, netutil

from datalab_scoring import model as model_mod
from datalab_scoring import server as server_mod
from fraudlab import features, intake, online, simulate
from fraudlab.features import DELAY, FEATURE_SET, FEATURES
from redisserver import RedisServer, server  # noqa: F401 (server: a fixture)

pytestmark = pytest.mark.integration  # its fixtures start a redis-server, not the lab

TOKEN = "feedback-token-for-tests"
MODEL, VERSION = "fraud", "7"


def probability(amount, risk):
    """The stand-in model: grows with the amount and with the terminal's 7-day risk."""
    return 0.5 * (1 - math.exp(-amount / 100)) + 0.5 * risk


def stand_in(model_dir, fields):
    """model.load's pyfunc for the stand-in model (what MLflow's pyfunc would load)."""
    names = [name for name, _ in fields]
    amount, risk = names.index("TX_AMOUNT"), names.index("TERMINAL_ID_RISK_7DAY_WINDOW")
    return lambda rows: [probability(row[amount], row[risk]) for row in rows]


def write_model(directory, feature_set=True):
    """An MLflow model directory, as `datalab deploy` bakes it: MLmodel with a
    signature of the 15 features (and, if asked, the feature set in its
    metadata) and an input example, for the stand-in model."""
    directory.mkdir(parents=True, exist_ok=True)
    inputs = json.dumps([{"type": "double", "name": name, "required": True} for name in FEATURES])
    metadata = f"metadata:\n  {model_mod.FEATURE_SET_KEY}: {FEATURE_SET}\n" if feature_set else ""
    (directory / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: stand_in\n" + metadata
        + f"signature:\n  inputs: '{inputs}'\n"
        + "saved_input_example_info:\n  artifact_path: input_example.json\n  type: dataframe\n"
          "  pandas_orient: split\n")
    (directory / "input_example.json").write_text(json.dumps({"columns": list(FEATURES),
                                                              "data": [[12.5] + [0.0] * (len(FEATURES) - 1)]}))
    return directory


class Service:
    """The scoring app on a free port, on a thread and event loop of its
    own, wired as server.main_async wires it (settings from `env`,
    model.load, open_store, the scored log's flusher)."""

    def __init__(self, model_dir, env):
        self.model_dir, self.env = model_dir, env
        self.http = requests.Session()

    def start(self):
        ready, failed = threading.Event(), []

        def run():
            self.loop = asyncio.new_event_loop()
            try:
                self.loop.run_until_complete(self.serve(ready))
            except BaseException as e:  # noqa: BLE001 (reported to the test below)
                failed.append(e)
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30) and not failed, failed
        return self

    async def serve(self, ready):
        self.state = server_mod.state_from(self.env)
        model = model_mod.load(self.model_dir, MODEL, VERSION, pyfunc=stand_in)
        self.store = server_mod.open_store(model, self.env, self.state.metrics)
        self.state.serve(model, self.store)
        listener = httpserver.HTTPServer(server_mod.app(self.state))
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        listener.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        flusher = asyncio.create_task(self.store.flush_periodically()) if self.store else None
        self.stopping = asyncio.Event()
        ready.set()
        await self.stopping.wait()
        listener.stop()
        if self.store:  # as serve_raw does on SIGTERM
            flusher.cancel()
            await self.store.flush()
            self.store.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)

    def request(self, method, path, body=None, headers=None, raw_body=None):
        headers = {"Content-Type": "application/json", **(headers or {})}
        data = raw_body if raw_body is not None else (None if body is None else json.dumps(body))
        r = self.http.request(method, self.url + path, data=data, headers=headers, timeout=10)
        return r.status_code, r.json() if r.headers["Content-Type"].startswith("application/json") else None, r

    def score(self, body, explain=True):
        code, out, _ = self.request("POST", "/v1/score?explain=1" if explain else "/v1/score", body)
        return code, out

    def feedback(self, body, token=TOKEN):
        return self.request("POST", "/v1/feedback", body, {"Authorization": f"Bearer {token}"} if token else {})[:2]


@pytest.fixture
def service_for(tmp_path):
    """service_for(redis_server, **env) -> a started Service (stopped at the end)."""
    started = []
    (tmp_path / "feedback_token").write_text(TOKEN + "\n")

    def start(redis_server, feature_set=True, **env):
        settings = {"SCORING_FEATURE_STORE_URL": redis_server.url if redis_server else "redis://127.0.0.1:1/0",
                    "SCORING_FEATURE_STORE_PASSWORD_FILE": str(tmp_path / "no-password"),
                    "SCORING_FEEDBACK_TOKEN_FILE": str(tmp_path / "feedback_token"),
                    "SCORING_SCORED_LOG_FLUSH_MS": "50", "SCORING_MAX_BATCH": "1000", **env}
        model_dir = write_model(tmp_path / f"model-{len(started)}", feature_set)
        started.append(Service(model_dir, settings).start())
        return started[-1]

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def service(server, service_for):  # noqa: F811 (server: the fixture)
    """The service on an empty store, with a timeout that a busy test host
    does not reach (Redis stalled past 50 ms by other processes would fail a
    test that is not about faults)."""
    server.client().flushdb()
    return service_for(server, SCORING_FEATURE_STORE_TIMEOUT_MS="1000")


@pytest.fixture
def faulty(server, service_for):  # noqa: F811 (server: the fixture)
    """The service on an empty store, with the default timeout (50 ms)."""
    server.client().flushdb()
    return service_for(server)


def raw(transaction_id, customer_id=1, terminal_id=1, amount=10.0, when=None):
    when = when or datetime.now(timezone.utc) - timedelta(minutes=1)
    return {"transaction_id": transaction_id, "customer_id": customer_id, "terminal_id": terminal_id,
            "amount": amount, "datetime": when.isoformat() if isinstance(when, datetime) else when}


def logged(client, count, timeout=5):
    """The labelled window once it holds `count` transactions (the flusher logs within 50 ms here)."""
    deadline = time.monotonic() + timeout
    while True:
        window = online.labelled_window(client)
        if len(window) >= count or time.monotonic() > deadline:
            return window
        time.sleep(0.05)


def test_raw_transactions_score_with_the_batch_features_and_are_logged_with_their_labels(service, server):  # noqa: F811
    _, _, tx = simulate.simulate(n_customers=100, n_terminals=40, nb_days=14, start_date="2018-04-01", radius=20,
                                 seed=3)
    batch = features.add_features(tx)
    raws, days = intake.raw_transactions(tx), tx["TX_TIME_DAYS"].to_numpy()
    results = []
    for day in range(days.max() + 1):
        labelled = tx[days == day - DELAY]  # before day d, the labels of day d - DELAY arrive
        if len(labelled):
            code, out = service.feedback({"labels": [{"transaction_id": str(t), "fraud": bool(f)} for t, f in zip(
                labelled["TRANSACTION_ID"], labelled["TX_FRAUD"])]})
            assert code == 200 and out["recorded"] == len(labelled), out
        today = np.flatnonzero(days == day)
        for start in range(0, len(today), 100):
            code, out = service.score([raws[i] for i in today[start:start + 100]])
            assert code == 200, out
            results += out["results"]
    online_features = np.array([[r["features"][name] for name in FEATURES] for r in results])
    worst = float(np.abs(online_features - batch[FEATURES].to_numpy(dtype=float)).max())
    print(f"\n{len(tx)} transactions scored through /v1/score; worst |served - batch| feature: {worst:.3g}")
    assert worst <= 1e-6
    expected = [round(100 * probability(a, r), 2) for a, r in zip(batch["TX_AMOUNT"],
                                                                   batch["TERMINAL_ID_RISK_7DAY_WINDOW"])]
    assert [r["score"] for r in results] == pytest.approx(expected, abs=0.011)
    assert (batch["TERMINAL_ID_RISK_7DAY_WINDOW"] > 0).sum() > 50  # the labels did reach the features

    window = logged(server.client(), len(tx))
    assert list(window.columns) == list(online.WINDOW_COLUMNS) and len(window) == len(tx)
    assert window["TRANSACTION_ID"].tolist() == [str(t) for t in tx["TRANSACTION_ID"]]
    assert float(np.abs(window[FEATURES].to_numpy(dtype=float) - batch[FEATURES].to_numpy(dtype=float)).max()) <= 1e-6
    assert window["CUSTOMER_ID"].tolist() == tx["CUSTOMER_ID"].tolist()  # integer ids come back as integers
    assert (window["TX_DATETIME"] == pd.to_datetime(tx["TX_DATETIME"], utc=True)).all()
    labelled = days <= days.max() - DELAY  # the replay sent these labels
    assert (window["TX_FRAUD"][labelled].to_numpy() == tx["TX_FRAUD"][labelled].to_numpy()).all()
    assert window["TX_FRAUD"][~labelled].isna().all()
    assert set(window["MODEL"]) == {MODEL} and set(window["VERSION"]) == {VERSION}
    assert (window["SCORE"] * 100).tolist() == pytest.approx(expected, abs=0.006)


def test_a_retry_is_answered_alike_counted_once_and_logged_once(service, server):  # noqa: F811
    tx = raw("retry-1", customer_id="C-1", terminal_id="T-1", amount=42.0)
    first = service.score(tx)
    assert first[0] == 200
    assert service.score(tx) == first
    code, out = service.score([tx, tx])
    assert code == 200 and out["results"] == [first[1], first[1]]
    client = server.client()
    assert client.zcard("fs:c:C-1") == 1
    assert sum(int(v) for k, v in client.hgetall("fs:t:T-1").items() if k.startswith(b"n")) == 1
    window = logged(client, 1)
    time.sleep(0.2)  # a few more flushes: nothing more to log
    assert len(online.labelled_window(client)) == len(window) == 1 and client.xlen("fs:scored") == 1
    assert window["SCORE"][0] * 100 == pytest.approx(first[1]["score"], abs=0.006)


def test_feedback_needs_the_token_and_reports_each_label(service, service_for, server, tmp_path):  # noqa: F811
    assert service.score(raw("fb-1"))[0] == 200
    label = {"transaction_id": "fb-1", "fraud": True}
    code, out, response = service.request("POST", "/v1/feedback", label)
    assert code == 401 and "Authorization: Bearer" in out["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert service.feedback(label, token="not-the-token") == (401, {"error": "the feedback token is not valid"})
    code, out, _ = service.request("POST", "/v1/feedback", label, {"Authorization": f"Basic {TOKEN}"})
    assert code == 401 and "must be 'Bearer" in out["error"]
    assert service.feedback(label) == (200, {"transaction_id": "fb-1", "result": "recorded"})
    assert service.feedback(label) == (200, {"transaction_id": "fb-1", "result": "unchanged"})
    code, out = service.feedback({"transaction_id": "never-scored", "fraud": True})
    assert code == 404 and out["result"] == "unknown" and "never-scored" in out["error"]
    code, out = service.feedback([{"transaction_id": "never-scored", "fraud": False},
                                  {"transaction_id": "fb-1", "fraud": False}])
    assert code == 200 and out["results"] == [{"transaction_id": "never-scored", "result": "unknown"},
                                              {"transaction_id": "fb-1", "result": "recorded"}]
    assert (out["recorded"], out["unchanged"], out["unknown"]) == (1, 0, 1)
    for body, field, index, says in [
        ({"transaction_id": 5, "fraud": True}, "transaction_id", None, "'transaction_id' must be a non-empty string"),
        ({"transaction_id": "fb-1", "fraud": "yes"}, "fraud", None, "'fraud' must be true or false, got 'yes'"),
        ({"transaction_id": "fb-1"}, "fraud", None, "missing field(s): fraud"),
        ({"transaction_id": "fb-1", "fraud": True, "amount": 3}, "amount", None, "unknown field(s): 'amount'"),
        ([label, {"transaction_id": "fb-1", "fraud": 1}], "fraud", 1, "label 1: 'fraud' must be true or false"),
        ({"labels": [label, None]}, None, 1, "label 1: a label must be an object"),
        ([], None, None, "no label to record: the list is empty"),
        ("yes", None, None, "request body must be a JSON object (one label) or a list of them"),
    ]:
        code, out = service.feedback(body)
        assert (code, out.get("field"), out.get("index")) == (422, field, index) and says in out["error"], (body, out)
    code, out, _ = service.request("POST", "/v1/feedback", raw_body="{", headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 400 and "not valid JSON" in out["error"]
    metrics = service.request("GET", "/metrics")[2].text
    assert 'scoring_feedback_requests_total{code="401"} 3' in metrics
    assert 'scoring_feedback_labels_total{result="unknown"} 2' in metrics

    unconfigured = service_for(server, SCORING_FEEDBACK_TOKEN_FILE=str(tmp_path / "absent"))
    code, out = unconfigured.feedback(label)
    assert code == 503 and "feedback is not configured: no token file at" in out["error"]


def test_a_label_moves_the_terminals_risk_on_the_day_the_delay_says(service):
    day = (datetime.now(timezone.utc) - timedelta(days=20)).replace(hour=12, minute=0, second=0, microsecond=0)
    assert service.score(raw("risky", customer_id="c0", terminal_id="T-risk", when=day))[0] == 200
    assert service.feedback({"transaction_id": "risky", "fraud": True})[0] == 200

    def probe(days, name):  # another customer at the same terminal, `days` later
        code, out = service.score(raw(name, customer_id=name, terminal_id="T-risk", amount=50.0,
                                      when=day + timedelta(days=days)))
        assert code == 200, out
        return out

    on_time = probe(DELAY, "p1")["features"]  # day + DELAY reads the days before `day`
    assert on_time["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0 and on_time["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0
    after = probe(DELAY + 1, "p2")
    assert [after["features"][f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] for w in features.WINDOWS] == [1.0, 1.0, 1.0]
    assert after["score"] == round(100 * probability(50.0, 1.0), 2)
    assert service.feedback({"transaction_id": "risky", "fraud": False})[1]["result"] == "recorded"
    undone = probe(DELAY + 1, "p3")
    assert undone["features"]["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0 and undone["score"] < after["score"]


def scored(service, tx, tries=3):
    """A scoring answer, a 503 retried as the edge would (with a 50 ms timeout, a test host busy with other
    work can stall Redis past it now and then)."""
    for _ in range(tries):
        code, out = service.score(tx)
        if code != 503:
            return code, out
        time.sleep(0.05)
    return code, out


def timed_503s(service, n=9):
    """Seconds each of `n` scoring requests took, each a 503 naming the feature store."""
    took = []
    for i in range(n):
        started = time.perf_counter()
        code, out = service.score(raw(f"down-{uuid.uuid4().hex}"))
        took.append(time.perf_counter() - started)
        assert code == 503 and out["error"].startswith("feature store unreachable"), out
    return took


def recovered(service, timeout=5):
    """Seconds until a scoring request and /readyz both answer 200 again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if service.score(raw(f"up-{uuid.uuid4().hex}"))[0] == 200 and service.request("GET", "/readyz")[0] == 200:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"the service did not recover within {timeout} s of the store's return")


def test_a_store_that_is_down_answers_503_at_once_and_the_service_recovers_by_itself(faulty, server):  # noqa: F811
    service = faulty
    assert scored(service, raw("before"))[0] == 200
    assert service.request("GET", "/readyz")[0] == 200
    server.stop()
    try:
        took = timed_503s(service)
        code, out, _ = service.request("GET", "/readyz")
        assert code == 503 and out["error"].startswith("feature store unreachable")
        assert service.request("GET", "/startedz")[0] == 200  # Swarm's health check: the model is fine
    finally:
        server.start()
    back = recovered(service)
    print(f"\nstore down: 503 in median {1000 * statistics.median(took):.1f} ms, "
          f"max {1000 * max(took):.1f} ms over {len(took)} requests; recovered {back:.2f} s after it returned")
    assert statistics.median(took) <= 0.050 and max(took) <= 0.5
    metrics = service.request("GET", "/metrics")[2].text
    assert 'scoring_feature_store_errors_total{call="score",kind="unreachable"}' in metrics
    assert 'scoring_feature_store_seconds_count{call="score"}' in metrics


def test_a_frozen_store_answers_503_within_the_timeout(faulty, server):  # noqa: F811
    service = faulty
    tx = raw("frozen-retry", customer_id="c-frozen")
    assert scored(service, raw("warm"))[0] == 200
    server.pause()  # connections are accepted, nothing is answered: a read timeout each time
    try:
        took = timed_503s(service, n=7)
        code, out, _ = service.request("GET", "/readyz")
        assert code == 503 and "within 50 ms" in out["error"]
        code, out = service.score(tx)  # sent, maybe executed once the store wakes up: not answered
        assert code == 503
    finally:
        server.resume()
    back = recovered(service)
    print(f"\nstore frozen: 503 in median {1000 * statistics.median(took):.1f} ms, max {1000 * max(took):.1f} ms "
          f"(timeout 50 ms); recovered {back:.2f} s after it woke up")
    assert statistics.median(took) <= 0.050 + 0.025 and max(took) <= 0.5
    code, out = scored(service, tx)  # the client's retry: counted once, whether or not the first was
    assert code == 200 and out["features"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert server.client().zcard("fs:c:c-frozen") == 1


def test_state_survives_a_redis_restart_with_appendonly_and_a_password(service_for, tmp_path):
    store = RedisServer(tmp_path, "--save", "", "--appendonly", "yes", password="s3cret")
    store.start()
    try:
        (tmp_path / "featurestore_password").write_text("s3cret\n")
        service = service_for(store, SCORING_FEATURE_STORE_PASSWORD_FILE=str(tmp_path / "featurestore_password"))
        day = (datetime.now(timezone.utc) - timedelta(days=10)).replace(hour=9, minute=0, second=0, microsecond=0)
        tx = raw("kept", customer_id=3, terminal_id=9, amount=80.0, when=day)
        code, first = service.score(tx)
        assert code == 200 and service.feedback({"transaction_id": "kept", "fraud": True})[0] == 200
        assert len(logged(store.client(), 1)) == 1
        store.stop()
        store.start()  # same directory and port: the append-only file is read back; the scripts are gone
        assert recovered(service) < 5
        assert service.score(tx) == (200, first)  # answered from its record, not counted again
        code, probe = service.score(raw("probe", customer_id=4, terminal_id=9, when=day + timedelta(days=DELAY + 1)))
        assert code == 200 and probe["features"]["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0
        window = online.labelled_window(store.client())
        assert window.set_index("TRANSACTION_ID").loc["kept", "TX_FRAUD"] == 1.0

        wrong = tmp_path / "wrong_password"
        wrong.write_text("not-it")
        refused = service_for(store, SCORING_FEATURE_STORE_PASSWORD_FILE=str(wrong))
        code, out = refused.score(raw("x"))
        assert code == 503 and out["error"].startswith("feature store unreachable") and "password" in out["error"]
    finally:
        store.stop()


@pytest.mark.parametrize("body, field, index, says", [
    (raw("m", customer_id=1.5), "customer_id", None, "'customer_id' must be an integer of at most 64 bits or"),
    (raw("m", when="yesterday"), "datetime", None, "'datetime' is not an ISO-8601 date and time"),
    (raw("m", amount=-1), "amount", None, "'amount' must be a finite number >= 0, got -1"),
    (raw("m", amount=1e39), "amount", None, "'amount' is out of range: 1e+39"),
    (raw("m", when=datetime.now(timezone.utc) + timedelta(hours=1)), "datetime", None, "ahead of this server's clock"),
    ({k: v for k, v in raw("m").items() if k != "terminal_id"}, "terminal_id", None, "missing field(s): terminal_id"),
    ({**raw("m"), "merchant": "x"}, "merchant", None, "unknown field(s): 'merchant'"),
    ({"TX_AMOUNT": 3.0}, "transaction_id", None, "missing field(s): transaction_id"),
    ([raw("ok-1"), raw("ok-2"), raw("m", terminal_id=None)], "terminal_id", 2, "transaction 2: 'terminal_id' must be"),
    ({"transactions": [raw("ok"), 7]}, None, 1, "transaction 1: a transaction must be an object of fields, got int"),
    ([], None, None, "no transaction to score: the list is empty"),
])
def test_a_malformed_raw_transaction_is_a_4xx_naming_the_field_and_counts_nothing(
        service, server, body, field, index, says):  # noqa: F811
    code, out = service.score(body)
    assert (code, out.get("field"), out.get("index")) == (422, field, index) and says in out["error"], out
    assert server.client().dbsize() == 0  # nothing was scored, not even the valid ones of the list


def test_explain_and_the_schema_of_raw_transactions(service):
    code, out, _ = service.request("POST", "/v1/score?explain=maybe", raw("e"))
    assert code == 400 and out["field"] == "explain"
    code, out = service.score(raw("e"), explain=False)
    assert code == 200 and "features" not in out and set(out) == {"score", "decision", "model", "version"}
    schema = service.request("GET", "/v1/schema")[1]
    assert [f["name"] for f in schema["fields"]] == list(intake.FIELDS) and schema["feature_set"] == FEATURE_SET
    intake.validate(schema["example"], datetime.now(timezone.utc))
    assert schema["feedback"]["url"] == "/v1/feedback" and "Bearer" in schema["feedback"]["auth"]
    assert schema["feedback"]["configured"] is True
    assert service.score(schema["request"]["many"])[0] == 200
    assert service.request("GET", "/readyz")[1]["input"] == "raw transactions"


def test_a_model_without_the_feature_set_keeps_its_engineered_input(service_for):
    service = service_for(None, feature_set=False)  # its store URL is a closed port: never called
    row = dict.fromkeys(FEATURES, 0.0) | {"TX_AMOUNT": 100.0, "TERMINAL_ID_RISK_7DAY_WINDOW": 0.5}
    code, out = service.score(row)
    assert code == 200 and out["score"] == round(100 * probability(100.0, 0.5), 2) and out["features"] == row
    code, out = service.score(raw("r"))
    assert code == 422 and out["error"].startswith("missing field(s): TX_AMOUNT")
    code, out = service.feedback({"transaction_id": "r", "fraud": True})
    assert code == 409 and model_mod.FEATURE_SET_KEY in out["error"]
    assert service.request("GET", "/readyz")[1]["input"] == "features"
    assert [f["name"] for f in service.request("GET", "/v1/schema")[1]["fields"]] == list(FEATURES)


def test_the_labelled_window(server):  # noqa: F811
    client = server.client()
    client.flushdb()
    store = online.FeatureStore(client)
    now = datetime.now(timezone.utc)
    txs = [intake.validate(raw(f"w-{i}", customer_id=i % 3, terminal_id="T-w", amount=float(i),
                               when=now - timedelta(minutes=10 - i)), now) for i in range(6)]
    store.score_and_log(txs)
    served = [intake.Served(tx.transaction_id, MODEL, VERSION, i / 10, int(time.time() * 1000))
              for i, tx in enumerate(txs)]
    assert store.log_scored(served[:4]) == 4
    time.sleep(0.01)  # the log's ids are milliseconds: `middle` is in none of them
    middle = datetime.now(timezone.utc)
    time.sleep(0.01)
    assert store.score_and_log([], served) == ([], 2)  # the first four were logged already
    assert store.log_scored([intake.Served("never-scored", MODEL, VERSION, 0.5, 0)]) == 0
    assert not client.exists("fs:tx:never-scored")  # no record is made up for it
    store.feedback_many([("w-0", True), ("w-1", False)])
    window = online.labelled_window(client)
    assert window["TRANSACTION_ID"].tolist() == [f"w-{i}" for i in range(6)]
    assert window["TX_FRAUD"].tolist()[:2] == [1.0, 0.0] and window["TX_FRAUD"][2:].isna().all()
    assert window["SCORE"].tolist() == [i / 10 for i in range(6)] and window["TX_AMOUNT"].tolist() == list(
        map(float, range(6)))
    assert window["CUSTOMER_ID"].dtype == "int64" and window["TERMINAL_ID"].tolist() == ["T-w"] * 6
    assert online.labelled_window(client, until=middle)["TRANSACTION_ID"].tolist() == ["w-0", "w-1", "w-2", "w-3"]
    assert online.labelled_window(client, since=middle)["TRANSACTION_ID"].tolist() == ["w-4", "w-5"]
    assert online.labelled_window(client, limit=3, chunk=2)["TRANSACTION_ID"].tolist() == ["w-3", "w-4", "w-5"]
    assert online.labelled_window(client, limit=0).empty
    client.delete("fs:tx:w-5")  # its record expired
    assert online.labelled_window(client)["TRANSACTION_ID"].tolist()[-1] == "w-4"


def test_the_scored_log_keeps_about_its_length(server):  # noqa: F811
    client = server.client()
    client.flushdb()
    store = online.FeatureStore(client, scored_log_maxlen=100)
    now = datetime.now(timezone.utc)
    txs = [intake.validate(raw(f"n-{i}", customer_id=i), now) for i in range(1000)]
    store.score_and_log(txs)
    assert store.log_scored([intake.Served(tx.transaction_id, MODEL, VERSION, 0.5, 0) for tx in txs]) == 1000
    # MAXLEN ~ trims whole nodes of the stream (100 entries each by default): about the length asked
    assert 100 <= client.xlen("fs:scored") < 300
    assert online.labelled_window(client)["TRANSACTION_ID"].iloc[-1] == "n-999"
