"""`datalab`: bring the lab up or down, see its status and logs, demo logins,
build images, settings, run notebook jobs; the arguments of every command
(the commands for models in production are cli_models.py's)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from datalab_client import cli as jobs_cli
from datalab_client import http
from datalab_client.http import HTTPError
from datalab_client.jobs import JobsClient, JobsError

from . import settings as settings_mod, steps as steps_mod
from .cli_models import (cmd_audit, cmd_deploy, cmd_features, cmd_promote, cmd_scoring_feedback_token,
                         cmd_scoring_status)
from .deploy import DeployError
from .docker import Docker, DockerError
from .settings import SettingsError
from .steps import Steps

REPO = Path(__file__).resolve().parent.parent

# The modules behind each command are imported by the command, so that a quick
# one (`datalab status`, `datalab jobs list`) does not import them all.


def cmd_up(settings, args):
    from . import credentials, image_registry, images, system

    steps = Steps()
    steps.info(f"DataLab lab '{settings.lab}', data in {settings.data_dir}"
               + (f", settings from {settings.source}" if settings.source else ", default settings"))
    from . import hubsettings, swarm

    hubsettings.refuse_unsafe(settings)
    for warning in hubsettings.insecure_choices(settings):
        steps.warning(warning)
    system.install_packages(system.LAB_PACKAGES, steps)
    system.ensure_localhost_names(steps)
    docker = Docker(settings)
    system.ensure_engine(docker, steps)
    system.ensure_swarm(docker, settings, steps)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with steps.step("secrets and directory CA"):
        credentials.ensure(settings)
    trust_lab_ca(settings)  # made just now on a first `up`
    if image_registry.trust(settings):
        steps.info(f"this engine trusts the lab's CA for the image registry ({image_registry.trust_file(settings)})")
    if settings["build"]["source"] == "build":
        images.build_all(docker, settings, steps)
    else:
        steps.info("images: using those in the engine ([build] source = \"present\")")
    before = swarm.fingerprint(docker, settings)
    lost = apply_stack(docker, settings, steps)
    wait_healthy(docker, settings, steps, args.timeout)
    if lost:
        restore_serving(docker, settings, steps, lost)
    after = swarm.fingerprint(docker, settings)
    changed = sorted(name for name in after if before.get(name) != after[name])
    # a line for scripts (Ansible's changed_when): did this run change any service?
    print(f"stack: changed ({', '.join(changed)})" if changed else "stack: unchanged")
    curl = run_demo(settings, steps) if settings["lab"]["demo"] and not args.no_demo else None
    print()
    print(f"DataLab is up: {settings.hub_url}")
    if ca := credentials.lab_ca_file(settings):
        print(f"Its HTTPS certificate is from the lab's CA: have browsers and clients trust {ca}")
    print(f"Registry (MLflow, behind the hub's login): {settings.service_url('registry')}")
    print(f"Scoring edge: {settings.scoring_url}/v1/score")
    if curl:
        print(f"Score a transaction:\n  {curl}")
    print_logins(settings)
    return 0


def trust_lab_ca(settings):
    """This process's HTTP client verifies the hub and the scoring edge against the
    lab's own CA when their certificate is the one DataLab made."""
    from . import credentials

    if (ca := credentials.lab_ca_file(settings)) and ca.exists():
        http.trust(ca)


def run_demo(settings, steps):
    from . import demo

    try:
        return demo.run(settings, steps, REPO)
    except (demo.DemoError, OSError, RuntimeError) as e:
        # the lab is up either way; say what the demo could not do
        print(f"datalab: the demo loop stopped: {e}", file=sys.stderr)
        return None


def cmd_demo(settings, args):
    curl = run_demo(settings, Steps())
    if curl:
        print(curl)
    return 0 if curl else 1


def apply_stack(docker, settings, steps):
    """Render the stack from the settings, the built images and the current
    model deployment, and deploy it (Swarm changes only what changed). Returns
    the deployment on record when its image is gone from the engine (else None):
    scoring then starts with no model, for restore_serving to bake it again."""
    from . import credentials, deploy, hubsettings, images, manifest, stack, swarm

    notebook_images = manifest.load()
    refs = {n: images.current_ref(docker, n) for n in list(images.PLATFORM_IMAGES) + list(notebook_images)}
    missing = [n for n in images.PLATFORM_IMAGES if not refs[n]]
    if missing:
        raise DockerError(f"images not built: {', '.join(missing)} (datalab up builds them)")
    deploy.ensure_deployments_dir(settings)
    deploy.wait_for_promotion(settings, steps)
    serving, lost = deploy.current(settings), None
    if serving and not docker.inspect("image", serving["image"]):
        # removed while the lab was down (`docker image prune -a` frees a stopped lab's images):
        # the stack waits for no image that may not come, and the version is pulled from the
        # image registry, or baked again, once the registries are up
        steps.warning(f"the serving image {serving['image']} is no longer in the engine: scoring starts "
                      f"with no model until {serving['model']} v{serving['version']} is restored")
        serving, lost = None, serving
    spec = stack.render(settings, refs, hubsettings.profiles(settings, notebook_images, refs),
                        credentials.ensure(settings), serving)
    swarm.deploy(docker, settings, spec, steps)
    return lost


def restore_serving(docker, settings, steps, lost):
    """Bring back the version on record, as it served: pulled from the image registry by
    its digest, or else baked again from the model registry (the same model files, or
    none), then rolled out."""
    from . import deploy, image_registry, images

    try:
        pulled = False
        if image_registry.is_published(settings, lost["image"]):  # an older record names a local image
            with steps.step(f"pulling {lost['model']} v{lost['version']} from the image registry"):
                pulled = image_registry.pull(settings, lost["image"])
        if pulled:
            deploy.tag_model_image(docker, lost)
            target = dict(lost)
        else:
            with steps.step(f"baking {lost['model']} v{lost['version']} again from the model registry"):
                baked = deploy.rebake(docker, settings, images.current_ref(docker, "scoring"), lost)
            target = {**baked, "replicas": lost["replicas"], "threshold": lost["threshold"]}
        with steps.step(f"rolling out {lost['model']} v{lost['version']} to {lost['replicas']} replica(s)"):
            outcome, why = deploy.rollout(docker, settings, target)
    except (deploy.DeployError, DockerError) as e:
        outcome, why = "failed", str(e)
    if outcome != "completed":
        steps.warning(f"scoring serves no model: {lost['model']} v{lost['version']} could not be restored "
                      f"({why or outcome}); `datalab deploy MODEL@VERSION` puts one back")


def wait_healthy(docker, settings, steps, timeout):
    from . import swarm

    swarm.wait_healthy(docker, settings, steps, timeout=timeout)


def print_logins(settings):
    from . import credentials

    logins = credentials.demo_logins(settings)
    if not logins:
        return
    allowed = set(settings["hub"]["allowed_groups"])
    admitted = set().union(*(members for group, members in credentials.seed_groups().items() if group in allowed))
    print("Demo logins (user / password):")
    for user, password in logins.items():
        note = "" if user in admitted else "  (in no lab group: login is refused, by design)"
        print(f"  {user:8} {password}{note}")
    print(f"Allowed groups: {', '.join(sorted(allowed))}. Again any time: datalab demo-logins")


def cmd_down(settings, args):
    from . import swarm

    docker = Docker(settings)
    steps = Steps()
    if args.purge and not args.yes:
        if not sys.stdin.isatty():
            print("refusing to purge without confirmation: pass --yes", file=sys.stderr)
            return 2
        answer = input(f"Delete ALL data of lab '{settings.lab}' (user volumes, hub, MLflow, "
                       f"directory, {settings.data_dir})? Type the lab name to confirm: ")
        if answer.strip() != settings.lab:
            print("not confirmed; nothing deleted")
            return 1
    swarm.remove(docker, settings, steps)
    if args.purge:
        swarm.purge_data(docker, settings, steps)
    return 0


def cmd_status(settings, args):
    from . import hubsettings, swarm

    from . import features

    docker = Docker(settings)
    rows = swarm.status(docker, settings) if docker.engine_running() else []
    warnings = hubsettings.insecure_choices(settings)
    if rows:
        warnings += [alert] if (alert := features.memory_alert(docker, settings)) else []
    if args.json:
        print(json.dumps({"lab": settings.lab, "url": settings.hub_url, "services": rows, "warnings": warnings},
                         indent=2))
        return 0
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    if not rows:
        print(f"lab '{settings.lab}' is not running (datalab up starts it)")
        return 1
    print(f"{'SERVICE':12} {'STATE':10} {'HEALTH':10} URL")
    for r in rows:
        print(f"{r['service']:12} {r['state']:10} {r['health']:10} {r['url']}")
    return 0


LOGS_TIMEOUT = 30  # seconds `datalab logs` (without --follow) gives `docker service logs` to end


def cmd_logs(settings, args):
    docker = Docker(settings)
    extra = ["--follow"] if args.follow else []
    try:
        proc = docker.run("service", "logs", "--tail", str(args.tail), *extra, f"{settings.lab}_{args.service}",
                          check=False, capture=False, timeout=None if args.follow else LOGS_TIMEOUT)
    except subprocess.TimeoutExpired:
        # `docker service logs` sometimes never ends once it has sent what it has (docker/cli#4678;
        # here right after one of the service's tasks was replaced)
        print(f"datalab: docker service logs had not ended after {LOGS_TIMEOUT} s (a known Swarm hang); "
              "stopped it: what it sent is above", file=sys.stderr)
        return 0
    return proc.returncode


def cmd_demo_logins(settings, args):
    from . import credentials

    logins = credentials.demo_logins(settings)
    if args.json:
        print(json.dumps(logins))
    elif logins:
        print_logins(settings)
    else:
        print("no demo logins (a corporate directory, or `datalab up` has not run)")
    return 0


def cmd_images_build(settings, args):
    from . import images, system

    steps = Steps()
    docker = Docker(settings)
    system.ensure_engine(docker, steps)
    refs = images.build_all(docker, settings, steps, names=args.names or None)
    for name, ref in refs.items():
        print(f"{name:16} {ref}")
    return 0


def cmd_images_list(settings, args):
    from . import images

    rows = images.listing(Docker(settings))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'IMAGE':16} {'KIND':9} {'SIZE':>8}  {'TAG':32} {'BUILD':11} DESCRIPTION")
    for r in rows:
        size = f"{r['size_mb']} MB" if r["built"] else "-"
        print(f"{r['name']:16} {r['kind']:9} {size:>8}  {r['ref'] or '(not built)':32} {r['build']:11} {r['description']}")
    return 0


def cmd_images_prune(settings, args):
    from . import image_registry, images

    docker = Docker(settings)
    named = images.named_by_lab(settings)
    remove, kept = images.prune_plan(docker, named)
    # the registry keeps what the engine keeps, what the lab's files and services name, and
    # what was pushed recently (a rollout may be on its way to it)
    registry = image_registry.prune_plan(docker, settings, [*kept, *named, *images.service_images(docker)])
    before = images.images_disk_usage(docker)
    if not args.dry_run and remove:
        images.prune(docker, remove)
    collected = image_registry.prune(docker, settings, registry) if registry and not args.dry_run else None
    after = images.images_disk_usage(docker)
    registry_removed = [f"{repo}@{digest}" for repo, (gone, _) in (registry or {}).items() for digest in gone]
    if args.json:
        print(json.dumps({"removed" if not args.dry_run else "would_remove": remove, "kept": kept,
                          "disk_before": before, "disk_after": after,
                          "registry": None if registry is None else {
                              "removed" if not args.dry_run else "would_remove": registry_removed,
                              "kept": [f"{repo}@{digest}" for repo, (_, held) in registry.items() for digest in held],
                              **(collected or {})}}, indent=2))
        return 0
    for ref in remove:
        print(f"{'would remove' if args.dry_run else 'removed'} {ref}")
    print(f"{len(remove)} tag(s) {'to remove' if args.dry_run else 'removed'}, {len(kept)} kept (latest or build, "
          f"in use, or named by the lab); the engine's images: {before}" + ("" if args.dry_run else f" before, {after} after"))
    if registry is None:
        print("the image registry is not running: nothing removed from it (prune again with the lab up)")
        return 0
    for ref in registry_removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {image_registry.address(settings)}/{ref}")
    held = sum(len(kept_digests) for _, kept_digests in registry.values())
    print(f"image registry: {len(registry_removed)} version(s) {'to remove' if args.dry_run else 'removed'}, {held} "
          f"kept (in use, named by the lab, or pushed in the last {image_registry.RECENT_PUSH_MINUTES} min)"
          + ("" if not collected else f"; {collected['blobs_deleted']} layer(s) deleted, "
             f"{collected['storage_mb_before']} MB before, {collected['storage_mb_after']} MB after"))
    return 0


def cmd_images_registry(settings, args):
    from . import credentials, image_registry

    credentials.ensure(settings)  # the lab's CA, made here before a first `up` (Ansible trusts it on every node)
    ca = credentials.secrets_dir(settings) / "ca.crt"
    answer = {"address": image_registry.address(settings), "ca_file": str(ca), "trust_file": str(
        image_registry.trust_file(settings)), "ca": ca.read_text()}
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"image registry: https://{answer['address']}/ (account {image_registry.ACCOUNT}, password in "
              f"{credentials.secrets_dir(settings) / 'image_registry_password'})\n"
              f"an engine trusts it with the lab's CA ({ca}) as {answer['trust_file']}")
    return 0


def cmd_install(settings, args):
    from . import system

    steps = Steps()
    system.install_packages(system.LAB_PACKAGES + (system.TEST_PACKAGES if args.test else ()), steps)
    system.ensure_localhost_names(steps)
    docker = Docker(settings)
    system.ensure_engine(docker, steps)
    system.ensure_swarm(docker, settings, steps)
    return 0


def cmd_jobs(settings, args):
    if os.environ.get("DATALAB_JOBS_URL"):  # inside a notebook container: the user's own token
        return jobs_cli.run(JobsClient.from_environment(), args, on_host=False)
    from . import credentials

    return jobs_cli.run(credentials.jobs_client(settings), args, on_host=True)


def cmd_settings(settings, args):
    from . import schema

    if args.settings_command == "docs":
        print(schema.reference(), end="")
        return 0
    if args.settings_command == "check":
        checked = settings_mod.load(args.file)
        changed = sum(len(keys) if isinstance(keys, (dict, list)) else 1 for keys in checked.given.values())
        print(f"{args.file}: valid ({changed} setting(s) changed from the defaults)")
        return 0
    effective = settings.table()
    profiles = effective.pop("profiles")
    if args.json:
        shown = {table: {key: {"value": value, "from": settings.origin(table, key)} for key, value in values.items()}
                 for table, values in effective.items()}
        shown["profiles"] = [{"value": p, "from": settings.origin("profiles", p["name"])} for p in profiles]
        print(json.dumps(shown, indent=2))
        return 0

    def origin(table, key):
        return "" if settings.origin(table, key) == "default" else f"  # from {settings.source}"

    print(f"# effective settings: defaults, merged with {settings.source or 'no settings file'}")
    for table, values in effective.items():
        print(f"\n[{table}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}{origin(table, key)}")
    for profile in profiles:
        print(f"\n[[profiles]]{origin('profiles', profile['name'])}")
        for key, value in profile.items():
            print(f"{key} = {json.dumps(value)}")
    return 0


def parser():
    p = argparse.ArgumentParser(prog="datalab", description=__doc__)
    p.add_argument("--settings", help="settings file (default: $DATALAB_SETTINGS or /etc/datalab/settings.toml)")
    p.add_argument("--debug", action="store_true", help="on a failure, show the traceback too")
    loudness = p.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="count", default=0,
                          help="also show what the command runs (each docker command)")
    loudness.add_argument("-q", "--quiet", action="store_true", help="only warnings, failures and results")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install what is missing, build, deploy, wait until healthy")
    up.add_argument("--timeout", type=int, default=300, help="seconds to wait for health")
    up.add_argument("--no-demo", action="store_true", help="skip the demo loop (see [lab] demo)")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the lab; data is kept unless --purge")
    down.add_argument("--purge", action="store_true", help="also delete all data (asks first)")
    down.add_argument("--yes", action="store_true", help="do not ask before purging")
    down.set_defaults(func=cmd_down)
    cfg = sub.add_parser("settings", help="the effective settings, a file's check, the reference (docs/settings.md)")
    cfg_sub = cfg.add_subparsers(dest="settings_command", required=True)
    show = cfg_sub.add_parser("show", help="every setting's value and where it came from (default or file)")
    show.add_argument("--json", action="store_true")
    check = cfg_sub.add_parser("check", help="validate a settings file without starting anything")
    check.add_argument("file")
    cfg_sub.add_parser("docs", help="the settings reference (Markdown), generated from datalab/schema.py")
    cfg.set_defaults(func=cmd_settings)
    st = sub.add_parser("status", help="each service, its state, health and URL")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    lg = sub.add_parser("logs", help="a service's logs")
    lg.add_argument("service", choices=["hub", "proxy", "mlflow", "directory", "controller", "scoring", "scoring-edge",
                                        "featurestore"])
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("--tail", type=int, default=200)
    lg.set_defaults(func=cmd_logs)
    dl = sub.add_parser("demo-logins", help="the seeded demo users' passwords")
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(func=cmd_demo_logins)
    img = sub.add_parser("images", help="build, list or prune the images")
    img_sub = img.add_subparsers(dest="images_command", required=True)
    ib = img_sub.add_parser("build", help="build images (default: platform + default notebook images)")
    ib.add_argument("names", nargs="*", help="images to build, e.g. tensorflow-gpu")
    ib.set_defaults(func=cmd_images_build)
    il = img_sub.add_parser("list", help="every image with its tag, size and description")
    il.add_argument("--json", action="store_true")
    il.set_defaults(func=cmd_images_list)
    ip = img_sub.add_parser("prune", help="remove DataLab's image tags nothing uses (old builds, model versions "
                                          "no longer served) and the layers only they held, in the engine and in the lab's "
                                          "image registry")
    ip.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    ip.add_argument("--json", action="store_true")
    ip.set_defaults(func=cmd_images_prune)
    ir = img_sub.add_parser("registry", help="the lab's image registry: its address, and the CA an engine trusts "
                                             "it with (--json holds the certificate, for Ansible)")
    ir.add_argument("--json", action="store_true")
    ir.set_defaults(func=cmd_images_registry)
    jobs_cli.add_parser(sub).set_defaults(func=cmd_jobs)
    dep = sub.add_parser("deploy", help="roll a registered model version out to the scoring service")
    dep.add_argument("model", nargs="?", help="MODEL@ALIAS or MODEL@VERSION, e.g. fraud-detector@production")
    dep.add_argument("--image", help="serve a model image baked before (datalab/scoring-model:...) instead")
    dep.add_argument("--replicas", type=int, help="scoring replicas (default: as now, or [scoring] replicas)")
    dep.add_argument("--threshold", type=float, help="block at or above this score, 0-100")
    dep.add_argument("--timeout", type=int, default=300, help="seconds to wait for the rollout")
    dep.set_defaults(func=cmd_deploy)
    dm = sub.add_parser("demo", help="train, register, promote and score the reference model (as up does)")
    dm.set_defaults(func=cmd_demo)
    pro = sub.add_parser("promote", help="set the production alias on a version, as USER (what the registry UI does)")
    pro.add_argument("model")
    pro.add_argument("version")
    pro.add_argument("--as", dest="as_user", required=True, help="the user who promotes (an approver)")
    pro.add_argument("--wait", action="store_true", help="wait for the controller's decision")
    pro.add_argument("--timeout", type=int, default=600)
    pro.add_argument("--json", action="store_true")
    pro.set_defaults(func=cmd_promote)
    aud = sub.add_parser("audit", help="every promotion attempt: who, when, from/to, gate figures, outcome")
    aud.add_argument("--model", help="only this registered model's")
    aud.add_argument("--last", type=int, help="only the last N")
    aud.add_argument("--json", action="store_true", help="JSON lines (for export)")
    aud.set_defaults(func=cmd_audit)
    sc = sub.add_parser("scoring", help="the scoring service")
    sc_sub = sc.add_subparsers(dest="scoring_command", required=True)
    scs = sc_sub.add_parser("status", help="version, replicas, health, threshold")
    scs.add_argument("--json", action="store_true")
    scs.set_defaults(func=cmd_scoring_status)
    sft = sc_sub.add_parser("feedback-token", help="the token a bank's systems send fraud labels with "
                                                   "(POST /v1/feedback, Authorization: Bearer ...)")
    sft.set_defaults(func=cmd_scoring_feedback_token)
    fs = sub.add_parser("features", help="the feature store scoring keeps transactions' state in")
    fs_sub = fs.add_subparsers(dest="features_command", required=True)
    fss = fs_sub.add_parser("status", help="keys, memory and its limit, persistence, last write")
    fss.add_argument("--json", action="store_true")
    fss.set_defaults(func=cmd_features)
    fsb = fs_sub.add_parser("backfill", help="load past transactions and labels (CSV or parquet: TRANSACTION_ID, "
                                             "TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD)")
    fsb.add_argument("file")
    fsb.set_defaults(func=cmd_features)
    ins = sub.add_parser("install", help="system packages, Docker engine and Swarm only")
    ins.add_argument("--test", action="store_true", help="also what the tests need (chromium)")
    ins.set_defaults(func=cmd_install)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    steps_mod.configure(-1 if args.quiet else args.verbose)
    try:
        # checking a file, or printing the reference, needs no settings of its own
        standalone = args.command == "settings" and args.settings_command in ("check", "docs")
        settings = None if standalone else settings_mod.load(args.settings)
        if settings:
            trust_lab_ca(settings)
        return args.func(settings, args)
    except (SettingsError, DockerError, JobsError, DeployError, HTTPError) as e:
        if args.debug:
            raise
        print(f"datalab: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `datalab ... | head`
        return 0
    except Exception as e:  # noqa: BLE001 (one line, not a traceback: --debug shows it)
        if args.debug:
            raise
        print(f"datalab: {type(e).__name__}: {e} (datalab --debug {args.command} ... shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
