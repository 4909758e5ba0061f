"""Which volumes a user's containers (notebook servers and jobs) mount."""

from dockerspawner import DockerSpawner

from .containers import NOTEBOOK_UID

HOME = "/home/jovyan"


def volume_mounts(spawn, username, groups, admin):
    """{volume name: {"bind": path, "mode": "rw"|"ro"}} for `username`.

    spawn: the hub's runtime settings ("spawner" table of hub.json)."""
    prefix = spawn["prefix"]
    mounts = {f"{prefix}-user-{DockerSpawner._escape(username)}": {"bind": HOME, "mode": "rw"}}
    for team in spawn["teams"]:
        if team in groups:
            mounts[f"{prefix}-team-{team}"] = {"bind": spawn["team_mount"].format(team=team), "mode": "rw"}
    if spawn["datasets_mount"]:
        mounts[f"{prefix}-datasets"] = {"bind": spawn["datasets_mount"], "mode": "rw" if admin else "ro"}
    return mounts


def shared(mounts, prefix):
    """The mounts that are not a user's own home (made on first use)."""
    return [name for name in mounts if not name.startswith(f"{prefix}-user-")]


def ensure_shared(api, name, prefix, image, uid=NOTEBOOK_UID):
    """Create the shared volume `name` on first use, owned by the notebook user.

    api: a docker-py APIClient (blocking; call from a thread in async code).
    Done by a one-shot container with only CAP_CHOWN and no network."""
    import docker.errors

    try:
        api.inspect_volume(name)
        return
    except docker.errors.NotFound:
        pass
    api.create_volume(name=name, labels={"org.datalab.lab": prefix})
    helper = api.create_container(
        image=image, user="0", entrypoint=["chown", f"{uid}:{uid}", "/volume"], labels={"org.datalab.lab": prefix},
        host_config=api.create_host_config(binds={name: {"bind": "/volume", "mode": "rw"}}, cap_drop=["ALL"],
                                           cap_add=["CHOWN"], network_mode="none"),
    )
    try:
        api.start(helper["Id"])
        if api.wait(helper["Id"]).get("StatusCode") != 0:
            raise RuntimeError(f"could not prepare shared volume {name}")
    finally:
        api.remove_container(helper["Id"], force=True)
