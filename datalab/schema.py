"""Every DataLab setting: its type, allowed values, range, default and help,
in one model (pydantic). `settings.py` merges a site's file over these
defaults and validates the result here; docs/settings.md is generated from
this model (`datalab settings docs`), as z2jh generates its reference from
its schema. A key that is not here, a value of the wrong type or outside
what is allowed stops `datalab up`: security settings fail closed.

To add a setting: add a field with a `help` (Field's description) here, then
`datalab settings docs > docs/settings.md` (a unit test checks it is current).
"""

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MEMORY = r"^[0-9]+(\.[0-9]+)?[KMG]$"  # Docker's units: "512M", "2G"
# The private address space user containers never reach unless an operator opens a
# range within it (the same list as hub/datalab_hub/netpolicy.py's PRIVATE_NETWORKS,
# which a unit test holds equal: the hub's image does not ship this package).
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")


def setting(default, help, **constraints):
    """A field with its help text (every setting has one)."""
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: type(default)(default), description=help, **constraints)
    return Field(default, description=help, **constraints)


class Table(BaseModel):
    # strict: a string is not a number or a boolean, a number is not a string
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, validate_default=True)


class Lab(Table):
    name: str = setting("datalab", "Name of the Swarm stack. Also prefixes the networks, volumes, secrets and "
                        "notebook containers, so two labs with different names can share an engine.",
                        pattern=r"^[a-z][a-z0-9-]{0,30}$")
    data_dir: str = setting("/var/lib/datalab", "Host directory for generated secrets, the directory's CA, demo "
                            "logins and the rendered stack file. Service data lives in Docker volumes named "
                            "after the lab.", pattern=r"^/")
    advertise_addr: str = setting("127.0.0.1", "Address other Swarm nodes (and this one) reach this manager on.")
    demo: bool = setting(True, "End `datalab up` with the demo loop, until a model serves: the reference model "
                         "trains at a small size as alice, who promotes it; a curl scores a transaction.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting(
        "INFO", "How much the services log (`datalab logs SERVICE`): the hub, its services (jobs, registry, "
        "group sync), the controller and scoring, all in one format.")


class Hub(Table):
    public_host: str = setting(
        "lab.localhost", "The lab's public host name: the hub is at http://<public_host>:<port>/. Each user's "
        "server has an origin of its own under it (alice.<public_host>), and so has each hub service "
        "(registry--service.<public_host>), so that a page one user's server serves cannot act in anyone "
        "else's session. \"lab.localhost\" needs no DNS on the lab's machine (browsers, curl, and programs "
        "through Debian's libnss-myhostname, which `datalab up` installs, resolve *.localhost to it); a site "
        "names a host with a wildcard DNS record and certificate (*.lab.bank.example).",
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    port: int = setting(8000, "The hub's public port.", ge=1, le=65535)
    https: bool = setting(
        False, "Serve the hub over HTTPS at `port` (the hub, the registry UI, every user's server: the browser's "
        "passwords and session cookies, which are then Secure, never cross the network in clear text), with "
        "tls_cert_file and tls_key_file, or a certificate DataLab makes from the lab's CA for public_host and "
        "*.public_host. `up` prints the CA's file for browsers and clients to trust.")
    tls_cert_file: str = setting(
        "", "With https: the certificate (PEM, its chain after it) for public_host and, with per_user_origins, "
        "*.public_host, a file on the host. Empty, with tls_key_file empty too: one from the lab's CA.")
    tls_key_file: str = setting("", "With https: the certificate's private key (PEM), a file on the host.")
    http_redirect_port: int = setting(
        80, "With https: a port answering plain HTTP with a redirect to the same page over HTTPS (0: none).",
        ge=0, le=65535)
    per_user_origins: bool = setting(
        True, "false: every server and service on the hub's one origin (JupyterHub without subdomain_host), "
        "where any user's page can act as whoever opens it. Only for a site that cannot have a wildcard name; "
        "`up` and `status` then warn.")
    concurrent_spawn_limit: int = setting(
        0, "Servers starting at once, lab-wide (0: three per two CPU cores of the hub's node). A start beyond "
        "it waits its turn (spawn_queue) instead of slowing every start down: starts that share the cores all "
        "finish late together. On 2 cores, 20 logins at once, waiting in line, were ready at a median 11-13 s "
        "with 3 at a time and 12-14 s with 4 (one run of five at 18 s); 16-20 s with 8 when the next had to "
        "retry after a 429 (bench/README.md).",
        ge=0)
    spawn_queue: int = setting(
        40, "Starts that may wait, lab-wide, for a turn beyond concurrent_spawn_limit: they start in the order "
        "they came, the spawn page showing their place in line. A login beyond them gets JupyterHub's \"too "
        "many users starting, try again in N seconds\" page (HTTP 429). 0: no line, a 429 at once. The wait "
        "counts in spawner.start_timeout.", ge=0)
    spawn_retry_seconds: list[int] = setting([2, 6], "[min, max] seconds that page asks a user to wait before "
                                             "retrying.", min_length=2, max_length=2)
    active_server_limit: int = setting(100, "Servers running at once, lab-wide (0: no limit); one more start is "
                                       "refused with a message. An idle JupyterLab server holds about 150 MB.", ge=0)
    allowed_groups: list[str] = setting(["datascientists", "lab-admins"],
                                        "Only members of these LDAP groups may log in.", min_length=1)
    admin_groups: list[str] = setting(["lab-admins"], "Members of these LDAP groups are hub admins.")
    auth_refresh_age: int = setting(
        300, "Seconds the groups and admin flag the hub last read for a user count as fresh: the user's next "
        "request to the hub after that reads them from the directory again (and logs them out if they are in "
        "no allowed group any more).", ge=1)
    group_sync_every: int = setting(
        60, "Seconds between two passes of the group-sync service over every hub user, whether or not they come "
        "to the hub (a scheduled job, an MLflow client): hub groups follow the directory, users in no allowed "
        "group (or admins who left the admin groups) are removed from the hub, servers mounting a team volume "
        "of a team left are stopped. A change reaches the registry and the jobs service up to 60 s later "
        "(their caches of users' groups, 30 s, and of token checks, 60 s).", ge=1)

    @field_validator("spawn_retry_seconds")
    @classmethod
    def _ordered(cls, value):
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"must be [min, max] with 0 < min <= max (got {value})")
        return value


class Spawner(Table):
    pids_limit: int = setting(1024, "Processes (and threads) a notebook server or job may run. (Images, CPU, "
                              "memory, GPUs and allowed groups are the profiles': [[profiles]].)", ge=64)
    start_timeout: int = setting(120, "Seconds a server may take to start before the spawn is reported failed.",
                                 ge=10)
    named_servers: int = setting(3, "Named servers a user may run besides the default one (e.g. a CPU and a GPU "
                                 "one).", ge=0)
    internet: bool = setting(True, "Notebook servers and jobs may open connections outside the lab (pip install, "
                             "public data). On the lab's own network they reach the hub and its services only, "
                             "whatever this says: never another user's container.")
    private_networks: list[str] = setting(
        [], "Private address space (10/8, 172.16/12, 192.168/16, link-local with the cloud's metadata service, "
        "100.64/10) and the lab nodes' own addresses are not \"outside the lab\": servers and jobs never reach "
        "them (so not the host's published ports, the scoring edge among them), DNS excepted. Ranges listed "
        "here they may reach all the same, e.g. [\"10.20.0.0/16\"] for a package mirror; a node's address never.")

    @field_validator("private_networks")
    @classmethod
    def _ranges(cls, value):
        found = []
        for given in value:
            try:
                network = ipaddress.IPv4Network(given, strict=False)
            except ValueError:
                raise ValueError(f"{given!r} is not an IPv4 address range such as \"10.20.0.0/16\"") from None
            # closed by default: a range outside private space would open the internet with internet = false
            if not any(network.subnet_of(ipaddress.IPv4Network(p)) for p in PRIVATE_NETWORKS):
                raise ValueError(f"{given!r} is not within private address space ({', '.join(PRIVATE_NETWORKS)})")
            found.append(str(network))
        return found


class Volumes(Table):
    teams: list[str] = setting(["fraud-team", "aml-team"], "LDAP groups that are teams: each gets a volume that "
                               "only its members mount, read-write.")
    team_mount: str = setting("/home/jovyan/teams/{team}", "Where a team's volume is mounted in its members' "
                              "servers and jobs; {team} is the group's name.", pattern=r"^/.*\{team\}")
    datasets_mount: str = setting("/home/jovyan/datasets", "Where the shared datasets volume is mounted "
                                  "(read-only; read-write for hub admins). \"\": no datasets volume.",
                                  pattern=r"^(/.*)?$")


class Culler(Table):
    timeout: int = setting(3600, "Stop notebook servers idle this many seconds (0: never). Servers whose kernels "
                           "are busy are kept, however long ago the last keystroke was (jupyterhub-idle-culler, "
                           "reading the hub's activity records only).", ge=0)
    every: int = setting(300, "Seconds between two passes of the culler.", ge=1)
    activity_interval: int = setting(300, "Seconds between two reports of a server's activity (busy kernels "
                                     "included) to the hub: a server may be culled up to this much later than "
                                     "`timeout`.", ge=1)


class Jobs(Table):
    max_running: int = setting(4, "Jobs running at once, lab-wide; the others wait in the queue.", ge=1)
    max_running_per_user: int = setting(2, "Jobs running at once per user.", ge=1)
    default_timeout: int = setting(3600, "Seconds a job may run when its submission says nothing.", ge=1)
    max_timeout: int = setting(86400, "The most seconds a submission may ask for.", ge=1)
    max_cpu: float = setting(8.0, "The most CPUs one job may ask for, whatever its profile. A job never gets more "
                             "CPUs or memory than its profile's either ([[profiles]]).", gt=0)
    max_queued_per_user: int = setting(20, "Jobs a user may have queued or running at once: a submission beyond "
                                       "is refused (HTTP 429), and a schedule whose user has this many skips that "
                                       "run.", ge=1)
    max_schedules_per_user: int = setting(10, "Schedules a user may have; one more is refused (HTTP 429).", ge=0)
    max_output_mb: int = setting(20, "The largest executed notebook (MB) kept from a job: a larger one is not "
                                 "read, and the job fails, saying so (parsing JSON takes many times its size in "
                                 "memory, in the hub's container).", ge=1)
    max_log_mb: int = setting(5, "How much of a job's log (papermill's cell output) is kept per attempt (MB): its "
                              "last part, after a line saying how much earlier output was dropped.", ge=1)


class Scoring(Table):
    port: int = setting(8500, "Host port of the scoring edge: POST http://127.0.0.1:<port>/v1/score.",
                        ge=1, le=65535)
    https: bool = setting(
        False, "Serve the scoring edge over HTTPS only (plain HTTP is refused: transactions, scores and the "
        "feedback token never cross the network in clear text), with the hub's certificate: [hub] tls_cert_file "
        "and tls_key_file, or the one DataLab makes from the lab's CA (for public_host, *.public_host, localhost "
        "and 127.0.0.1), whose file `up` prints.")
    replicas: int = setting(2, "Scoring replicas of `datalab deploy` by default (each deployment keeps its own).",
                            ge=1)
    threshold: float = setting(50.0, "Scores (0-100) at or above the threshold are decided \"block\"; the default "
                               "of `datalab deploy`.", ge=0, le=100)
    nodes: Literal["home", "all"] = setting(
        "home", "Where scoring replicas run: \"home\" (the node `datalab up` runs on) or \"all\" (every node: "
        "survives losing one; each node pulls the model image from the lab's image registry, [image_registry]).")


class ImageRegistry(Table):
    """The lab's own image registry (the `image-registry` service, Debian's Distribution
    registry): model images go there when a version is rolled out, and every node
    pulls them by digest, so each node runs byte-identical images. It serves HTTPS
    with a certificate from the lab's CA, which `datalab up` (and Ansible, on every
    node) puts where the engine looks for that registry, and one account whose
    password is a generated secret."""
    port: int = setting(5000, "Host port of the image registry on the node `datalab up` runs on; nodes pull "
                        "from <[lab] advertise_addr>:<port>.", ge=1, le=65535)


class Limits(Table):
    memory: str = setting("1G", "Memory limit, in Docker's units (\"512M\", \"2G\").", pattern=MEMORY)
    reserve: str = setting("128M", "Memory reservation: Swarm places no more than a node holds.", pattern=MEMORY)


def limits(memory, reserve):
    return Field(default_factory=lambda: Limits(memory=memory, reserve=reserve),
                 description=f"{memory} limit, {reserve} reserved.")


class Resources(Table):
    """Memory limit and reservation of each platform service. A service past its
    limit is OOM-killed and restarted by Swarm on its own, instead of the kernel
    picking a victim among all the lab's processes when a notebook or an upload
    eats the machine; reservations keep Swarm from placing more than a node
    holds. The hub's container also runs the jobs service and the registry
    gateway. Scoring's figures are per replica."""
    hub: Limits = limits("2G", "512M")
    proxy: Limits = limits("512M", "64M")
    mlflow: Limits = limits("4G", "1G")
    directory: Limits = limits("512M", "64M")
    controller: Limits = limits("1G", "128M")
    scoring_edge: Limits = Field(default_factory=lambda: Limits(memory="256M", reserve="32M"),
                                 description="256M limit, 32M reserved.", alias="scoring-edge")
    scoring: Limits = limits("2G", "256M")
    featurestore: Limits = limits("1G", "256M")
    image_registry: Limits = Field(default_factory=lambda: Limits(memory="512M", reserve="32M"),
                                   description="512M limit, 32M reserved.", alias="image-registry")


class Features(Table):
    maxmemory: str = setting(
        "640mb", "The feature store (Redis holding per-customer and per-terminal state, from which the scoring "
        "tasks compute a raw transaction's features: scoring/README.md): the most memory its data may take, in "
        "Redis's units; the rest of [resources] featurestore's limit is headroom for rewriting the append-only "
        "file. Past it, writes are refused and scoring answers 503: state is never dropped to make room "
        "(noeviction).", pattern=r"^[0-9]+(kb|mb|gb)$")
    warn_at: float = setting(0.8, "`datalab status` warns when the data passes this share of maxmemory.",
                             gt=0, le=1)


class Directory(Table):
    builtin: bool = setting(True, "true: run the demo OpenLDAP directory seeded from directory/seed.ldif. false: "
                            "use the corporate directory described by the keys below.")
    url: str = setting("ldap://directory:1389", "ldap://host:port (StartTLS, see tls_strategy) or "
                       "ldaps://host:port.", pattern=r"^ldaps?://[^/\s]+$")
    tls_strategy: Literal["before_bind", "on_connect", "insecure"] = setting(
        "before_bind", "\"before_bind\" (StartTLS), \"on_connect\" (ldaps) or \"insecure\" (plain LDAP: passwords "
        "in clear text; refused unless allow_insecure_tls = true).")
    allow_insecure_tls: bool = setting(False, "Accept tls_strategy = \"insecure\"; every `datalab up` and "
                                       "`status` then warns.")
    ca_file: str = setting("", "PEM file of the CA that signed the directory's certificate, on the host. Empty "
                           "with builtin = true: the CA `datalab up` generates. Empty otherwise: the system's "
                           "trust store. The certificate is always verified.")
    base_dn: str = setting("dc=datalab,dc=example", "Base DN of the directory.")
    bind_dn_template: list[str] = setting(["uid={username},ou=people,dc=datalab,dc=example"],
                                          "DNs tried, in order, to bind as the user; {username} is escaped.",
                                          min_length=1)
    group_base: str = setting("ou=groups,dc=datalab,dc=example", "Where groups live; a group in "
                              "allowed_groups/admin_groups is cn=<name>,<group_base>.")
    group_membership_filter: str = setting("(&(objectClass=groupOfNames)(member={userdn}))",
                                           "Finds the groups a user belongs to ({userdn} and {uid} are escaped).")
    group_name_attribute: str = setting("cn", "The attribute holding a group's name.")
    search_bind_dn: str = setting(
        "", "A read-only account the hub binds as to read users' groups between logins, when it has no password "
        "of theirs: it needs to read group entries and people's DNs, nothing more. builtin = true: the lab makes "
        "its own (cn=hub-reader,<base_dn>) and this is not used. Empty with builtin = false: group changes take "
        "effect at each user's next login only (`datalab up` and `status` warn).")
    search_password_file: str = setting("", "Host file holding that account's password (handed to the hub as a "
                                        "Swarm secret).")


class Mlflow(Table):
    backend_store_uri: str = setting("sqlite:////mlflow/mlflow.db", "Tracking and registry database: SQLite in the "
                                     "mlflow volume by default, or e.g. "
                                     "\"postgresql://mlflow:PASSWORD@db.example:5432/mlflow\".")
    artifacts_destination: str = setting("/mlflow/artifacts", "Artifact store: the mlflow volume by default, or "
                                         "e.g. \"s3://bucket/mlflow\".")
    s3_endpoint_url: str = setting("", "For an S3-compatible store: its endpoint.")
    aws_credentials_file: str = setting("", "For an S3-compatible store: a host file in AWS credentials format "
                                        "(handed to the server as a Swarm secret, never as an environment value).")
    workers: int = setting(2, "MLflow server worker processes.", ge=1)


class Registry(Table):
    production_alias: str = setting("production", "The alias whose setting on a model version is a promotion to "
                                    "production.", min_length=1)
    approvers_group: str = setting("model-approvers", "Members of this LDAP group may set the production alias, "
                                   "on any team's model, unless the team has its own approvers.", min_length=1)
    team_approvers: dict[str, str] = setting({}, "A team's own approvers group: { \"fraud-team\" = "
                                             "\"fraud-approvers\" }.")
    others: Literal["read", "none"] = setting("read", "What users outside a team may do with its experiments and "
                                              "models: \"read\" or \"none\".")
    served_model: str = setting("", "The registered model whose production version the scoring service serves "
                                "(\"\": whichever model's production alias was set last; one scoring service serves "
                                "one model, so a lab with several teams' models names one here).")
    poll_every: int = setting(10, "Seconds between two reconciliations of the production aliases with what serves "
                              "(the webhook triggers one at once; polling catches a missed delivery).", ge=1)


class Gate(Table):
    """A promotion is judged on production's own transactions: those scored in raw
    mode in the last `production_window_days` whose label came back (POST
    /v1/feedback), with the features they were scored with; the candidate and the
    version serving score the same ones. With fewer labelled transactions or frauds
    than the minimums (or fields the log lacks), the candidate's evaluation set
    stands in, and the audit says why."""
    production_window_days: float = setting(7, "Days of production's scored transactions the gate judges on.",
                                            gt=0)
    production_min_labelled: int = setting(2000, "Labelled transactions that window needs to be judged on.", ge=1)
    production_min_frauds: int = setting(20, "Frauds that window needs to be judged on.", ge=1)
    production_max_transactions: int = setting(
        200_000, "The most recent transactions of that window the gate reads at most (each is scored by both "
        "models in their sandboxes, within [resources] scoring's memory).", ge=1, le=5_000_000)
    min_average_precision: float = setting(
        0.25, "A candidate's least average precision (the reference model at full size: 0.71; at the demo's small "
        "size about 0.3).", ge=0, le=1)
    min_recall: float = setting(0.1, "A candidate's least recall at the deployment threshold (the reference model "
                                "at full size: 0.63 at 50; at the demo's small size about 0.15).", ge=0, le=1)
    max_false_positive_rate: float = setting(0.02, "A candidate's highest false-positive rate at the threshold.",
                                             ge=0, le=1)
    max_block_rate: float = setting(0.05, "A candidate's highest share of transactions blocked.", ge=0, le=1)
    max_average_precision_drop: float = setting(0.02, "How far a candidate's average precision may fall behind "
                                                "the version in production (absolute).", ge=0, le=1)
    max_recall_drop: float = setting(0.05, "How far its recall may fall behind production's.", ge=0, le=1)
    max_block_rate_increase: float = setting(0.01, "How far its block rate may rise above production's.",
                                             ge=0, le=1)
    max_score_psi: float = setting(0.25, "How far its score distribution may move from production's (PSI).", ge=0)
    segment_min_transactions: int = setting(
        500, "A segment (amount bands, night, weekend, new and known customers: datalab_scoring.evaluate.SEGMENTS) "
        "is judged when it holds at least this many transactions...", ge=1)
    segment_min_frauds: int = setting(10, "...and this many frauds.", ge=1)
    max_segment_average_precision_drop: float = setting(0.05, "How far a candidate's average precision may fall "
                                                        "behind production's on such a segment.", ge=0, le=1)
    max_segment_recall_drop: float = setting(0.1, "How far its recall may fall behind production's on such a "
                                             "segment.", ge=0, le=1)


class Build(Table):
    source: Literal["build", "present"] = setting(
        "build", "\"build\": `datalab up` builds the images here. \"present\": it uses the images already in the "
        "engine (loaded by Ansible on a multi-node lab) and builds none.")
    ca_bundle: str = setting("/etc/ssl/certs/ca-certificates.crt", "CA bundle given to pip and apt inside image "
                             "builds (a corporate proxy's CA).")
    base_image: str = setting("debian:bookworm-slim", "Base of every image; made locally with debootstrap when it "
                              "cannot be pulled.")
    debian_mirror: str = setting("http://deb.debian.org/debian", "The Debian mirror image builds and debootstrap "
                                 "use.", pattern=r"^https?://")
    docker: str = setting("/usr/bin/docker", "Docker client matching the engine (Debian's docker.io).")


# What the platform sets in every server and job: a profile's environment may not touch it.
RESERVED_ENVIRONMENT = ("JUPYTERHUB_", "JPY_", "DATALAB_", "MLFLOW_TRACKING_")


class Profile(Table):
    """A kind of notebook server (and job) users pick in the spawn form: an image
    from images/manifest.toml with its limits and the LDAP groups who may use it,
    as KubeSpawner's profile_list."""
    name: str = Field(description="The profile's name (the spawn form, `datalab jobs submit --profile`).",
                      pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    description: str = Field(description="Shown in the spawn form.", min_length=1)
    image: str = Field(description="A notebook image of images/manifest.toml (what `datalab up` builds).",
                       pattern=r"^[a-z0-9][a-z0-9-]*$")
    cpu: float = Field(description="CPUs of a server or job.", gt=0)
    memory: str = Field(description="Memory of a server or job, in Docker's units (\"4G\").", pattern=MEMORY)
    gpus: int = Field(0, description="GPUs a server asks Docker for (0: none).", ge=0)
    groups: list[str] = Field(description="LDAP groups whose members may use it (none: nobody, which takes a "
                              "default profile away).")
    environment: dict[str, str] = Field(default_factory=dict, description="Extra environment of its servers and "
                                        "jobs (never secrets: they show in `docker inspect`).")

    @field_validator("environment")
    @classmethod
    def _not_the_platforms(cls, value):
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.upper().startswith(RESERVED_ENVIRONMENT):
                raise ValueError(f"{name!r} is not a variable a profile may set (names of letters, digits and _, "
                                 f"none starting {', '.join(RESERVED_ENVIRONMENT)})")
        return value


def _profile(name, description, image, cpu, memory, gpus=0, groups=("datascientists", "lab-admins")):
    return {"name": name, "description": description, "image": image, "cpu": cpu, "memory": memory,
            "gpus": gpus, "groups": list(groups)}


DEFAULT_PROFILES = [
    _profile("python", "Python 3.11 and JupyterLab: a light notebook for analysis, scripting and light jobs",
             "python", 1.0, "2G"),
    _profile("datascience", "Data science: pandas, scikit-learn, XGBoost, matplotlib, MLflow client",
             "datascience", 2.0, "4G"),
    _profile("tensorflow", "TensorFlow 2.21 (CPU) on top of the data-science image", "tensorflow", 2.0, "6G"),
    _profile("tensorflow-gpu", "TensorFlow 2.21 with CUDA on one GPU, on top of the data-science image",
             "tensorflow-gpu", 4.0, "16G", gpus=1, groups=["gpu-users"]),
]


class Schema(Table):
    """The whole settings file: one table per concern, and the profiles."""
    lab: Lab = Field(default_factory=Lab)
    hub: Hub = Field(default_factory=Hub)
    spawner: Spawner = Field(default_factory=Spawner)
    volumes: Volumes = Field(default_factory=Volumes)
    culler: Culler = Field(default_factory=Culler)
    jobs: Jobs = Field(default_factory=Jobs)
    scoring: Scoring = Field(default_factory=Scoring)
    image_registry: ImageRegistry = Field(default_factory=ImageRegistry)
    resources: Resources = Field(default_factory=Resources)
    features: Features = Field(default_factory=Features)
    directory: Directory = Field(default_factory=Directory)
    mlflow: Mlflow = Field(default_factory=Mlflow)
    registry: Registry = Field(default_factory=Registry)
    gate: Gate = Field(default_factory=Gate)
    build: Build = Field(default_factory=Build)
    profiles: list[Profile] = Field(
        default_factory=lambda: [dict(p) for p in DEFAULT_PROFILES],
        description="`[[profiles]]` entries are merged over these by name: an entry naming a default profile "
        "changes the keys it gives, a new name adds a profile (groups = [] takes a default one away).")

    @field_validator("profiles")
    @classmethod
    def _unique(cls, value):
        names = [p.name for p in value]
        if len(set(names)) != len(names):
            raise ValueError(f"profile names must differ (got {names})")
        return value


def defaults():
    """Every setting's default, as plain data (tables of values)."""
    return Schema().model_dump(by_alias=True)


def validate(data):
    """`data` (tables of values) checked against the model, as plain data; raises
    pydantic's ValidationError."""
    return Schema.model_validate(data).model_dump(by_alias=True)


def explain(error, data):
    """One line for one of pydantic's errors in `data` (what was validated):
    `[table] key: what is allowed (got what)`."""
    place = [str(part) for part in error["loc"]]
    where = f"[{place[0]}]" + (f" {'.'.join(place[1:])}" if len(place) > 1 else "")
    if place[0] == "profiles" and len(place) > 1 and place[1].isdigit():
        entry = data["profiles"][int(place[1])]
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"[[profiles]] {_shown(name) if name else '#' + str(int(place[1]) + 1)}"
        where += f" {'.'.join(place[2:])}" if len(place) > 2 else ""
    got = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: no such setting (docs/settings.md lists them all)"
    if kind == "literal_error":
        allowed = ", ".join(f'"{v}"' for v in re.findall(r"'([^']*)'", error["ctx"]["expected"]))
        return f"{where}: must be one of {allowed} (got {_shown(got)})"
    if kind == "missing":
        return f"{where}: missing"
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        return f"{where}: {message}"
    return f"{where}: {message[0].lower()}{message[1:]} (got {_shown(got)})"


def _shown(value):
    return f'"{value}"' if isinstance(value, str) else repr(value)


def reference():
    """docs/settings.md: every setting, its type, default and help, from the model."""
    lines = ["# Settings reference", "",
             "Generated from `datalab/schema.py` by `datalab settings docs`; do not edit.", "",
             "A site's settings live in `/etc/datalab/settings.toml` (or the file `$DATALAB_SETTINGS` or "
             "`--settings` names): only the keys it changes, table by table; the rest keep the defaults below. "
             "`datalab settings check FILE` validates a file, `datalab settings show` prints the effective "
             "settings and where each came from.", ""]
    for table, field in Schema.model_fields.items():
        if table == "profiles":
            continue
        model = field.annotation
        lines += [f"## [{table}]", ""]
        if model.__doc__ and model.__doc__ != Table.__doc__:
            lines += [" ".join(model.__doc__.split()), ""]
        lines += ["| setting | type | default | what it does |", "|---|---|---|---|"]
        for name, sub in model.model_fields.items():
            key = sub.alias or name
            default = sub.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump()
            lines.append(f"| `{key}` | {_type_name(sub)} | `{_toml(default)}` | {sub.description} |")
        lines.append("")
    lines += ["## [[profiles]]", "", " ".join(Profile.__doc__.split()), Schema.model_fields["profiles"].description,
              "", "| key | type | default | what it does |", "|---|---|---|---|"]
    for name, sub in Profile.model_fields.items():
        default = "required" if sub.is_required() else f"`{_toml(sub.get_default(call_default_factory=True))}`"
        lines.append(f"| `{name}` | {_type_name(sub)} | {default} | {sub.description} |")
    lines += ["", "The default profiles:", "", "| name | image | cpu | memory | gpus | groups | description |",
              "|---|---|---|---|---|---|---|"]
    for p in DEFAULT_PROFILES:
        lines.append(f"| `{p['name']}` | `{p['image']}` | {p['cpu']:g} | {p['memory']} | {p['gpus']} | "
                     f"{', '.join(p['groups'])} | {p['description']} |")
    lines += ["", "For example, a team of a corporate directory gets the TensorFlow image with 8 GB:", "", "```toml",
              "[[profiles]]", 'name = "fraud-analytics"', 'description = "TensorFlow, 8 GB, for the fraud analysts"',
              'image = "tensorflow"', "cpu = 2.0", 'memory = "8G"', 'groups = ["GRP-Fraud-Analytics"]', "```", ""]
    return "\n".join(lines)


def _type_name(field):
    annotation = field.annotation
    if getattr(annotation, "__origin__", None) is Literal:
        return " or ".join(f'"{v}"' for v in annotation.__args__)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table: memory, reserve"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    origin, args = getattr(annotation, "__origin__", None), getattr(annotation, "__args__", ())
    if origin is list:
        shown = f"list of {names[args[0]]}s"
    elif origin is dict:
        shown = f"table of {names[args[1]]}s"
    else:
        shown = names[annotation]
    bounds = [f"{sign} {getattr(m, attr):g}" for m in field.metadata for attr, sign in
              (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")) if hasattr(m, attr)]
    return shown + (f" ({', '.join(bounds)})" if bounds else "")


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    return f"{value:g}" if isinstance(value, float) else str(value)
