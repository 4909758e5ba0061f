"""Profile checks of DataLabSpawner, with a stand-in user (groups only)."""


import asyncio

import pytest
from tornado import web

from datalab import hubsettings, manifest, settings as settings_mod
from datalab_hub import containers
from datalab_hub import spawner as spawner_mod
from datalab_hub.spawner import DataLabSpawner

PROFILES = hubsettings.profiles(settings_mod.defaults(), manifest.load(), {"python": "p:1", "datascience": "d:1", "tensorflow": "t:1"})


def spawner_for(*groups, runtimes=("runc",)):
    sp = DataLabSpawner(profiles=PROFILES)
    sp.user_group_names = lambda: set(groups)

    async def docker(method, *args, **kwargs):  # the engine's `info`, faked
        assert method == "info"
        return {"Runtimes": {r: {} for r in runtimes}}

    sp.docker = docker
    return sp


def form(sp, **data):
    return asyncio.run(sp.options_from_form({k: [v] for k, v in data.items()}))


def test_form_offers_only_what_the_groups_allow():
    form = spawner_for("datascientists").render_form(None)
    assert 'value="tensorflow"' in form and 'value="tensorflow-gpu"' not in form
    gpu_form = spawner_for("datascientists", "gpu-users").render_form(None)
    assert 'value="tensorflow-gpu"' in gpu_form and "not built on this lab" in gpu_form
    assert "6G memory" in form and "TensorFlow 2.21 (CPU)" in form


def test_posted_profile_outside_the_groups_is_a_clear_400():
    sp = spawner_for("datascientists")
    with pytest.raises(web.HTTPError) as err:
        form(sp, profile="tensorflow-gpu")
    assert err.value.status_code == 400
    assert "not allowed for your groups" in err.value.log_message
    with pytest.raises(web.HTTPError, match="not a profile of this lab"):
        form(sp, profile="bitcoin-miner")
    assert form(sp, profile="tensorflow") == {"profile": "tensorflow"}
    assert form(sp) == {"profile": "python"}


def test_gpu_profile_without_gpu_runtime_fails_before_anything_starts():
    with pytest.raises(web.HTTPError) as err:
        form(spawner_for("gpu-users"), profile="tensorflow-gpu")
    assert err.value.status_code == 503 and "no GPU runtime" in err.value.log_message


def test_unbuilt_profile_says_how_to_build_it():
    with pytest.raises(web.HTTPError, match="datalab images build tensorflow-gpu"):
        form(spawner_for("gpu-users", runtimes=("runc", "nvidia")), profile="tensorflow-gpu")


def test_gpu_profiles_ask_docker_for_gpus():
    gpu = next(p for p in PROFILES if p["name"] == "tensorflow-gpu")
    request = containers.gpu_request(gpu["gpus"])["device_requests"][0]
    assert request["Count"] == 1 and request["Capabilities"] == [["gpu"]]
    assert containers.gpu_request(PROFILES[0]["gpus"]) == {}


def test_start_returns_once_the_server_listens_not_a_backoff_later():
    """The server's port opens while the spawner waits: it returns at once (a few polls
    later), where JupyterHub's own check, backing off to 5 s, would look again seconds later."""
    sp = DataLabSpawner(listen_poll_interval=0.05, http_timeout=30)

    async def run():
        probe = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()  # the port is free: nothing listens yet
        waiting = asyncio.ensure_future(sp.wait_until_listening("127.0.0.1", port))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        opened = asyncio.get_running_loop().time()
        await waiting
        waited = asyncio.get_running_loop().time() - opened
        server.close()
        return waited

    assert asyncio.run(run()) < 1.0


async def closed_port():
    probe = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    return port


def test_a_server_whose_container_exits_while_starting_fails_at_once_not_after_http_timeout(monkeypatch):
    monkeypatch.setattr(spawner_mod, "EXIT_POLL_INTERVAL", 0.1)
    sp = DataLabSpawner(listen_poll_interval=0.05, http_timeout=30)
    states = iter([{"Running": True}, {"Running": False, "ExitCode": 1, "Error": "", "FinishedAt": "t"}])

    async def get_object():  # running at the first look, exited (a broken ~/.jupyter config) at the second
        return {"State": next(states)}

    sp.get_object = get_object

    async def run():
        started = asyncio.get_running_loop().time()
        with pytest.raises(web.HTTPError) as err:
            await sp.wait_until_listening("127.0.0.1", await closed_port())
        return err.value, asyncio.get_running_loop().time() - started

    err, waited = asyncio.run(run())
    assert err.status_code == 500 and "stopped while starting (ExitCode=1" in err.log_message
    assert waited < 2


def test_a_user_starts_one_server_at_a_time():
    """A user's pending starts all count against the hub's concurrent_spawn_limit: one user
    with stalling starts of every named server would hold all the slots."""
    class Other:
        name, pending = "gpu", "spawn"

    sp = DataLabSpawner(profiles=PROFILES)
    sp.user = type("User", (), {"name": "alice", "spawners": {"gpu": Other, "": sp}})()
    with pytest.raises(web.HTTPError) as err:
        asyncio.run(sp.start())
    assert err.value.status_code == 429 and "Your server gpu is still starting" in err.value.log_message
    Other.pending = None  # it is ready: this start goes on (to the profile check, here)
    sp.user_group_names = lambda: set()
    with pytest.raises(web.HTTPError, match="None of your groups may start"):
        asyncio.run(sp.start())


def test_starts_beyond_the_limit_wait_in_line_and_the_spawn_page_shows_their_place(monkeypatch):
    monkeypatch.setattr(DataLabSpawner, "_turns", None)
    first, second, third = (DataLabSpawner(starts_at_once=1) for _ in range(3))
    for sp in (first, second, third):
        sp._spawn_pending = True  # as JupyterHub sets it while a start is on

    async def run():
        release_first = asyncio.Event()

        async def hold(sp, until):
            async with sp.start_turn():
                await until.wait()

        starting = asyncio.ensure_future(hold(first, release_first))
        waiting = [asyncio.ensure_future(hold(sp, asyncio.Event())) for sp in (second, third)]
        await asyncio.sleep(0.01)
        shown = [(await sp.progress().__anext__())["message"] for sp in (second, third)]
        release_first.set()
        await starting
        await asyncio.sleep(0.01)
        shown.append((await third.progress().__anext__())["message"])
        started = second.waiting_turn is None and not waiting[0].done()  # its turn came: it is starting
        for task in waiting:
            task.cancel()
        return shown, started

    shown, started = asyncio.run(run())
    assert shown == [f"Waiting for a turn to start: number {n} in line (the lab starts 1 at a time)."
                     for n in (1, 2, 1)]
    assert started


def test_a_start_whose_wait_outlived_jupyterhubs_patience_makes_no_container(monkeypatch):
    monkeypatch.setattr(DataLabSpawner, "_turns", None)
    holder, late = DataLabSpawner(starts_at_once=1), DataLabSpawner(starts_at_once=1)
    holder._spawn_pending = late._spawn_pending = True

    async def run():
        release = asyncio.Event()

        async def hold():
            async with holder.start_turn():
                await release.wait()

        async def start_late():
            async with late.start_turn():
                return "container made"

        holding = asyncio.ensure_future(hold())
        await asyncio.sleep(0.01)
        starting = asyncio.ensure_future(start_late())
        await asyncio.sleep(0.01)
        late._spawn_pending = False  # JupyterHub gave up (start_timeout), reported it, and stopped it
        release.set()
        await holding
        with pytest.raises(web.HTTPError) as err:
            await starting
        return err.value, DataLabSpawner._turns

    err, turns = asyncio.run(run())
    assert err.status_code == 503 and "waited too long for a turn" in err.log_message
    assert turns.taken == 0 and not turns.waiting  # and its turn went back


def test_a_profiles_environment_is_its_starts_only_and_under_the_platforms(monkeypatch):
    from dockerspawner import DockerSpawner

    monkeypatch.setattr(DockerSpawner, "get_env", lambda self: {"JUPYTERHUB_API_TOKEN": "server-token",
                                                                "MLFLOW_TRACKING_URI": "http://hub:8091"})
    sp = spawner_for("datascientists")
    sp.api_token = "server-token"
    sp.profile = {**PROFILES[0], "environment": {"FRAUD_DESK": "analytics", "MLFLOW_TRACKING_URI": "http://evil"}}
    env = sp.get_env()
    assert env["FRAUD_DESK"] == "analytics" and env["DATALAB_PROFILE"] == "python"
    assert env["MLFLOW_TRACKING_URI"] == "http://hub:8091"  # the platform's wins
    sp.profile = {**PROFILES[1], "environment": {}}  # the next start, another profile
    env = sp.get_env()
    assert "FRAUD_DESK" not in env and env["DATALAB_PROFILE"] == "datascience"


def test_a_server_started_behind_another_front_door_counts_as_stopped_once_the_hub_restarts():
    class User:
        name = "alice"

        def __init__(self, url):
            self.url = url

        def public_url(self, server_name=""):
            return self.url

    def restarted_hub_polls(started_behind, now, running=True):
        sp = DataLabSpawner(profiles=PROFILES, user=User(now))

        async def get_object():
            return {"State": {"Running": running, "ExitCode": 0, "Error": "", "FinishedAt": "t"},
                    "Config": {"Env": ["PATH=/bin", f"JUPYTERHUB_PUBLIC_URL={started_behind}"]}}

        sp.get_object = get_object
        return asyncio.run(sp.poll()), asyncio.run(sp.poll())

    https = "https://alice.lab.example:8000/user/alice/"
    http = "http://alice.lab.example:8000/user/alice/"
    first, second = restarted_hub_polls(started_behind=http, now=https)
    assert first == f"started behind another front door ({http})"  # JupyterHub stops it
    assert second is None  # checked on a hub process's first poll only: later polls cost no more than before
    assert restarted_hub_polls(started_behind=https, now=https) == (None, None)
    # an older server whose start left no public URL is not stopped for it
    assert restarted_hub_polls(started_behind="", now=https) == (None, None)
    assert restarted_hub_polls(started_behind=http, now=https, running=False)[0].startswith("ExitCode=0")
