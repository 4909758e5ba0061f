"""Which volumes a user's containers (notebook servers and jobs) mount."""

from dockerspawner import DockerSpawner

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
