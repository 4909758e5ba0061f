"""Malformed, oversized and slow requests through the real scoring edge
(HAProxy, images/edge/) to the real scoring tasks: each gets a 4xx that says
what is wrong, from the edge or from a task, and the edge keeps scoring."""

import json
import socket
import time

import pytest
import requests
from conftest import MODEL

pytestmark = pytest.mark.integration

LIMIT = 1 << 20  # the edge's body limit, and the tasks' SCORING_MAX_BYTES default


@pytest.fixture(scope="module")
def example(lab, model_v1):
    """The input example of the version serving behind the edge (model_v1 unless one already serves)."""
    if not json.loads(lab.datalab("scoring", "status", "--json").stdout)["deployment"]:
        lab.datalab("deploy", f"{MODEL}@{model_v1}", "--replicas", "2")
    return requests.get(f"{lab.edge}/v1/schema", timeout=10).json()["example"]


def post(lab, body, **headers):
    return requests.post(f"{lab.edge}/v1/score", data=body, timeout=30,
                         headers={"Content-Type": "application/json", **headers})


def from_edge(r):  # HAProxy's own answers carry no Server header; the tasks' (Tornado) do
    return "Server" not in r.headers


def raw(lab, data, meanwhile=lambda: None):
    """Send bytes on a new connection, call meanwhile(), then read until the edge closes
    the connection: (seconds from sending to closing, all it answered)."""
    port = int(lab.edge.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        started = time.monotonic()
        s.sendall(data)
        meanwhile()
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return time.monotonic() - started, answer


def test_a_normal_request_still_scores(lab, example):
    r = post(lab, json.dumps(example))
    assert r.status_code == 200 and 0 <= r.json()["score"] <= 100 and not from_edge(r)


@pytest.mark.parametrize("body, status, message", [
    ("[" * 100_000 + "]" * 100_000, 400, "nested too deeply"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, 400, "nested too deeply"),
    ('{"TX_AMOUNT": ' + "9" * 5000 + "}", 400, "an integer of more than"),  # Python's int-string limit
    (b"\xff\xfe\x00\x9c garbage \x80\x81", 400, "not UTF-8"),
    ("", 400, "request body is empty"),
    ("null", 422, "must be a JSON object (one transaction) or a list of them, got null"),
])
def test_malformed_bodies_are_4xx_from_the_task(lab, example, body, status, message):
    r = post(lab, body)
    assert (r.status_code, message in r.json()["error"]) == (status, True), r.text[:300]
    assert not from_edge(r)
    assert post(lab, json.dumps(example)).status_code == 200


def test_numbers_past_the_model_s_range_are_a_422_naming_the_field(lab, example):
    field = next(iter(example))
    for number, message in [("9" * 400, "is out of range: an integer of 400 digits"),  # no float holds it
                            ("1e39", "is out of range: 1e+39"),  # infinite in float32
                            ("1e400", "must be finite, got inf")]:
        r = post(lab, json.dumps({**example, field: "N"}).replace('"N"', number))
        assert r.status_code == 422 and f"field '{field}' {message}" in r.json()["error"], r.text


def test_huge_values_within_range_never_score_nan(lab, example):
    """3e38 fits a float32, but the network may overflow on it inside: a NaN score must be
    refused rather than answered (NaN >= threshold is False: it would read "allow")."""
    r = post(lab, json.dumps({name: 3e38 for name in example}))
    strict = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} in the answer: {r.text}"))
    if r.status_code == 422:
        assert "not a probability" in strict["error"]
    else:
        assert r.status_code == 200 and 0 <= strict["score"] <= 100, r.text


def test_a_body_over_the_limit_is_a_413_from_the_edge(lab, example):
    one = json.dumps(example)
    at_limit = "[" + one + " " * (LIMIT - len(one) - 2) + "]"
    assert len(at_limit.encode()) == LIMIT
    assert post(lab, at_limit).status_code == 200  # the limit itself is allowed, by the edge and the task
    r = post(lab, at_limit + " ")
    assert r.status_code == 413 and from_edge(r)
    assert r.json() == {"error": f"request body is {LIMIT + 1} bytes; the scoring edge accepts up to {LIMIT}"}
    r = post(lab, b" " * (20 * LIMIT))  # far over: still an answer, not a reset
    assert r.status_code == 413 and from_edge(r)


def test_a_declared_oversized_body_is_refused_before_it_is_sent(lab, example):
    seconds, answer = raw(lab, b"POST /v1/score HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (LIMIT + 1))
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer and seconds < 2, answer


def test_a_chunked_body_over_the_limit_is_a_413_from_the_task(lab, example):
    """Without a Content-Length the edge measures only what its buffer holds (16 kB): the task refuses the rest."""
    def chunks():
        for _ in range(24):
            yield b" " * (LIMIT // 16)
    r = post(lab, chunks())
    assert r.status_code == 413 and f"the limit is {LIMIT}" in r.json()["error"] and not from_edge(r)


HEADERS = b"POST /v1/score HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"


@pytest.mark.parametrize("sent, json_answer", [
    (HEADERS, True),  # then no body
    (HEADERS + b'{"TX', True),  # then no more of it
    (HEADERS[:40], False),  # headers cut short: HAProxy's own HTML page (its parser answers before errorfiles)
])
def test_a_client_that_stalls_gets_a_408_and_holds_nothing(lab, example, sent, json_answer):
    def others_are_scored():
        assert post(lab, json.dumps(example)).status_code == 200

    seconds, answer = raw(lab, sent, meanwhile=others_are_scored)
    assert 4 < seconds < 9, seconds  # timeout http-request (headers) or wait-for-body (body): 5 s
    assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.0 408 Request Timeout", b"HTTP/1.1 408 Request Time-out"), answer
    if json_answer:
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert "did not arrive in full within 5 s" in error


def test_garbage_instead_of_http_is_a_400_from_the_edge(lab, example):
    seconds, answer = raw(lab, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not HTTP at all\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and seconds < 2, answer
    assert post(lab, json.dumps(example)).status_code == 200
