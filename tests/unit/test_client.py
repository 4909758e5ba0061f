"""The client library (client/datalab_client) against a real HTTP server of
the test's own: retries, what is never sent twice, the errors' words."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datalab_client import http
from datalab_client.jobs import JobsClient, JobsError


class Service:
    """Answers each request with the next scripted (status, body); records what came."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                service.seen.append((self.command, self.path, self.headers.get("Authorization"),
                                     self.rfile.read(length) if length else b""))
                status, body = service.answers.pop(0) if len(service.answers) > 1 else service.answers[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service(request):
    made = []

    def make(*answers):
        made.append(Service(answers))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_a_read_is_tried_again_while_a_proxy_answers_503(service):
    s = service((503, {"error": "restarting"}), (502, {}), (200, {"jobs": []}))
    assert JobsClient(s.url, "tok").list() == []
    assert [(method, path) for method, path, _, _ in s.seen] == [("GET", "/api/jobs")] * 3
    assert {auth for _, _, auth, _ in s.seen} == {"token tok"}


def test_a_submission_that_reached_the_service_is_never_sent_twice(service):
    s = service((503, {"error": "the hub is restarting"}), (201, {"job": {"id": "j1"}}))
    with pytest.raises(JobsError) as failure:
        JobsClient(s.url, "tok").submit({"cells": []})
    assert (failure.value.status, str(failure.value)) == (503, "the hub is restarting")
    assert len(s.seen) == 1 and json.loads(s.seen[0][3])["notebook"] == {"cells": []}


def test_errors_carry_the_services_own_words_and_a_closed_port_says_so(service):
    s = service((403, {"error": "a JupyterHub token with access to the jobs service is required"}))
    with pytest.raises(http.HTTPError) as failure:
        http.call("GET", s.url + "api/jobs?all=1", "tok")
    assert str(failure.value) == (f"GET {s.url}api/jobs: 403 a JupyterHub token with access to the jobs "
                                  "service is required")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(http.HTTPError) as failure:
        http.call("GET", f"http://127.0.0.1:{port}/hub/health", retries=False)
    assert failure.value.status == 0 and str(failure.value).startswith(f"cannot reach http://127.0.0.1:{port}/hub/health")


def test_services_log_in_one_format_at_the_labs_level(capsys):
    import logging

    from datalab_client import logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure({"DATALAB_LOG_LEVEL": "warning"})
        logging.getLogger("datalab.jobs").info("not shown at WARNING")
        logging.getLogger("datalab.jobs").warning("job j1 lost")
        logs.configure({"DATALAB_LOG_LEVEL": ""})  # a service started without the variable: INFO
        assert root.level == logging.INFO
    finally:  # the test run's own logging as it was (not a handler on this test's captured stderr)
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    shown = capsys.readouterr().err.splitlines()
    assert len(shown) == 1 and shown[0].startswith("[W 20") and shown[0].endswith(" datalab.jobs] job j1 lost")


def test_a_followed_log_arrives_as_the_service_writes_it():
    """The service writes the first lines, then waits until the client has shown them:
    a client that waited for the whole answer would never see it end."""
    shown = threading.Event()

    class Following(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"cell 1\n", None, b"cell 2\n"):
                if piece is None:
                    shown.wait(10)
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Following)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chunks = JobsClient(f"http://127.0.0.1:{server.server_port}/", "tok").logs("j1", follow=True).stream(4096)
        assert next(chunks) == b"cell 1\n"
        shown.set()
        assert b"".join(chunks) == b"cell 2\n"
    finally:
        server.shutdown()
        server.server_close()
