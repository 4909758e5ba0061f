"""A redis-server of the tests' own, for the modules that need Redis but not
the lab (test_feature_store.py, test_scoring_features.py): Debian's
redis-server, which `make test` installs, in a directory of the test's on a
free loopback port. `server` is a module-scoped fixture of one without
persistence; import it into the module to use it."""

import shutil
import signal
import socket
import subprocess
import time

import pytest
import redis


class RedisServer:
    """A redis-server of our own in `directory`, on a free loopback port;
    with `password`, as the lab's feature store has (requirepass)."""

    def __init__(self, directory, *options, password=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.directory, self.options, self.password, self.process = directory, options, password, None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        binary = shutil.which("redis-server")
        assert binary, "redis-server (Debian's package) is installed by `make test`"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--logfile", "redis.log", *self.options, *(("--requirepass", self.password) if self.password else ())])
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"redis-server did not start: see {self.directory}/redis.log") from None
                time.sleep(0.05)

    def stop(self):
        self.process.send_signal(signal.SIGCONT)  # a paused one would not hear SIGTERM
        self.process.terminate()  # SIGTERM: Redis shuts down cleanly (the append-only file flushed)
        self.process.wait(timeout=10)

    def pause(self):
        """Freeze the server (SIGSTOP): it accepts connections (the kernel does) but answers nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), "--save", "", "--appendonly", "no")
    server.start()
    yield server
    server.stop()
