"""The integration suite runs against a real lab of its own ("dltest", hub on
port 18000, scoring edge on 18500, data in a temporary directory) that
`datalab up` brings up, clean, once per session and `datalab down --purge`
removes at the end. Set DATALAB_KEEP_TEST_LAB=1 to leave it running after
the tests, to look at it."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from urllib3.util.retry import Retry

sys.path.insert(0, str(Path(__file__).parent))
from hubclient import HubSession  # noqa: E402

from datalab import image_registry, settings as settings_mod  # noqa: E402
from datalab.docker import Docker  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATALAB = [sys.executable, "-m", "datalab.cli"]
TEST_DATA_DIR = Path(os.environ.get("DATALAB_TEST_DATA_DIR", "/tmp/datalab-test-lab"))


# Tests that change the shared lab run after those that need it as `up` left
# it, whatever their files are called (markers declared in pyproject.toml).
LATE_MARKERS = ("multinode", "disruptive", "stops_lab")


def pytest_collection_modifyitems(items):
    def phase(item):
        marked = [i for i, name in enumerate(LATE_MARKERS, 1) if item.get_closest_marker(name)]
        return max(marked, default=0)
    items.sort(key=phase)  # stable: file order within a phase


class Lab:
    def __init__(self, settings_path):
        self.settings_path = settings_path
        self.settings = settings_mod.load(settings_path)
        self.name = self.settings.lab
        self.url = self.settings.hub_url.rstrip("/")
        self.docker = Docker(self.settings)
        self.logins = json.loads((self.settings.data_dir / "secrets" / "demo-logins.json").read_text())
        self._registry_tokens = {}
        self.edge = self.settings.scoring_url

    def datalab(self, *args, check=True, timeout=900):
        proc = subprocess.run(
            DATALAB + ["--settings", str(self.settings_path), *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"datalab {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def session(self):
        s = HubSession(self.url, self.settings["hub"]["per_user_origins"])
        if self.settings["hub"]["https"]:  # the lab's own CA (REQUESTS_CA_BUNDLE would take its place)
            s.http.verify, s.http.trust_env = str(self.settings.data_dir / "secrets" / "ca.crt"), False
        return s

    def service_url(self, name):
        return self.settings.service_url(name).rstrip("/")

    def login(self, user):
        s = self.session()
        r = s.login(user, self.logins[user])
        assert r.status_code == 200, f"{user} could not log in: {r.status_code} {r.text[:300]}"
        return s

    def service_container(self, service):
        ids = self.service_containers(service)
        assert ids, f"no running container for {service}"
        return ids[0]

    repo = REPO

    def mlflow_api(self, path):
        """GET MLflow's REST API from inside the hub's container (MLflow is not published)."""
        script = ("import urllib.request; "
                  f"print(urllib.request.urlopen('http://mlflow:5000/api/2.0/mlflow/{path}', timeout=30).read().decode())")
        return json.loads(self.docker.out("exec", self.service_container("hub"), "python3", "-c", script))

    def registry(self, user, method, endpoint, body=None):
        """MLflow's REST API through the registry gateway, as `user` (a token of theirs)."""
        from datalab import promotion

        if user not in self._registry_tokens:
            self._registry_tokens[user] = promotion.user_token(self.settings, user, minutes=120)
        return promotion.registry_api(self.settings, self._registry_tokens[user], method, endpoint, body)

    def fresh_server(self, user, profile=None, server=""):
        """Log in, stop `server` if it runs, start it with `profile`; returns the session."""
        s = self.login(user)
        if server in (s.hub_api(f"/users/{user}").json().get("servers") or {}):
            s.stop(user, server)
        s.start(user, profile, server)
        return s

    def exec(self, container, *cmd, check=True):
        """Run a command in a container as its own user; returns the CompletedProcess."""
        cid = container["Id"] if isinstance(container, dict) else container
        return self.docker.run("exec", cid, *cmd, check=check)

    def service_containers(self, service):
        return self.docker.local_containers(f"{self.name}_{service}")

    def wait_for(self, predicate, what, timeout=120):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not after {timeout}s")
            time.sleep(0.5)

    def notebook_container(self, user, server=""):
        name = f"{self.name}-{user}" + (f"--{server}" if server else "")
        found = self.docker.inspect("container", name)
        return found[0] if found else None

    def wait_healthy(self, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = json.loads(self.datalab("status", "--json").stdout)["services"]
            if rows and all(r["health"] == "idle" or (r["state"] == "running" and r["health"] == "healthy")
                            for r in rows):
                try:
                    if self.session().http.get(self.url + "/hub/health", timeout=3).ok:
                        return rows
                except OSError:
                    pass
            time.sleep(1)
        raise TimeoutError(f"lab not healthy after {timeout}s: {rows}")


class RequestLoad:
    """A steady stream of requests in a thread, for `with` blocks: `send()` makes
    one request; 200s are `answered`, anything else (status or error) a failure."""

    def __init__(self, send, pause=0.02):
        self.send, self.pause = send, pause
        self.answered, self.failures = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        while not self._stop.is_set():
            try:
                r = self.send()
                (self.answered if r.status_code == 200 else self.failures).append(r.status_code)
            except requests.RequestException as e:
                self.failures.append(repr(e))
            time.sleep(self.pause)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class ScoringLoad(RequestLoad):
    """Scoring requests as a payment switch sends them: an idempotent API, so it
    reconnects and retries once when a connection drops (a request in flight on a
    killed task can)."""

    def __init__(self, url, example, pause=0.02):
        http = requests.Session()
        http.mount("http://", HTTPAdapter(max_retries=Retry(total=1, connect=1, read=1, status=0,
                                                            allowed_methods={"POST"})))
        super().__init__(lambda: http.post(url, json=example, timeout=10), pause)


def browser_login(browser, lab, user, timeout=60):
    """Log `user` in through the hub's login form, in the browser, and wait until the
    hub has let them in (it sends them on to the spawn form, or to their running
    server on its own origin)."""
    browser.get(lab.url + "/hub/login")
    browser.find_element(By.ID, "username_input").send_keys(user)
    browser.find_element(By.ID, "password_input").send_keys(lab.logins[user])
    browser.find_element(By.ID, "login_submit").click()
    WebDriverWait(browser, timeout).until(lambda b: "/hub/login" not in b.current_url)


def notebook(*cells, params="", kernel="datascience-py3.11"):
    def cell(source, tags=()):
        return {"cell_type": "code", "execution_count": None, "metadata": {"tags": list(tags)},
                "outputs": [], "source": source}
    return {"nbformat": 4, "nbformat_minor": 5, "cells": [cell(params, ["parameters"])] + [cell(c) for c in cells],
            "metadata": {"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}}}


@pytest.fixture
def jobs(lab, tmp_path):
    for user in ("alice", "bob"):  # users exist in the hub once they have logged in
        lab.login(user)

    class Jobs:
        def write(self, name, nb):
            path = tmp_path / name
            path.write_text(json.dumps(nb))
            return str(path)

        def cli(self, *args, check=True):
            return lab.datalab("jobs", *args, check=check)

        def submit(self, name, nb, *args, user="alice", check=True):
            proc = self.cli("submit", self.write(name, nb), "--as", user, "--json", *args, check=check)
            return json.loads(proc.stdout) if proc.returncode == 0 else proc

        def show(self, job_id):
            return json.loads(self.cli("show", job_id, "--json").stdout)

        def wait(self, job_id, statuses=("succeeded", "failed", "cancelled", "timed out"), timeout=240):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                job = self.show(job_id)
                if job["status"] in statuses:
                    return job
                time.sleep(1)
            raise TimeoutError(f"job {job_id} still {job['status']}")

    return Jobs()


MODEL = "fraud-test"  # registered by the reference workload (test_jobs.py), or by model_v1 if missing


def registered_versions(lab, name):
    found = lab.mlflow_api(f"model-versions/search?filter=name%3D%27{name}%27&max_results=1000")
    return {v["version"] for v in found.get("model_versions", [])}


# The suites' models take the 15 features, as the scoring, registry and promotion
# tests send them; raw transactions and the feature store: test_scoring_raw_lab.py.
RAW_INPUT_OFF = ("-p", "feature_set", "")
SMALL_REFERENCE = ("-p", "n_customers", "400", "-p", "n_terminals", "800", "-p", "nb_days", "60",
                   "-p", "train_start_day", "35", "-p", "epochs", "10", "-p", "batch_size", "64")


def run_job(lab, notebook, *params, timeout=1200):
    path = lab.settings.data_dir / f"job-{time.monotonic_ns()}.ipynb"
    path.write_text(json.dumps(notebook))
    proc = lab.datalab("jobs", "submit", str(path), "--as", "alice", "--profile", "tensorflow", "--timeout",
                       str(timeout), "--wait", "--json", *params, timeout=timeout + 60)
    job = json.loads(proc.stdout)
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="session")
def model_v1(lab):
    """The first version of MODEL, trained by the reference workload at a small size."""
    lab.login("alice")
    if not registered_versions(lab, MODEL):
        notebook = json.loads((REPO / "pipelines" / "notebooks" / "fraud_reference.ipynb").read_text())
        run_job(lab, notebook, *SMALL_REFERENCE, "-p", "register_model", MODEL, *RAW_INPUT_OFF)
    return min(registered_versions(lab, MODEL), key=int)


@contextlib.contextmanager
def chromium(*extra_flags):
    """Debian's chromium, headless, through chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver are installed by `make test`"
    profile = tempfile.mkdtemp(prefix="datalab-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                 f"--user-data-dir={profile}", *extra_flags):
        options.add_argument(flag)
    b = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield b
    finally:
        b.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="session")
def lab():
    TEST_DATA_DIR.mkdir(parents=True, exist_ok=True)
    settings_path = TEST_DATA_DIR.parent / "datalab-test-settings.toml"
    settings_path.write_text(
        "[lab]\n"
        'name = "dltest"\n'
        f'data_dir = "{TEST_DATA_DIR}"\n'
        "demo = false\n"  # the tests train and promote their own models
        "[hub]\n"
        "port = 18000\n"
        # groups read again within seconds: test_group_changes.py waits seconds, not minutes
        "auth_refresh_age = 10\n"
        "group_sync_every = 5\n"
        "[scoring]\n"
        "port = 18500\n"
        "[image_registry]\n"
        "port = 15000\n"
        # servers report their activity (busy kernels included) every 4 s: the culler test waits seconds, not minutes
        "[culler]\n"
        "activity_interval = 4\n"
        "[jobs]\n"
        "max_running = 3\n"
        "max_running_per_user = 2\n"
        # models trained in minutes on 2 cores: the gate's absolute floor is lowered,
        # its comparisons with production are not
        "[gate]\n"
        "min_average_precision = 0.1\n"
        "min_recall = 0.02\n"
        # the suites' simulated banks (400 customers, 800 terminals) run about 10% fraud, not a
        # bank's 1%: a model blocks more of them (test_scoring_raw_lab.py judges on one)
        "max_block_rate = 0.1\n"
        "max_false_positive_rate = 0.05\n"
        # a site's own profile, for a group named as corporate directories name them
        # (test_profiles_and_volumes.py): from these settings alone
        "[[profiles]]\n"
        'name = "fraud-analytics"\n'
        'description = "Python with 3 GB, for the fraud analysts"\n'
        'image = "python"\n'
        "cpu = 1.0\n"
        'memory = "3G"\n'
        'groups = ["GRP-Fraud-Analytics"]\n'
        'environment = { FRAUD_DESK = "analytics" }\n'
    )
    # a clean lab every session: whatever an earlier (kept or aborted) run left goes first
    # (DATALAB_REUSE_TEST_LAB=1, with a lab kept by DATALAB_KEEP_TEST_LAB=1: only `up`, for quick reruns)
    if not os.environ.get("DATALAB_REUSE_TEST_LAB"):
        subprocess.run(DATALAB + ["--settings", str(settings_path), "down", "--purge", "--yes"], cwd=REPO,
                       capture_output=True)
    up = subprocess.run(DATALAB + ["--settings", str(settings_path), "up"], cwd=REPO)
    assert up.returncode == 0, "datalab up failed for the test lab"
    the_lab = Lab(settings_path)
    yield the_lab
    if not os.environ.get("DATALAB_KEEP_TEST_LAB"):
        the_lab.datalab("down", "--purge", "--yes")
        left = [v for v in the_lab.docker.out("volume", "ls", "-q").split() if v.startswith(the_lab.name)]
        assert not left, f"purge left volumes behind: {left}"
        assert not the_lab.settings.data_dir.exists()
        assert not image_registry.trust_file(the_lab.settings).exists(), "purge left the lab's CA trusted by the engine"
