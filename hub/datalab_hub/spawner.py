"""DockerSpawner with DataLab's profiles ([[profiles]] settings, via the
runtime settings), container hardening, GPUs and shared volumes."""

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from html import escape

from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Bool, Dict, Float, Int, List, Unicode, default

from . import containers, netpolicy, profiles, turns, volumes

NO_GPU_RUNTIME = (
    "The profile '{name}' needs {gpus} GPU(s), but this lab's Docker engine has no GPU "
    "runtime (the NVIDIA container runtime is not installed on this host). Pick a CPU "
    "profile, or ask an admin to add a GPU node."
)


IN_LINE = "Waiting for a turn to start"  # how the spawn page's message begins while a start waits
EXIT_POLL_INTERVAL = 1.0  # seconds between looks at a starting server's container: has it exited?


class DataLabSpawner(DockerSpawner):
    profiles = List(
        Dict(),
        config=True,
        help="Server profiles, in the order the form shows them: dicts with name, "
        "description, image (None when not built), image_name, kernel, cpu, memory, gpus, "
        "groups (LDAP groups allowed to use it) and environment. Rendered from the "
        "[[profiles]] settings (datalab/schema.py) and images/manifest.toml.",
    )
    pids_limit = Int(
        1024,
        config=True,
        help="Most processes (and threads) one notebook container may run; "
        "stops a fork bomb from taking the host down.",
    )
    team_groups = List(
        Unicode(),
        config=True,
        help="Groups that are teams: each gets a volume that only its members mount, read-write.",
    )
    team_mount_template = Unicode(
        "/home/jovyan/teams/{team}",
        config=True,
        help="Where a team's volume is mounted in its members' servers.",
    )
    datasets_mount = Unicode(
        "/home/jovyan/datasets",
        config=True,
        help="Where the shared datasets volume is mounted: read-only, read-write "
        "for hub admins (who curate it). Empty: not mounted.",
    )
    volume_init_image = Unicode(
        "",
        config=True,
        help="Image used once per new shared volume to hand its root to the "
        "notebook user (uid 1000); any image with chown will do.",
    )
    notebook_uid = Unicode(str(containers.NOTEBOOK_UID), config=True, help="uid:gid that owns new shared volumes.")
    netpolicy_image = Unicode(
        "",
        config=True,
        help="Image (with iptables) of the one-shot container that sets a server's network "
        "rules before it starts (netpolicy.py); the hub's own image.",
    )
    internet = Bool(
        True,
        config=True,
        help="Servers may open connections outside the lab; on the lab network they reach "
        "the hub and its services only, either way.",
    )
    private_networks = List(
        Unicode(),
        config=True,
        help="Private address ranges servers may reach all the same (netpolicy.PRIVATE_NETWORKS "
        "and the lab nodes' own addresses are closed otherwise), e.g. a package mirror's.",
    )
    host_addresses = List(
        Unicode(),
        config=True,
        help="This host's own IPv4 addresses (datalab up lists them), closed to servers "
        "with the Swarm nodes' own: the host's published ports answer on every one.",
    )
    hub_ports = List(
        Int(),
        config=True,
        help="Ports of the hub's API and its services (jobs, registry), the only ones servers "
        "may call on the lab network (datalab up renders them from one definition).",
    )
    listen_poll_interval = Float(
        0.1,
        config=True,
        help="Seconds between checks, right after a server's container starts, that it "
        "accepts connections. JupyterHub's own check backs off from 0.2 s to 5 s, so a "
        "server up after 6 s was seen only at 11.4 s; a refused connection costs the hub "
        "next to nothing.",
    )
    starts_at_once = Int(
        0,
        config=True,
        help="Servers doing the work of starting at once, lab-wide (turns.py); the others "
        "wait in the order they came, the spawn page showing their place. 0: no turns. "
        "JupyterHub's concurrent_spawn_limit, higher, bounds those starting and waiting.",
    )
    docker_api_threads = Int(
        8,
        config=True,
        help="Threads making Docker API calls, shared by every spawner. DockerSpawner's "
        "own single thread serialises every create, start, inspect and poll of every "
        "user: in a login wave each start waited for all the others' calls.",
    )

    @property
    def executor(self):
        cls = DataLabSpawner
        if cls._executor is None:
            cls._executor = ThreadPoolExecutor(self.docker_api_threads, thread_name_prefix="docker-api")
        return cls._executor

    @default("extra_host_config")
    def _hardened_host_config(self):
        # Notebook code never needs Linux capabilities or setuid escalation.
        return containers.hardened(self.pids_limit)

    # ---- profiles -------------------------------------------------------
    def user_group_names(self):
        return {g.name for g in self.user.groups}

    def allowed_profiles(self):
        return profiles.allowed(self.profiles, self.user_group_names())

    async def profile_for(self, name):
        """The profile called `name` if this user may start it here, else an
        HTTP error saying why (before any container is made)."""
        try:
            profile = profiles.choose(self.profiles, self.user_group_names(), name)
            if profile["gpus"]:
                await self.require_gpu_runtime(profile)
            return profiles.require_built(profile)
        except profiles.ProfileError as e:
            raise web.HTTPError(e.status, e.message) from None

    @default("options_form")
    def _profiles_form(self):
        return self.render_form

    def render_form(self, spawner):
        rows = []
        profiles = self.allowed_profiles()
        first_built = next((p["name"] for p in profiles if p.get("image")), None)
        for p in profiles:
            gpu = f", {p['gpus']} GPU" if p["gpus"] else ""
            disabled = "" if p.get("image") else " disabled"
            note = "" if p.get("image") else " (not built on this lab)"
            checked = " checked" if p["name"] == first_built else ""
            rows.append(
                f'<label class="datalab-profile list-group-item"{disabled}>'
                f'<input type="radio" name="profile" value="{escape(p["name"])}"{checked}{disabled}> '
                f'<strong>{escape(p["name"])}</strong>{note}'
                f'<div class="text-muted">{escape(p["description"])}</div>'
                f'<small>{p["cpu"]:g} CPU · {escape(p["memory"])} memory{gpu} · '
                f'kernel “{escape(p["kernel"])}”</small></label>'
            )
        return '<div class="list-group" id="datalab-profiles">' + "".join(rows) + "</div>"

    @default("options_from_form")
    def _options_from_form(self):
        async def options_from_form(formdata):
            name = (formdata.get("profile") or [None])[0]
            return {"profile": (await self.profile_for(name))["name"]}

        return options_from_form

    # ---- start ------------------------------------------------------------
    async def start(self):
        starting = [other.name or "(default)" for other in self.user.spawners.values()
                    if other is not self and other.pending == "spawn"]
        if starting:
            # One start at a time per user: the hub counts every pending start against
            # concurrent_spawn_limit, so a user whose starts stall (a ~/.jupyter config that
            # hangs) would otherwise hold every slot, and everyone else would get 429s.
            raise web.HTTPError(429, f"Your server {starting[0]} is still starting; start another "
                                     "once it is ready (or has failed).")
        profile = await self.profile_for(self.user_options.get("profile"))
        async with self.start_turn():
            return await self.start_container(profile)

    async def start_container(self, profile):
        self.image = profile["image"]
        self.cpu_limit = float(profile["cpu"])
        self.mem_limit = profile["memory"]
        self.extra_host_config = {
            **self._hardened_host_config(),
            **containers.gpu_request(profile["gpus"]),
            # memory + swap = memory: past its limit a kernel is killed, it does not swap the host
            "memswap_limit": self.mem_limit,
        }
        self.volumes = await self.volume_mounts()
        self.profile = profile  # its environment goes in at get_env(), this start's only
        ip, port = await super().start()
        try:
            await self.on_docker_threads(netpolicy.apply, self.client, self.container_id, self.netpolicy_image,
                                         await self.lab_subnet(), self.hub_ports, serve_port=self.port,
                                         internet=self.internet,
                                         private_allowed=self.private_networks, host_addresses=self.host_addresses)
        except Exception as e:  # closed by default: no rules, no server
            self.log.error("network rules of %s not set: %s", self.container_name, e)
            await self.stop(now=True)
            raise web.HTTPError(500, "Your server could not be isolated on the lab network, so it was not "
                                     "started; try again, or tell the lab's admins.") from None
        await self.wait_until_listening(ip, port)
        return ip, port

    _turns = None  # turns.Turns, shared by every spawner of the hub process
    waiting_turn = None  # this start's turn while it waits for it

    @contextlib.asynccontextmanager
    async def start_turn(self):
        """Wait for a turn to start (turns.py), hold it while starting, give it back."""
        if not self.starts_at_once:
            yield
            return
        if DataLabSpawner._turns is None:
            DataLabSpawner._turns = turns.Turns(self.starts_at_once)
        queue = DataLabSpawner._turns
        self.waiting_turn = turn = queue.request()
        try:
            await turn
            self.waiting_turn = None
            if self.pending != "spawn":
                # JupyterHub gave up on this start while it waited (start_timeout): it has
                # reported the failure already, and a container made now would be nobody's
                raise web.HTTPError(503, "Your server waited too long for a turn to start; try again.")
            yield
        finally:
            self.waiting_turn = None
            queue.release(turn)

    async def progress(self):
        """The spawn page's messages: the start's place in line while it waits for a turn."""
        shown = None
        while (turn := self.waiting_turn) is not None and not turn.done():
            place = DataLabSpawner._turns.ahead(turn) + 1
            if place != shown:
                shown = place
                yield {"progress": 10, "message": f"{IN_LINE}: number {place} in line "
                                                  f"(the lab starts {self.starts_at_once} at a time)."}
            await asyncio.sleep(0.5)
        yield {"progress": 50, "message": "Starting your server..."}

    async def on_docker_threads(self, call, *args, **kwargs):
        """A blocking Docker SDK call, on the spawners' Docker-API threads (not asyncio's small default pool)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(call, *args, **kwargs))

    _lab_subnets = {}  # network -> subnet: a network's subnet never changes while it exists

    async def lab_subnet(self):
        cache = DataLabSpawner._lab_subnets
        if self.network_name not in cache:
            cache[self.network_name] = await self.on_docker_threads(netpolicy.lab_subnet, self.client,
                                                                    self.network_name)
        return cache[self.network_name]

    async def wait_until_listening(self, ip, port):
        """Return once the server accepts connections, or after http_timeout (then
        JupyterHub's own check reports the failure as it always does). Raise as soon as
        its container has exited (a config of the user's that fails, a crash): JupyterHub
        would wait out http_timeout, the start holding a slot of concurrent_spawn_limit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.http_timeout
        next_poll = loop.time() + EXIT_POLL_INTERVAL
        while loop.time() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 1)
            except (OSError, asyncio.TimeoutError):
                if loop.time() >= next_poll:
                    next_poll = loop.time() + EXIT_POLL_INTERVAL
                    if (status := await DockerSpawner.poll(self)) is not None:
                        raise web.HTTPError(500, f"Your server stopped while starting ({status or 'removed'}). "
                                                 "If you changed its configuration (~/.jupyter), undo that from "
                                                 "another server or a job, then start it again.")
                await asyncio.sleep(self.listen_poll_interval)
                continue
            writer.close()
            return

    # ---- a hub restarted behind another front door -------------------------
    front_door_checked = False  # per spawner object: one check each hub process

    async def poll(self):
        """DockerSpawner's poll; on a hub's first poll of a running server, the server
        counts as stopped if it was started behind another front door (https turned on
        or off, a new public host or port, per-user origins changed). Such a server keeps
        the public URLs it was given at its start: its login's redirects would go to a
        door that is no longer there. JupyterHub then stops it (container removed, its
        volume kept), and the user's next visit starts it again behind this door."""
        status = await super().poll()
        if status is None and not self.front_door_checked:
            self.front_door_checked = True
            then, now = await self.public_urls()
            if then and now and then != now:
                self.log.warning("%s was started behind %s; the hub's public URL for it is now %s: stopping it",
                                 self._log_name, then, now)
                return f"started behind another front door ({then})"
        return status

    async def public_urls(self):
        """(the server's public URL given at its start, the one the hub would give it now)."""
        container = await self.get_object()
        env = dict(item.partition("=")[::2] for item in ((container or {}).get("Config") or {}).get("Env") or [])
        return env.get("JUPYTERHUB_PUBLIC_URL"), self.user.public_url(self.name)

    profile = None  # the profile of the start under way

    def get_env(self):
        # the profile's extra environment under what the platform sets (schema.py refuses its names
        # anyway); the spawner lives on between starts, so nothing of one profile's stays for the next
        profile = self.profile or {}
        env = {**profile.get("environment", {}), **super().get_env()}
        if profile:
            env["DATALAB_PROFILE"] = profile["name"]
        # The MLflow client in the server runs as its user, through the registry
        # gateway, with the server's token (its scopes include the registry).
        env["MLFLOW_TRACKING_TOKEN"] = self.api_token
        return env

    async def require_gpu_runtime(self, profile):
        info = await self.docker("info")
        if "nvidia" not in (info.get("Runtimes") or {}):
            raise web.HTTPError(503, NO_GPU_RUNTIME.format(**profile))

    async def volume_mounts(self):
        mounts = volumes.volume_mounts(
            {"prefix": self.prefix, "teams": self.team_groups, "team_mount": self.team_mount_template,
             "datasets_mount": self.datasets_mount},
            self.user.name, self.user_group_names(), self.user.admin,
        )
        for name in volumes.shared(mounts, self.prefix):
            await self.ensure_shared_volume(name)
        return mounts

    async def ensure_shared_volume(self, name):
        """Create a shared volume on first use, owned by the notebook user."""
        try:
            await self.on_docker_threads(volumes.ensure_shared, self.client, name, self.prefix,
                                         self.volume_init_image or self.image, self.notebook_uid)
        except RuntimeError as e:
            raise web.HTTPError(500, str(e)) from None
