"""A login wave slows the lab down, it does not restart it: twenty users log in
and start servers at once; the hub stays up (same task), every one of them is
served, in turns (the spawn page showing their place in line), and nobody gets
a 5xx from the proxy."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import RequestLoad
from directory import add_users, remove_users

from datalab_hub.spawner import IN_LINE

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
        return throttled, time.monotonic() - started, s.progress_messages

    # the hub's health through the proxy, all along: a 5xx means the hub was unreachable
    with RequestLoad(lambda: probe.get(lab.url + "/hub/health", timeout=30), pause=0.5) as health:
        with ThreadPoolExecutor(len(WAVE)) as pool:
            outcomes = list(pool.map(log_in_and_start, WAVE))

    throttled = sum(1 for told, _, _ in outcomes if told)
    seconds = sorted(s for _, s, _ in outcomes)
    in_line = [name for name, (_, _, said) in zip(WAVE, outcomes)
               if any(m.startswith(IN_LINE) for m in said)]
    print(f"\n20 at once: all served, {throttled} told to retry first, {len(in_line)} shown their place in "
          f"line; login → ready p50 {seconds[len(seconds) // 2]:.1f} s, max {seconds[-1]:.1f} s")
    # 20 fit in the line (hub.spawn_queue, 40) beside those starting: nobody is sent away to retry,
    # and those waiting (20 beyond three starts per two cores, on any machine under 13 cores) see their place
    assert throttled == 0
    assert in_line or len(os.sched_getaffinity(0)) >= 13, "nobody was shown a place in line"
    assert not health.failures, f"the hub was unreachable through the proxy: {health.failures[:10]}"
    assert health.answered
    assert hub_task(lab) == task_before and lab.service_container("hub") == container_before, "the hub was restarted"


STALLING_CONFIG = "import time\ntime.sleep(600)  # a server reading this never opens its port\n"


def test_one_users_stalling_starts_do_not_hold_the_labs_start_slots(lab):
    """alice (who controls her own home) writes a ~/.jupyter config that hangs, then asks for her
    default and every named server at once. Her four stalled starts held all of the hub's start
    slots (4 on a 2-core node then), and bob was told "too many users" for http_timeout; with
    starts waiting in line, they would hold every turn (3 now) and bob would wait behind them.
    One start at a time per user now."""
    alice = lab.fresh_server("alice")
    home = lab.notebook_container("alice")
    config = "/home/jovyan/.jupyter/jupyter_server_config.py"
    lab.exec(home, "sh", "-c", f"mkdir -p /home/jovyan/.jupyter && printf '%s' '{STALLING_CONFIG}' > {config}")
    alice.stop("alice")
    names = ["", "s1", "s2", "s3"]  # named_servers = 3 besides the default one
    try:
        answers = [alice.hub_api(f"/users/alice/servers/{name}" if name else "/users/alice/server",
                                 method="POST", json={"profile": "python"}) for name in names]
        assert answers[0].status_code == 202, answers[0].text  # pending: stalled in her config
        for name, answer in zip(names[1:], answers[1:]):
            assert answer.status_code == 429, f"{name}: {answer.status_code} {answer.text[:300]}"
            assert "Your server (default) is still starting" in answer.json()["message"]
        # everyone else still starts
        lab.fresh_server("bob")
    finally:
        stalled = lab.notebook_container("alice")
        if stalled:  # her config goes (the home is hers), then the stalled server
            lab.exec(stalled, "rm", "-f", config, check=False)
            lab.docker.run("rm", "-f", stalled["Id"], check=False)
        for name in names[1:]:  # a named server asked for stays on her list until removed
            alice.hub_api(f"/users/alice/servers/{name}", method="DELETE", json={"remove": True})
    # a server whose container went away fails at once, not after http_timeout (120 s)
    lab.wait_for(lambda: not (alice.hub_api("/users/alice").json().get("servers") or {}),
                 "alice's stalled start failing once its container is gone", timeout=15)
    named = alice.hub_api("/users/alice?include_stopped_servers=1").json().get("servers") or {}
    assert set(named) <= {""}, f"named servers left on alice's list: {sorted(named)}"
    alice.start("alice")  # and she starts again, with her config gone
