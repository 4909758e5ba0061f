"""A login wave slows the lab down, it does not restart it: twenty users log in
and start servers at once; the hub stays up (same task), every one of them is
served or told to retry (429), and nobody gets a 5xx from the proxy."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import RequestLoad
from directory import add_users, remove_users

pytestmark = pytest.mark.integration

WAVE = [f"wave{i:02d}" for i in range(1, 21)]


@pytest.fixture
def wave_users(lab):
    passwords = add_users(lab.docker, lab.settings, WAVE)
    yield passwords
    carol = lab.login("carol")
    with ThreadPoolExecutor(5) as pool:  # their servers go; the lab's memory is the rest of the suite's
        list(pool.map(lambda name: carol.hub_api(f"/users/{name}/server", method="DELETE"), WAVE))
    lab.wait_for(lambda: not any((carol.hub_api(f"/users/{n}").json().get("servers") or {}) for n in WAVE),
                 "the wave's servers stopped", timeout=180)
    remove_users(lab.docker, lab.settings, WAVE)


def hub_task(lab):
    return lab.docker.out("service", "ps", "-q", "--filter", "desired-state=running", f"{lab.name}_hub")


def test_twenty_logins_at_once_are_served_in_turn_and_the_hub_stays_up(lab, wave_users):
    task_before, container_before = hub_task(lab), lab.service_container("hub")
    probe = requests.Session()

    def log_in_and_start(name):
        s = lab.session()
        started = time.monotonic()
        r = s.login(name, wave_users[name])
        assert r.status_code == 200, f"{name}: login answered {r.status_code} {r.text[:300]}"
        throttled = s.start_when_allowed(name, "python", timeout=400)
        return throttled, time.monotonic() - started

    # the hub's health through the proxy, all along: a 5xx means the hub was unreachable
    with RequestLoad(lambda: probe.get(lab.url + "/hub/health", timeout=30), pause=0.5) as health:
        with ThreadPoolExecutor(len(WAVE)) as pool:
            outcomes = list(pool.map(log_in_and_start, WAVE))

    throttled = sum(1 for told, _ in outcomes if told)
    seconds = sorted(s for _, s in outcomes)
    print(f"\n20 at once: all served, {throttled} told to retry first; login → ready "
          f"p50 {seconds[len(seconds) // 2]:.1f} s, max {seconds[-1]:.1f} s")
    assert not health.failures, f"the hub was unreachable through the proxy: {health.failures[:10]}"
    assert health.answered
    assert hub_task(lab) == task_before and lab.service_container("hub") == container_before, "the hub was restarted"
