"""The registry gateway's handler between a caller and a fake MLflow (a small
tornado app that answers the gateway's lookups and records what reaches it):
the lookups behind each decision, what is forwarded (the query and body as
judged), refusals and their log lines. The hub's login is replaced by a header
naming the caller; the decisions themselves are test_registry_routes.py's."""

import asyncio
import json
import logging

import pytest
from tornado import httpclient, web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from datalab_registry import gateway, owners, tenancy

POLICY = tenancy.Policy(teams=frozenset({"fraud-team", "aml-team"}))
USERS = {"alice": tenancy.Identity("alice", frozenset({"fraud-team", "model-approvers"})),
         "bob": tenancy.Identity("bob", frozenset({"fraud-team"})),
         "dave": tenancy.Identity("dave", frozenset({"aml-team"}))}


def team(name):
    return {"tags": [{"key": "datalab.team", "value": name}]}


class FakeMlflow:
    """Experiment 5, run r5 and the model fraud-detector are fraud-team's; experiment 9, run r9 and the
    model aml-model aml-team's. fraud-detector v3 is in production, made from run r5, which it seals."""

    def __init__(self, down=False):
        self.received, self.down = [], down

    def answer(self, method, path, args, body):
        if self.down:
            return 500, {}
        one = {k: v[0] for k, v in args.items()}
        if path == "experiments/get":
            return (200, {"experiment": {"experiment_id": one["experiment_id"],
                                         **team({"5": "fraud-team", "9": "aml-team"}[one["experiment_id"]])}}) \
                if one["experiment_id"] in ("5", "9") else (404, {})
        if path == "runs/get":
            exp = {"r5": "5", "r9": "9"}.get(one["run_id"])
            tags = [{"key": "datalab.evaluation", "value": "evaluation/e.parquet"}] if exp == "5" else []
            return (200, {"run": {"info": {"experiment_id": exp}, "data": {"tags": tags}}}) if exp else (404, {})
        if path == "registered-models/get":
            owner = {"fraud-detector": "fraud-team", "aml-model": "aml-team"}.get(one["name"])
            return (200, {"registered_model": {"name": one["name"], **team(owner)}}) if owner else (404, {})
        if path == "model-versions/search" and "filter" in one:
            found = [{"name": "fraud-detector", "version": "3"}] if one["filter"] == "run_id='r5'" else []
            return 200, {"model_versions": found}
        if path == "registered-models/search" and "page_token" not in one and args.get("max_results") == ["1000"]:
            return 200, {"registered_models": [{"name": "fraud-detector", **team("fraud-team"),
                                                "aliases": [{"alias": "production", "version": "3"}]}]}
        if path == "model-versions/get":
            return 200, {"model_version": {"name": "fraud-detector", "version": one["version"], "run_id": "r5",
                                           "source": "models:/m-5"}}
        self.received.append((method, path, args, body))  # a forwarded request
        return 200, {"model_versions": [{"name": "fraud-detector"}, {"name": "aml-model"}]} \
            if path == "model-versions/search" else {}

    def handler(self):
        fake = self

        class Handler(web.RequestHandler):
            SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

            def handle(self, path):
                args = {k: [v.decode() for v in vs] for k, vs in self.request.query_arguments.items()}
                code, answer = fake.answer(self.request.method, path, args, self.request.body or None)
                self.set_status(code)
                self.finish(answer)

            get = post = put = patch = delete = handle

        return Handler

    def app(self):
        return web.Application([(r"/api/2.0/mlflow/(.*)", self.handler()), (r"/(.*)", self.handler())])


class AsCaller(gateway.RegistryHandler):
    def get_current_user(self):
        return {"name": self.request.headers["X-Caller"], "kind": "user"}

    def identity(self):
        return USERS[self.current_user["name"]]


def call(who, method, path, body=None, policy=POLICY, mlflow=None):
    """(status, answer) of the gateway for one request, and the fake MLflow."""
    mlflow = mlflow or FakeMlflow()

    async def run():
        sockets = [bind_unused_port() for _ in range(2)]
        url = f"http://127.0.0.1:{sockets[0][1]}"
        servers = [HTTPServer(mlflow.app()), HTTPServer(web.Application(
            [(r"/services/registry/(.*)", AsCaller)], owners=owners.Owners(url), mlflow_url=url, policy=policy))]
        for server, (sock, _) in zip(servers, sockets):
            server.add_sockets([sock])
        try:
            response = await httpclient.AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{sockets[1][1]}/services/registry/{path}", method=method, raise_error=False,
                headers={"X-Caller": who}, allow_nonstandard_methods=True,
                body=(body if isinstance(body, bytes) else json.dumps(body).encode()) if body is not None else None)
            return response.code, json.loads(response.body or b"{}")
        finally:
            for server in servers:
                server.stop()

    return (*asyncio.run(run()), mlflow)


def test_a_write_is_looked_up_judged_and_forwarded_with_the_body_as_judged():
    status, _, mlflow = call("bob", "POST", "api/2.0/mlflow/runs/log-metric?run_id=r5",
                             {"runId": "r5", "key": "auc", "value": 0.9})
    assert status == 200
    [(method, path, args, body)] = mlflow.received
    assert (method, path, args, json.loads(body)) == ("POST", "runs/log-metric", {"run_id": ["r5"]},
                                                       {"runId": "r5", "key": "auc", "value": 0.9})


def test_upload_artifact_smuggling_is_refused_before_mlflow_hears_of_it(caplog):
    caplog.set_level(logging.WARNING, "datalab.registry")
    status, answer, mlflow = call("dave", "POST", "ajax-api/2.0/mlflow/upload-artifact?run_uuid=r5&path=x.txt",
                                  json.dumps({"run_uuid": "r9"}).encode())
    assert (status, answer["error_code"]) == (403, "PERMISSION_DENIED")
    assert "dave may not change what team fraud-team owns" in answer["message"] and not mlflow.received
    assert "refused dave POST /ajax-api/2.0/mlflow/upload-artifact (route /ajax-api/2.0/mlflow/upload-artifact): " \
           "403 dave may not change" in caplog.text


def test_an_unclassified_route_is_refused_by_name_and_logged(caplog):
    caplog.set_level(logging.WARNING, "datalab.registry")
    status, answer, mlflow = call("alice", "DELETE", "api/2.0/mlflow/runs/get", {"run_id": "r5"})
    assert status == 403 and "DELETE /api/2.0/mlflow/runs/get is no route" in answer["message"]
    assert not mlflow.received and "refused alice DELETE /api/2.0/mlflow/runs/get: 403" in caplog.text


def test_the_webhook_attack_never_reaches_mlflow():
    status, answer, mlflow = call("dave", "PATCH", "api/2.0/mlflow/webhooks/w1", {"experiment_id": "9"})
    assert status == 403 and "is the platform's" in answer["message"] and not mlflow.received


def test_a_sealed_runs_artifacts_and_evaluation_tag_stay_as_registered():
    status, answer, _ = call("bob", "PUT", "api/2.0/mlflow-artifacts/artifacts/5/r5/artifacts/evaluation/e.parquet",
                             b"PAR1 other rows")
    assert status == 403 and "the artifacts of fraud-detector v3 are sealed" in answer["message"]
    status, answer, _ = call("bob", "POST", "api/2.0/mlflow/runs/set-tag",
                             {"run_id": "r5", "key": "datalab.evaluation", "value": "easy.parquet"})
    assert status == 403 and "stays 'evaluation/e.parquet'" in answer["message"]
    status, _, _ = call("bob", "PUT", "api/2.0/mlflow-artifacts/artifacts/9/r9/artifacts/x.bin", b"x")
    assert status == 403  # not bob's team's
    status, _, mlflow = call("dave", "PUT", "api/2.0/mlflow-artifacts/artifacts/9/r9/artifacts/x.bin", b"x")
    assert status == 200 and mlflow.received[0][3] == b"x"  # the file's bytes, untouched


def test_the_production_version_is_found_and_spared():
    status, answer, mlflow = call("bob", "DELETE", "api/2.0/mlflow/model-versions/delete",
                                  {"name": "fraud-detector", "version": "3"})
    assert status == 403 and "fraud-detector v3 serves production" in answer["message"] and not mlflow.received
    status, answer, _ = call("bob", "POST", "api/2.0/mlflow/runs/delete", {"run_id": "r5"})
    assert status == 403 and "rename run r5" in answer["message"]
    status, _, mlflow = call("alice", "DELETE", "api/2.0/mlflow/model-versions/delete",
                             {"name": "fraud-detector", "version": "3"})
    assert status == 200 and mlflow.received


def test_with_others_none_version_searches_list_only_what_ones_teams_own():
    closed = tenancy.Policy(teams=POLICY.teams, others="none")
    status, answer, _ = call("bob", "GET", "api/2.0/mlflow/model-versions/search", policy=closed)
    assert status == 200 and answer["model_versions"] == [{"name": "fraud-detector"}]
    status, answer, _ = call("dave", "GET", "api/2.0/mlflow/model-versions/search", policy=closed)
    assert answer["model_versions"] == [{"name": "aml-model"}]


def test_an_owner_mlflow_cannot_name_fails_closed():
    status, answer, mlflow = call("bob", "POST", "api/2.0/mlflow/runs/log-metric",
                                  {"run_id": "r5", "key": "k", "value": 1}, mlflow=FakeMlflow(down=True))
    assert status == 503 and "cannot tell who owns this now" in answer["message"] and not mlflow.received


@pytest.mark.parametrize("path", ["api/2.0/mlflow/runs/get?run_id=r5&run_uuid=r9",
                                  "get-artifact?run_id=r9&run_uuid=r5&path=x"])
def test_ids_that_disagree_are_refused(path):
    status, answer, _ = call("dave", "GET", path)
    assert status == 400 and "disagree" in answer["message"]


class StreamingMlflow:
    """An MLflow that takes uploads and serves downloads a chunk at a time, and tells when each chunk passed."""

    def __init__(self):
        self.upload_started, self.chunk_read, self.uploaded = asyncio.Event(), asyncio.Event(), bytearray()

    def app(self):
        fake = self

        @web.stream_request_body
        class Artifact(web.RequestHandler):
            def data_received(self, chunk):
                fake.uploaded += chunk
                fake.upload_started.set()

            def put(self, path):
                self.finish({})

            async def get(self, path):
                self.set_header("Content-Length", str(2 * len(CHUNK)))
                self.write(CHUNK)
                await self.flush()
                # the second chunk only once the caller has the first: a gateway that reads
                # the whole answer before passing it on never gets it
                await asyncio.wait_for(fake.chunk_read.wait(), 10)
                self.finish(CHUNK)

        # the gateway's lookups (whose run r9 is) answered as FakeMlflow answers them
        return web.Application([(r"/api/2.0/mlflow-artifacts/artifacts/(.*)", Artifact),
                                (r"/api/2.0/mlflow/(.*)", FakeMlflow().handler())])


CHUNK = b"x" * (256 << 10)
ARTIFACT = "api/2.0/mlflow-artifacts/artifacts/9/r9/artifacts/model.bin"


async def streaming_gateway(mlflow):
    sockets = [bind_unused_port() for _ in range(2)]
    url = f"http://127.0.0.1:{sockets[0][1]}"
    servers = [HTTPServer(mlflow.app()),
               HTTPServer(web.Application([(r"/services/registry/(.*)", AsCaller)], owners=owners.Owners(url),
                                          mlflow_url=url, policy=POLICY))]
    for server, (sock, _) in zip(servers, sockets):
        server.add_sockets([sock])
    return servers, f"http://127.0.0.1:{sockets[1][1]}/services/registry/"


def test_an_upload_reaches_mlflow_while_the_caller_is_still_sending():
    mlflow = StreamingMlflow()

    async def run():
        servers, base = await streaming_gateway(mlflow)

        async def body(write):
            await write(CHUNK)
            # MLflow hears of the file before its end is sent: the gateway holds no whole file
            await asyncio.wait_for(mlflow.upload_started.wait(), 10)
            await write(CHUNK)

        try:
            return await httpclient.AsyncHTTPClient().fetch(
                base + ARTIFACT, method="PUT", headers={"X-Caller": "dave", "Content-Length": str(2 * len(CHUNK))},
                body_producer=body, raise_error=False, request_timeout=30)
        finally:
            for server in servers:
                server.stop()

    response = asyncio.run(run())
    assert response.code == 200 and bytes(mlflow.uploaded) == 2 * CHUNK


async def read_answer(reader):
    """(status, JSON body) of one HTTP/1.1 answer on a raw connection."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = int(next(line.split(":", 1)[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
    return int(head.split()[1]), json.loads(await reader.readexactly(length))


def test_an_upload_refused_on_its_headers_is_answered_after_its_body_and_the_connection_lives():
    """Tornado closes the connection on an answer sent before the body is read; the hub's proxy, still
    sending the body, got a reset and showed a 503 page instead of the 403. The refused body is read first."""
    mlflow = StreamingMlflow()

    async def run():
        servers, base = await streaming_gateway(mlflow)
        port, path = base.split(":")[2].split("/", 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
        try:
            # bob (fraud-team) writes into aml-team's run, 2 MiB sent a chunk at a time
            writer.write(f"PUT /{path}{ARTIFACT} HTTP/1.1\r\nHost: x\r\nX-Caller: bob\r\n"
                         f"Content-Length: {8 * len(CHUNK)}\r\n\r\n".encode())
            for _ in range(8):
                writer.write(CHUNK)
                await writer.drain()
            refused = await asyncio.wait_for(read_answer(reader), 10)
            # the same connection takes the next request: nothing of the first body was left unread
            writer.write(f"GET /{path}no-such-route HTTP/1.1\r\nHost: x\r\nX-Caller: bob\r\n\r\n".encode())
            await writer.drain()
            return refused, await asyncio.wait_for(read_answer(reader), 10)
        finally:
            writer.close()
            for server in servers:
                server.stop()

    (status, answer), (again, next_answer) = asyncio.run(run())
    assert (status, again) == (403, 403) and "bob may not" in answer["message"], answer
    assert "GET /no-such-route is no route" in next_answer["message"]
    assert not mlflow.uploaded


def test_a_download_reaches_the_caller_while_mlflow_is_still_sending():
    mlflow = StreamingMlflow()
    received = bytearray()

    def on_chunk(chunk):
        received.extend(chunk)
        mlflow.chunk_read.set()

    async def run():
        servers, base = await streaming_gateway(mlflow)
        try:
            return await httpclient.AsyncHTTPClient().fetch(
                base + ARTIFACT, headers={"X-Caller": "dave"}, streaming_callback=on_chunk, raise_error=False,
                request_timeout=30)
        finally:
            for server in servers:
                server.stop()

    response = asyncio.run(run())
    assert response.code == 200 and bytes(received) == 2 * CHUNK
    assert response.headers["Content-Length"] == str(2 * len(CHUNK))
    assert response.headers["Content-Security-Policy"] == "sandbox"


def test_json_bodies_past_the_limit_are_refused_by_size(monkeypatch):
    monkeypatch.setattr(gateway, "LARGEST_FIELDS", 1000)
    big = {"run_id": "r5", "key": "k", "value": 1, "pad": "x" * 2000}
    status, answer, mlflow = call("bob", "POST", "api/2.0/mlflow/runs/log-metric", big)
    assert (status, answer["error_code"]) == (413, "REQUEST_LIMIT_EXCEEDED") and not mlflow.received
    assert "takes at most 1000 bytes of JSON" in answer["message"]
