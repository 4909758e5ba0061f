"""The scoring API with a stand-in model (the TensorFlow boundary): request
checks, responses, metrics. The real model and service: tests/integration."""

import json

from tornado.testing import AsyncHTTPTestCase

from datalab_scoring.model import Model
from datalab_scoring.server import State, app

FIELDS = [("TX_AMOUNT", "float"), ("TERMINAL_ID_RISK_7DAY_WINDOW", "float")]
EXAMPLE = [{"TX_AMOUNT": 12.5, "TERMINAL_ID_RISK_7DAY_WINDOW": 0.0}]


def fake_predict(rows):  # a "model": probability grows with the amount; NaN from 1e38, as a network overflowing
    return [min(1.0, row[0] / 1000.0) if row[0] < 1e38 else float("nan") for row in rows]


class ServedModel(AsyncHTTPTestCase):
    """The API serving the stand-in model; bodies up to `max_bytes`."""
    max_bytes = 4096

    def get_app(self):
        self.state = State(threshold=50, max_batch=10, max_bytes=self.max_bytes, model_name="fraud", model_version="3")
        self.state.serve(Model("fraud", "3", FIELDS, EXAMPLE, fake_predict, "fake"))
        return app(self.state)

    def post(self, body, content_type="application/json"):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        r = self.fetch("/v1/score", method="POST", body=data, headers={"Content-Type": content_type})
        return r.code, json.loads(r.body)


class ScoringAPI(ServedModel):
    def test_one_transaction(self):
        code, out = self.post({"TX_AMOUNT": 600, "TERMINAL_ID_RISK_7DAY_WINDOW": 0.1})
        assert code == 200
        assert out == {"score": 60.0, "decision": "block", "model": "fraud", "version": "3"}

    def test_many_transactions_keep_their_order(self):
        code, out = self.post([{"TX_AMOUNT": a, "TERMINAL_ID_RISK_7DAY_WINDOW": 0} for a in (100, 700, 499)])
        assert code == 200 and out["threshold"] == 50
        assert [(r["score"], r["decision"]) for r in out["results"]] == [(10.0, "allow"), (70.0, "block"), (49.9, "allow")]

    def test_only_refusals_and_failures_get_a_log_line_unless_debugging(self):
        with self.assertLogs("tornado.access", level="DEBUG") as logged:
            self.post({"TX_AMOUNT": 600, "TERMINAL_ID_RISK_7DAY_WINDOW": 0.1})
            self.post({"TX_AMOUNT": "lots"})
        assert [(r.levelname, r.getMessage().split()[0]) for r in logged.records] == [("DEBUG", "200"),
                                                                                      ("WARNING", "422")]
        with self.assertLogs("tornado.access", level="INFO") as logged:
            self.post({"TX_AMOUNT": 600, "TERMINAL_ID_RISK_7DAY_WINDOW": 0.1})
            self.post({"TX_AMOUNT": "lots"})
        assert [r.levelname for r in logged.records] == ["WARNING"]

    def test_bad_requests_are_4xx_naming_the_problem(self):
        cases = [
            ("{not json", "application/json", 400, "not valid JSON"),
            ({"TX_AMOUNT": 1}, "application/json", 422, "missing field(s): TERMINAL_ID_RISK_7DAY_WINDOW"),
            ({**EXAMPLE[0], "CARD_NUMBER": 4}, "application/json", 422, "unknown field(s): CARD_NUMBER"),
            ({**EXAMPLE[0], "TX_AMOUNT": "12"}, "application/json", 422, "field 'TX_AMOUNT' must be a number"),
            ({**EXAMPLE[0], "TX_AMOUNT": True}, "application/json", 422, "field 'TX_AMOUNT' must be a number"),
            ('{"TX_AMOUNT": NaN, "TERMINAL_ID_RISK_7DAY_WINDOW": 0}', "application/json", 422, "must be finite"),
            ('{"TX_AMOUNT": Infinity, "TERMINAL_ID_RISK_7DAY_WINDOW": 0}', "application/json", 422, "must be finite"),
            ([], "application/json", 422, "the list is empty"),
            ([EXAMPLE[0]] * 11, "application/json", 413, "the limit is 10"),
            ("x" * 5000, "application/json", 413, "the limit is 4096"),
            (EXAMPLE[0], "text/plain", 415, "must be application/json"),
            ([EXAMPLE[0], 3], "application/json", 422, "transaction 1: a transaction must be a JSON object"),
        ]
        for body, content_type, status, message in cases:
            code, out = self.post(body, content_type)
            assert (code, message in out["error"]) == (status, True), (body, code, out)
        # and it keeps serving
        assert self.post(EXAMPLE[0])[0] == 200

    def test_schema_describes_the_request(self):
        out = json.loads(self.fetch("/v1/schema").body)
        assert out["fields"] == [{"name": "TX_AMOUNT", "type": "float"},
                                 {"name": "TERMINAL_ID_RISK_7DAY_WINDOW", "type": "float"}]
        assert out["example"] == EXAMPLE[0] and out["model"] == "fraud" and out["version"] == "3"

    def test_health_readiness_metrics_and_unknown_paths(self):
        assert json.loads(self.fetch("/healthz").body) == {"status": "alive"}
        assert json.loads(self.fetch("/readyz").body)["status"] == "ready"
        self.post(EXAMPLE)
        self.post({})
        metrics = self.fetch("/metrics").body.decode()
        assert 'scoring_requests_total{code="200"} 1' in metrics
        assert 'scoring_requests_total{code="422"} 1' in metrics
        assert 'scoring_model_info{model="fraud",version="3"} 1' in metrics
        assert "scoring_batch_size_count 1" in metrics
        # where the scored request's time went, stage by stage (features: raw transactions only)
        for stage, count in (("parse", 1), ("queue", 1), ("model", 1), ("respond", 1)):
            assert f'scoring_stage_seconds_count{{stage="{stage}"}} {count}.0' in metrics, stage
        assert 'scoring_stage_seconds_count{stage="features"} 0.0' in metrics
        r = self.fetch("/v2/score")
        assert r.code == 404 and "POST /v1/score" in json.loads(r.body)["error"]


class MalformedBodies(ServedModel):
    max_bytes = 1 << 20  # the service's default: room for 100,000 brackets

    def test_malformed_bodies_of_any_shape_are_4xx_naming_the_problem(self):
        tx = '{"TX_AMOUNT": %s, "TERMINAL_ID_RISK_7DAY_WINDOW": 0}'
        cases = [
            ("[" * 100_000 + "]" * 100_000, 400, "nested too deeply"),  # RecursionError in the decoder
            ('{"a": ' * 100_000 + "1" + "}" * 100_000, 400, "nested too deeply"),
            (tx % ("[" * 500 + "]" * 500), 422, "field 'TX_AMOUNT' must be a number (float), got a list"),
            (tx % ("9" * 400), 422, "field 'TX_AMOUNT' is out of range: an integer of 400 digits"),  # float() overflows
            (tx % ("-" + "9" * 400), 422, "an integer of 400 digits"),
            (tx % ("9" * 5000), 400, "an integer of more than 4300 digits"),  # int-string conversion limit
            (tx % "1e400", 422, "field 'TX_AMOUNT' must be finite, got inf"),
            (tx % "-Infinity", 422, "field 'TX_AMOUNT' must be finite, got -inf"),
            (tx % "1e39", 422, "field 'TX_AMOUNT' is out of range: 1e+39 (the model computes in float32"),
            (tx % "-3.5e38", 422, "field 'TX_AMOUNT' is out of range: -3.5e+38"),
            (tx % "3e38", 422, "the model's score is nan, not a probability"),
            (f"[{tx % 1}, {tx % '3e38'}]", 422, "transaction 1: the model's score is nan"),
            (tx % ('"' + "x" * 3000 + '"'), 422, '"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (3002 characters)'),
            (tx % "null", 422, "field 'TX_AMOUNT' must be a number (float), got null"),
            (tx % "{}", 422, "field 'TX_AMOUNT' must be a number (float), got an object"),
            ("", 400, "request body is empty"),
            ("  \n ", 400, "not valid JSON: Expecting value"),
            (b"\xff\xfe\x00garbage\x80", 400, "not UTF-8: byte 0 is 0xff"),
            ('{"TX_AMOUNT": 1}'.encode("utf-16"), 400, "not UTF-8"),
            (b"\x00\x01\x02", 400, "not valid JSON"),
            ("12", 422, "request body must be a JSON object (one transaction) or a list of them, got 12"),
            ('"text"', 422, 'or a list of them, got "text"'),
            ("null", 422, "or a list of them, got null"),
            ("true", 422, "or a list of them, got true"),
            ('{"transactions": 3}', 422, "'transactions' must be a list"),
            ('{"transactions": [[1, 2]]}', 422, "transaction 0: a transaction must be a JSON object of fields, "
                                                "got a list"),
            ("[null]", 422, "transaction 0: a transaction must be a JSON object of fields, got null"),
            (tx % 1 + "x", 400, "not valid JSON: Extra data"),
        ]
        for body, status, message in cases:
            code, out = self.post(body)
            assert (code, message in out["error"]) == (status, True), (body[:60], code, out)
        assert self.post(EXAMPLE[0])[0] == 200
        assert 'code="500"' not in self.fetch("/metrics").body.decode()


class NotReady(AsyncHTTPTestCase):
    def get_app(self):
        self.state = State(threshold=50, max_batch=10, max_bytes=4096, model_name="fraud", model_version="4")
        self.state.load_error = "ValueError: the model has no input signature"
        return app(self.state)

    def test_a_model_that_did_not_load_is_unready_and_says_why(self):
        r = self.fetch("/readyz")
        assert r.code == 503 and "no input signature" in json.loads(r.body)["error"]
        r = self.fetch("/v1/score", method="POST", body="{}", headers={"Content-Type": "application/json"})
        assert r.code == 503 and "could not be loaded" in json.loads(r.body)["error"]
        assert self.fetch("/healthz").code == 200
