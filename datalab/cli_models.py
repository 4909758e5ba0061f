"""`datalab`'s commands for models in production: `deploy`, `scoring status`,
`scoring feedback-token`, `promote`, `audit`, `features` (cli.py parses the
arguments and calls them)."""

import json
import sys

from .docker import Docker, DockerError
from .steps import Steps


def cmd_deploy(settings, args):
    from . import deploy

    name, _, ref = (args.model or "").partition("@")
    if not args.image and (not name or not ref):
        print("say which version: MODEL@ALIAS or MODEL@VERSION, e.g. fraud-detector@production", file=sys.stderr)
        return 2
    steps = Steps()
    docker = Docker(settings)
    deploy.wait_for_promotion(settings, steps)
    previous = deploy.current(settings)
    defaults = previous or settings["scoring"]
    replicas = args.replicas or defaults["replicas"]
    threshold = args.threshold if args.threshold is not None else defaults["threshold"]
    if not 0 <= threshold <= 100 or replicas < 1:
        print("threshold must be within 0-100 and replicas at least 1", file=sys.stderr)
        return 2
    from . import image_registry, images

    scoring_ref = images.current_ref(docker, "scoring")
    nothing_changed = f"nothing changed, {describe(previous)} still serving"
    try:
        if args.image:  # baked elsewhere (another lab, CI): its labels say what it serves
            baked = deploy.baked_image(docker, args.image)
            with steps.step(f"publishing {args.image} to the lab's image registry"):
                baked["image"] = image_registry.publish(settings, args.image)
        else:
            with steps.step(f"fetching {name}@{ref} from the registry and baking it into an image"):
                _, baked = deploy.prepare(docker, settings, scoring_ref, name, ref)
    except (deploy.DeployError, DockerError) as e:  # a bake or a push failed: no rollout began
        print(f"datalab: {e}; {nothing_changed}", file=sys.stderr)
        return 1
    target = {**baked, "replicas": replicas, "threshold": threshold}
    name = baked["model"]
    try:
        with steps.step(f"rolling out {name} v{target['version']} to {replicas} replica(s)"):
            outcome, why = deploy.rollout(docker, settings, target, timeout=args.timeout)
    except deploy.DeployError as e:
        print(f"datalab: {e}; {nothing_changed}", file=sys.stderr)
        return 1
    except DockerError as e:  # the rollout timed out: say what serves, and what the record says
        print(f"datalab: {e}; on record as serving: {describe(previous)}", file=sys.stderr)
        return 1
    if outcome != "completed":
        print(f"datalab: {name} v{target['version']} was rolled back ({why or 'it never became ready'}); "
              f"{describe(previous)} serving", file=sys.stderr)
        return 1
    print(f"{name} v{target['version']} serves all traffic on {settings.scoring_url}/v1/score "
          f"(threshold {threshold}, {replicas} replica(s))")
    return 0


def cmd_promote(settings, args):
    from . import audit, promotion

    seen = len(audit.records(settings))
    try:
        promotion.set_production_alias(settings, args.as_user, args.model, args.version)
    except promotion.PromotionError as e:
        print(f"datalab: {e}", file=sys.stderr)
        return 1
    alias = settings["registry"]["production_alias"]
    print(f"{args.as_user} set '{alias}' on {args.model} v{args.version}; waiting for the gate and the rollout")
    if not args.wait:
        return 0
    try:
        record = promotion.wait_outcome(settings, args.model, args.version, seen, timeout=args.timeout)
    except promotion.PromotionError as e:
        print(f"datalab: {e}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2) if args.json else audit_line(record))
    return 0 if record["outcome"] in ("deployed", "adopted") else 1


def audit_line(r):
    if r.get("kind") == "platform":  # the controller's own registry actions (its webhook)
        return f"{r['at']}  platform: {r['outcome']} by {r['by']}  ({'; '.join(r['reasons'])})"
    gate = (r.get("gate") or {}).get("candidate") or {}
    figures = " ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in gate.items())
    why = f"  ({'; '.join(r['reasons'])})" if r.get("reasons") else ""
    rollout = f" rollout {r['rollout_s']} s" if r.get("rollout_s") is not None else ""
    return (f"{r['at']}  {r['model']} v{r['version']} (from {r['from'] or 'nothing'}) by {r['by']}: "
            f"{r['outcome'].upper()}{rollout}  {figures}{why}") + gate_details(r.get("gate") or {})


def gate_details(gate):
    """What a promotion was judged on, and its per-segment table (candidate / production)."""
    lines = []
    if gate.get("judged_on"):
        lines.append(f"    judged on {gate['judged_on']['source']}: {gate['judged_on']['why']}")
    if gate.get("segments"):
        lines.append(f"    {'segment':18} {'transactions':>12} {'frauds':>7}  {'AP':>13}  {'recall':>13}  {'block rate':>13}")

        def pair(segment, measure):
            prod = segment["production"]
            return f"{segment['candidate'][measure]:.3f}" + (f" / {prod[measure]:.3f}" if prod else "")

        for name, segment in gate["segments"].items():
            lines.append(f"    {name:18} {segment['transactions']:>12,} {segment['frauds']:>7,}  "
                         f"{pair(segment, 'average_precision'):>13}  {pair(segment, 'recall'):>13}  "
                         f"{pair(segment, 'block_rate'):>13}")
    return "".join("\n" + line for line in lines)


def cmd_audit(settings, args):
    from . import audit

    records = audit.records(settings)
    if args.model:
        records = [r for r in records if r["model"] == args.model]
    for r in records[-args.last:] if args.last else records:
        print(json.dumps(r, sort_keys=True) if args.json else audit_line(r))
    if not records and not args.json:
        print("no promotion attempted yet (set the production alias on a model version in the registry)")
    return 0


def describe(deployment):
    return f"{deployment['model']} v{deployment['version']}" if deployment else "no model"


def cmd_scoring_status(settings, args):
    from . import deploy, swarm

    docker = Docker(settings)
    deployment = deploy.current(settings)
    rows = {r["service"]: r for r in swarm.status(docker, settings)} if docker.engine_running() else {}
    out = {"deployment": deployment, "url": f"{settings.scoring_url}/v1/score",
           "scoring": rows.get("scoring"), "edge": rows.get("scoring-edge"),
           "replicas": deploy.replica_figures(docker, settings) if deployment else []}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if not deployment:
        print(f"no model deployed (datalab deploy MODEL@ALIAS); edge: {out['url']}")
        return 0
    svc = out["scoring"] or {}
    print(f"{deployment['model']} v{deployment['version']}  threshold {deployment['threshold']}  "
          f"replicas {svc.get('replicas', '?')}  health {svc.get('health', '?')}  {out['url']}")
    for r in out["replicas"]:
        ready = f"model ready {r['startup_s']} s after start" if r["startup_s"] else "start-up time not reported"
        print(f"  {r['task']}: {r['memory_mb']} MB, {ready}")
    return 0


def cmd_scoring_feedback_token(settings, args):
    from . import credentials

    print(credentials.ensure(settings)["feedback_token"].read_text().strip())
    return 0


def cmd_features(settings, args):
    from . import features

    docker = Docker(settings)
    if args.features_command == "backfill":
        return features.run_tool(docker, settings, "backfill", history=args.file)
    return features.run_tool(docker, settings, "status", *(["--json"] if args.json else []))
