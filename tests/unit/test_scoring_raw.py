"""The scoring service's raw-transaction pieces without Redis: a model's
declared feature set, raw transactions and labels checked field by field
(each refusal naming the field and, in a list, the item), the feature
store's settings and connection, the feedback token, the link's error
handling and its scored-log buffer, and the API's answers with a stand-in
feature store. The real one: tests/integration/test_scoring_features.py
(test modules' basenames are unique across unit/ and integration/)."""

import asyncio
import json
from datetime import datetime, timezone

import pytest
import redis
from tornado.testing import AsyncHTTPTestCase

from datalab_scoring import featurestore, model, server
from datalab_scoring.metrics import Metrics
from datalab_scoring.validate import RequestError, parse_labels, parse_raw
from fraudlab import intake
from fraudlab.features import FEATURE_SET, FEATURES

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
RAW = {"transaction_id": "t-1", "customer_id": 17, "terminal_id": "T-9", "amount": 12.5,
       "datetime": "2024-06-01T11:59:00Z"}
SIGNATURE = [(name, "double") for name in FEATURES]


def body(value):
    return json.dumps(value).encode()


# --- the model's feature set -------------------------------------------------------------------------------

def test_the_feature_set_is_read_from_the_mlmodel_metadata():
    assert model.feature_set({"metadata": {"datalab.feature_set": FEATURE_SET}}, SIGNATURE) == FEATURE_SET
    assert model.feature_set({"metadata": {"datalab.feature_set": FEATURE_SET}}, SIGNATURE[:3]) == FEATURE_SET
    assert model.feature_set({}, SIGNATURE) is None
    assert model.feature_set({"metadata": {"other": 1}}, SIGNATURE) is None
    assert FEATURE_SET == "fraudlab.handbook/v1"


def test_a_feature_set_this_runtime_does_not_compute_fails_the_load():
    with pytest.raises(ValueError, match="declares the feature set 'fraudlab.handbook/v2'.*computes 'fraudlab.hand"):
        model.feature_set({"metadata": {"datalab.feature_set": "fraudlab.handbook/v2"}}, SIGNATURE)
    with pytest.raises(ValueError, match="the set does not compute: CARD_AGE"):
        model.feature_set({"metadata": {"datalab.feature_set": FEATURE_SET}}, SIGNATURE + [("CARD_AGE", "double")])


def test_load_reads_the_feature_set_and_warms_up_on_the_example(tmp_path):
    inputs = json.dumps([{"type": "double", "name": name} for name in FEATURES])
    (tmp_path / "MLmodel").write_text(f"metadata:\n  datalab.feature_set: {FEATURE_SET}\n"
                                      f"signature:\n  inputs: '{inputs}'\n")
    (tmp_path / "input_example.json").write_text(json.dumps([dict.fromkeys(FEATURES, 1.0)]))
    calls = []

    def pyfunc(model_dir, fields):
        calls.append(fields)
        return lambda rows: [0.25] * len(rows)

    loaded = model.load(tmp_path, "fraud", 3, pyfunc=pyfunc)
    assert loaded.feature_set == FEATURE_SET and loaded.version == "3" and calls == [SIGNATURE]


# --- raw transactions and labels ---------------------------------------------------------------------------

def test_raw_transactions_one_or_many():
    [tx], many = parse_raw(body(RAW), "application/json", 10, 4096, NOW)
    assert not many and tx == intake.validate(RAW, NOW)
    txs, many = parse_raw(body({"transactions": [RAW, {**RAW, "transaction_id": "t-2"}]}), "application/json", 10,
                          4096, NOW)
    assert many and [t.transaction_id for t in txs] == ["t-1", "t-2"]


@pytest.mark.parametrize("payload, status, field, index, says", [
    ({**RAW, "customer_id": 1.5}, 422, "customer_id", None, "'customer_id' must be an integer of at most 64 bits"),
    ({**RAW, "amount": -3}, 422, "amount", None, "'amount' must be a finite number >= 0, got -3"),
    ({**RAW, "amount": 1e39}, 422, "amount", None, "'amount' is out of range: 1e+39 (the model computes in float32"),
    ({**RAW, "datetime": "2024-06-01T13:00:00Z"}, 422, "datetime", None, "ahead of this server's clock"),
    ({**RAW, "datetime": "noon"}, 422, "datetime", None, "'datetime' is not an ISO-8601"),
    ({k: v for k, v in RAW.items() if k != "amount"}, 422, "amount", None, "missing field(s): amount"),
    ([RAW, {**RAW, "pin": 1234}], 422, "pin", 1, "transaction 1: unknown field(s): 'pin'"),
    ([RAW, "x"], 422, None, 1, "transaction 1: a transaction must be an object of fields, got str"),
    ([RAW] * 11, 413, None, None, "11 transactions in one request; the limit is 10"),
    ({"transactions": {}}, 422, None, None, "'transactions' must be a list of transactions"),
])
def test_each_invalid_raw_transaction_is_named(payload, status, field, index, says):
    with pytest.raises(RequestError) as refused:
        parse_raw(body(payload), "application/json", 10, 4096, NOW)
    e = refused.value
    assert (e.status, e.field, e.index) == (status, field, index) and says in e.message, e.message
    assert e.body() == {"error": e.message, **({"field": field} if field else {}),
                        **({"index": index} if index is not None else {})}


def test_labels_one_or_many_and_each_invalid_one_named():
    assert parse_labels(body({"transaction_id": "t", "fraud": True}), "application/json", 10, 4096) == (
        [("t", True)], False)
    assert parse_labels(body({"labels": [{"transaction_id": "t", "fraud": False}]}), "application/json", 10,
                        4096) == ([("t", False)], True)
    for payload, field, index, says in [
        ({"transaction_id": "t", "fraud": 1}, "fraud", None, "'fraud' must be true or false, got 1"),
        ([{"transaction_id": "t", "fraud": True}, {"fraud": True}], "transaction_id", 1,
         "label 1: missing field(s): transaction_id"),
        ({"transaction_id": "", "fraud": True}, "transaction_id", None, "non-empty string"),
        ({"transaction_id": "t", "fraud": True, "why": "x"}, "why", None, "unknown field(s): 'why'"),
    ]:
        with pytest.raises(RequestError) as refused:
            parse_labels(body(payload), "application/json", 10, 4096)
        assert (refused.value.status, refused.value.field, refused.value.index) == (422, field, index)
        assert says in refused.value.message
    with pytest.raises(RequestError, match="content type must be application/json"):
        parse_labels(b"{}", "text/plain", 10, 4096)


# --- settings, connection, token ---------------------------------------------------------------------------

def test_settings_from_the_environment(tmp_path):
    defaults = featurestore.Settings.from_env({"SCORING_FEATURE_STORE_PASSWORD_FILE": str(tmp_path / "none")})
    assert defaults == featurestore.Settings("redis://featurestore:6379/0", None, 0.05, 1_000_000, 0.2)
    (tmp_path / "pw").write_text("s3cret\n")
    settings = featurestore.Settings.from_env({
        "SCORING_FEATURE_STORE_URL": "redis://store:6380/2",
        "SCORING_FEATURE_STORE_PASSWORD_FILE": str(tmp_path / "pw"),
        "SCORING_FEATURE_STORE_TIMEOUT_MS": "20", "SCORING_SCORED_LOG_MAXLEN": "5000"})
    assert (settings.url, settings.password, settings.timeout_s, settings.scored_log_maxlen) == (
        "redis://store:6380/2", "s3cret", 0.02, 5000)
    for name, value in [("SCORING_FEATURE_STORE_TIMEOUT_MS", "fast"), ("SCORING_SCORED_LOG_MAXLEN", "0")]:
        with pytest.raises(ValueError, match=name):
            featurestore.Settings.from_env({name: value, "SCORING_FEATURE_STORE_PASSWORD_FILE": str(tmp_path / "x")})
    with pytest.raises(ValueError, match="cannot read the feature store's password"):
        featurestore.Settings.from_env({"SCORING_FEATURE_STORE_PASSWORD_FILE": str(tmp_path)})  # a directory


def test_the_connection_fails_fast_and_never_retries():
    client = featurestore.connect(featurestore.Settings("redis://store:6379/0", "pw", 0.05, 10, 0.2))
    options = client.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"], options["password"]) == (0.05, 0.05, "pw")
    assert client.get_retry().get_retries() == 0


def test_urls_in_messages_carry_no_password():
    assert featurestore.redacted("redis://:s3cret@featurestore:6379/0") == "redis://:***@featurestore:6379/0"
    assert featurestore.redacted("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert featurestore.redacted("redis://featurestore:6379/0") == "redis://featurestore:6379/0"


def test_the_feedback_token(tmp_path):
    assert server.read_token(tmp_path / "absent")[1].startswith("feedback is not configured: no token file at")
    (tmp_path / "empty").write_text("\n")
    assert server.read_token(tmp_path / "empty") == (None, f"feedback is not configured: the token file "
                                                           f"{tmp_path / 'empty'} is empty")
    (tmp_path / "token").write_text("abc123\n")
    assert server.read_token(tmp_path / "token") == (b"abc123", None)


# --- the link: errors, readiness, the scored log's buffer --------------------------------------------------

class FakeClient:
    def __init__(self):
        self.error = None

    def ping(self):
        if self.error:
            raise self.error
        return True

    def close(self):
        self.error = redis.ConnectionError("closed")


class FakeStore:
    """fraudlab.online.FeatureStore's calls that the link makes, answering from memory or failing with `error`."""

    def __init__(self):
        self.client = FakeClient()
        self.logged = []

    def score_and_log(self, transactions, served=()):
        self.client.ping()
        self.logged += served
        return [dict.fromkeys(FEATURES, 1.0) for _ in transactions], len(served)

    def log_scored(self, served):
        return self.score_and_log([], served)[1]

    def feedback_many(self, labels):
        self.client.ping()
        return [intake.Feedback.RECORDED if tid != "unknown" else intake.Feedback.UNKNOWN for tid, _ in labels]


def served(n, first=0):
    return [intake.Served(f"t-{i}", "fraud", "3", 0.5, 0) for i in range(first, first + n)]


def test_an_unreachable_store_is_a_503_naming_it_and_the_link_recovers_with_it():
    async def scenario():
        store, metrics = FakeStore(), Metrics("fraud", "3")
        link = featurestore.Link(store, "redis://featurestore:6379/0", 0.05, metrics)
        link.served(served(3))
        store.client.error = redis.ConnectionError("Error 111 connecting to featurestore:6379. Connection refused.")
        with pytest.raises(featurestore.StoreUnavailable) as refused:
            await link.features([object()])
        assert refused.value.status == 503
        assert refused.value.message == ("feature store unreachable: redis://featurestore:6379/0: Error 111 "
                                         "connecting to featurestore:6379. Connection refused.")
        assert len(link.pending) == 3  # kept for the next round trip
        assert (await link.ready()).startswith("feature store unreachable")
        store.client.error = redis.TimeoutError("Timeout reading from socket")
        with pytest.raises(featurestore.StoreUnavailable, match="no answer from redis://featurestore:6379/0 within 50"):
            await link.feedback([("t-1", True)])
        store.client.error = redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
        with pytest.raises(featurestore.StoreUnavailable, match="the feature store .* refused the call: OOM"):
            await link.features([object()])
        store.client.error = None
        assert len(await link.features([object()])) == 1 and not link.pending and len(store.logged) == 3
        assert await link.ready() is None
        text = metrics.render()
        for line in ['scoring_feature_store_errors_total{call="score",kind="unreachable"} 1',
                     'scoring_feature_store_errors_total{call="feedback",kind="timeout"} 1',
                     'scoring_feature_store_errors_total{call="score",kind="refused"} 1',
                     'scoring_feature_store_seconds_count{call="score"} 1', "scoring_scored_log_written_total 3",
                     "scoring_scored_log_pending 0"]:
            assert line in text, line
        link.close()

    asyncio.run(scenario())


def test_calls_past_the_limit_in_flight_are_refused_at_once():
    async def scenario():
        link = featurestore.Link(FakeStore(), "redis://featurestore:6379/0", 0.05, Metrics("fraud", "3"))
        link.in_flight = featurestore.MAX_IN_FLIGHT
        with pytest.raises(featurestore.StoreUnavailable, match="is not keeping up"):
            await link.features([object()])
        link.close()

    asyncio.run(scenario())


def test_the_scored_log_buffer_is_bounded_and_flushed(monkeypatch):
    monkeypatch.setattr(featurestore, "LOG_BUFFER", 5)
    monkeypatch.setattr(featurestore, "LOG_BATCH", 2)

    async def scenario():
        store, metrics = FakeStore(), Metrics("fraud", "3")
        link = featurestore.Link(store, "redis://featurestore:6379/0", 0.05, metrics)
        link.served(served(7))  # two more than it keeps: the oldest go
        assert [s.transaction_id for s in link.pending] == [f"t-{i}" for i in range(2, 7)]
        store.client.error = redis.ConnectionError("refused")
        assert await link.flush() is False and len(link.pending) == 5  # put back, in order
        assert [s.transaction_id for s in link.pending][:2] == ["t-2", "t-3"]
        store.client.error = None
        assert await link.flush() is True
        assert [s.transaction_id for s in store.logged] == [f"t-{i}" for i in range(2, 7)]
        assert "scoring_scored_log_dropped_total 2" in metrics.render()
        link.close()

    asyncio.run(scenario())


# --- the API with a stand-in feature store -----------------------------------------------------------------

def stand_in(rows):
    return [min(1.0, row[0] / 1000.0) for row in rows]


class RawAPI(AsyncHTTPTestCase):
    """The API serving a model that declares the feature set, its feature store a FakeStore."""

    def get_app(self):
        self.state = server.State(threshold=50, max_batch=10, max_bytes=4096, model_name="fraud", model_version="3",
                                  feedback_token=b"tok")
        self.store = FakeStore()
        self.link = featurestore.Link(self.store, "redis://featurestore:6379/0", 0.05, self.state.metrics)
        self.state.serve(model.Model("fraud", "3", SIGNATURE, [], stand_in, "fake", FEATURE_SET), self.link)
        return server.app(self.state)

    def tearDown(self):
        self.link.close()
        super().tearDown()

    def post(self, path, payload, **headers):
        r = self.fetch(path, method="POST", body=json.dumps(payload),
                       headers={"Content-Type": "application/json", **headers})
        return r.code, json.loads(r.body)

    def raw(self, transaction_id="t-1"):
        return {**RAW, "transaction_id": transaction_id, "datetime": datetime.now(timezone.utc).isoformat()}

    def test_scores_raw_transactions_explains_and_logs_them(self):
        code, out = self.post("/v1/score?explain=1", self.raw())
        assert code == 200 and out["score"] == 0.1 and out["features"] == dict.fromkeys(FEATURES, 1.0)
        assert [s.transaction_id for s in self.link.pending] == ["t-1"] and self.link.pending[0].score == 0.001
        code, out = self.post("/v1/score", [self.raw("t-2"), self.raw("t-3")])
        assert code == 200 and len(out["results"]) == 2 and "features" not in out["results"][0]
        assert [s.transaction_id for s in self.store.logged] == ["t-1"]  # sent along with the second request

    def test_a_store_that_fails_is_a_503_and_nothing_is_logged(self):
        self.store.client.error = redis.ConnectionError("refused")
        code, out = self.post("/v1/score", self.raw())
        assert code == 503 and out["error"].startswith("feature store unreachable")
        assert not self.link.pending
        r = self.fetch("/readyz")
        assert r.code == 503 and json.loads(r.body)["error"].startswith("feature store unreachable")
        assert self.fetch("/startedz").code == 200
        self.store.client.error = None
        assert self.fetch("/readyz").code == 503  # the failure answers for a second
        self.link.health = None
        assert self.fetch("/readyz").code == 200

    def test_feedback_needs_the_bearer_token(self):
        label = {"transaction_id": "t-1", "fraud": True}
        assert self.post("/v1/feedback", label)[0] == 401
        assert self.post("/v1/feedback", label, Authorization="Bearer nope")[1] == {
            "error": "the feedback token is not valid"}
        assert self.post("/v1/feedback", label, Authorization="Bearer t\u00f6k")[0] == 401  # not ASCII: no crash
        assert self.post("/v1/feedback", label, Authorization="Bearer tok") == (
            200, {"transaction_id": "t-1", "result": "recorded"})
        code, out = self.post("/v1/feedback", {"transaction_id": "unknown", "fraud": True}, Authorization="Bearer tok")
        assert code == 404 and out["result"] == "unknown"

    def test_feedback_without_a_token_file_is_refused_as_unconfigured(self):
        self.state.feedback_token = None
        code, out = self.post("/v1/feedback", {"transaction_id": "t-1", "fraud": True}, Authorization="Bearer tok")
        assert code == 503 and out["error"].startswith("feedback is not configured")

    def test_schema_shows_the_raw_fields_and_feedback(self):
        out = json.loads(self.fetch("/v1/schema").body)
        assert [f["name"] for f in out["fields"]] == list(intake.FIELDS) and out["feature_set"] == FEATURE_SET
        assert intake.validate(out["example"], datetime.now(timezone.utc))
        assert out["feedback"]["url"] == "/v1/feedback" and out["feedback"]["configured"] is True


class EngineeredAPI(AsyncHTTPTestCase):
    """A model without a feature set: no store, no feedback; explain shows the features sent."""

    def get_app(self):
        self.state = server.State(threshold=50, max_batch=10, max_bytes=4096, model_name="fraud", model_version="3",
                                  feedback_token=b"tok")
        self.state.serve(model.Model("fraud", "3", [("TX_AMOUNT", "float")], [], stand_in, "fake"))
        return server.app(self.state)

    def test_feedback_is_a_409_and_explain_echoes_the_features(self):
        r = self.fetch("/v1/feedback", method="POST", body='{"transaction_id": "t", "fraud": true}',
                       headers={"Content-Type": "application/json", "Authorization": "Bearer tok"})
        assert r.code == 409 and "datalab.feature_set" in json.loads(r.body)["error"]
        r = self.fetch("/v1/score?explain=true", method="POST", body='{"TX_AMOUNT": 100}',
                       headers={"Content-Type": "application/json"})
        assert json.loads(r.body)["features"] == {"TX_AMOUNT": 100.0}
        assert json.loads(self.fetch("/readyz").body)["input"] == "features"

    def test_a_model_with_a_feature_set_needs_a_store(self):
        with pytest.raises(ValueError, match="served with a feature store"):
            self.state.serve(model.Model("fraud", "4", SIGNATURE, [], stand_in, "fake", FEATURE_SET))


def test_a_large_batch_goes_in_round_trips_each_well_within_the_timeout():
    class Counting(FakeStore):
        def __init__(self):
            super().__init__()
            self.trips = []

        def score_and_log(self, transactions, served=()):
            self.trips.append((len(transactions), len(served)))
            if len(self.trips) == 3 and self.fail_third:
                raise redis.TimeoutError("slow")
            return super().score_and_log(transactions, served)

    async def scenario(fail_third):
        store = Counting()
        store.fail_third = fail_third
        link = featurestore.Link(store, "redis://featurestore:6379/0", 0.05, Metrics("fraud", "3"))
        link.served(served(5))
        try:
            return store, link, await link.features([object()] * (2 * featurestore.CHUNK + 10))
        except featurestore.StoreUnavailable as e:
            return store, link, e
        finally:
            link.close()

    store, link, found = asyncio.run(scenario(False))
    assert len(found) == 2 * featurestore.CHUNK + 10
    assert store.trips == [(featurestore.CHUNK, 5), (featurestore.CHUNK, 0), (10, 0)]  # the log rides the first
    store, link, error = asyncio.run(scenario(True))
    assert isinstance(error, featurestore.StoreUnavailable)  # no score at all: the retry is answered from records
    assert len(store.logged) == 5 and not link.pending  # the log's batch went with the first trip: not again
