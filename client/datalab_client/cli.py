"""`datalab jobs ...`: the jobs verbs, one implementation for the host's
`datalab` command (which adds them to its own) and for notebook containers,
whose `datalab` command is this module alone."""

import argparse
import json
import sys

from . import http
from .jobs import SUCCEEDED, UNFINISHED, JobsClient, JobsError


def add_parser(sub):
    """The `jobs` subcommand and its verbs, on an argparse subparsers object."""
    jobs = sub.add_parser("jobs", help="notebook jobs (papermill in containers)")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = jsub.add_parser("submit", help="run a notebook as a job (or on a schedule)")
    submit.add_argument("notebook", help="path to the .ipynb")
    submit.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="a parameter (checked against the notebook's parameters cell)")
    submit.add_argument("--profile", help="image profile (default: the one of the notebook's kernel)")
    submit.add_argument("--as", dest="as_user", help="the user the job runs as (admins, on the host)")
    submit.add_argument("--timeout", type=int, help="seconds before the job is stopped")
    submit.add_argument("--retries", type=int, help="times a failed job is run again")
    submit.add_argument("--cpu", type=float, help="CPUs (default: the profile's)")
    submit.add_argument("--memory", help="memory, e.g. 4G (default: the profile's)")
    submit.add_argument("--schedule", help="cron expression: run it on this schedule instead of now")
    submit.add_argument("--wait", action="store_true", help="return when the job has finished")
    for name, helptext in (("list", "your jobs (admins: --all for everybody's)"), ("show", "one job"),
                           ("cancel", "stop a job"), ("schedules", "your schedules")):
        cmd = jsub.add_parser(name, help=helptext)
        if name in ("show", "cancel"):
            cmd.add_argument("id")
        if name == "list":
            cmd.add_argument("--all", action="store_true")
    for name in ("submit", "list", "show", "cancel", "schedules"):
        jsub.choices[name].add_argument("--json", action="store_true")
    logs = jsub.add_parser("logs", help="a job's log (papermill's cell output)")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true")
    output = jsub.add_parser("output", help="write the executed notebook (ipynb JSON) to stdout")
    output.add_argument("id")
    unschedule = jsub.add_parser("unschedule", help="delete a schedule")
    unschedule.add_argument("id")
    return jobs


def print_job(job, as_json):
    if as_json:
        print(json.dumps(job, indent=2))
        return
    print(f"job {job['id']}  {job['status']}  user {job['user']}  profile {job['profile']}  "
          f"notebook {job['notebook_name']}  attempt {job['attempt']}/{job['retries'] + 1}")
    if job.get("params"):
        print(f"  parameters: {json.dumps(job['params'])}")
    if job.get("exit_reason"):
        print(f"  {job['exit_reason']}" + (f": {job['error']}" if job.get("error") else ""))


def run(client: JobsClient, args, on_host):
    """One `jobs` verb; the exit code."""
    if args.jobs_command == "submit":
        if on_host and not args.as_user:
            print("on the host, say whom the job runs as: --as USER", file=sys.stderr)
            return 2
        result = client.submit(args.notebook, params=dict(args.param or []), profile=args.profile,
                               as_user=args.as_user, timeout=args.timeout, retries=args.retries,
                               cpu=args.cpu, memory=args.memory, schedule=args.schedule)
        if "schedule" in result:
            s = result["schedule"]
            print(json.dumps(s, indent=2) if args.json else  # --json: the schedule itself, as for a job
                  f"schedule {s['id']} ({s['cron']}) for {s['user']}: {s['notebook_name']} on {s['profile']}")
            return 0
        job = result["job"]
        if args.wait:
            job = client.wait(job["id"])
        print_job(job, args.json)
        return 0 if job["status"] in (*UNFINISHED, SUCCEEDED) else 1
    if args.jobs_command == "list":
        jobs = client.list(everyone=args.all)
        if args.json:
            print(json.dumps(jobs, indent=2))
        else:
            print(f"{'ID':13} {'USER':10} {'STATUS':10} {'PROFILE':12} {'DURATION':>9}  NOTEBOOK")
            for j in jobs:
                duration = f"{j['duration_s']} s" if j.get("duration_s") is not None else "-"
                print(f"{j['id']:13} {j['user']:10} {j['status']:10} {j['profile']:12} {duration:>9}  {j['notebook_name']}")
        return 0
    if args.jobs_command == "show":
        print_job(client.show(args.id), args.json)
        return 0
    if args.jobs_command == "cancel":
        print_job(client.cancel(args.id), args.json)
        return 0
    if args.jobs_command == "logs":
        if args.follow:
            for chunk in client.logs(args.id, follow=True).stream(4096):
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
        else:
            sys.stdout.write(client.logs(args.id))
        return 0
    if args.jobs_command == "output":
        sys.stdout.write(client.output(args.id))
        return 0
    if args.jobs_command == "schedules":
        schedules = client.schedules()
        if args.json:
            print(json.dumps(schedules, indent=2))
        else:
            for s in schedules:
                print(f"{s['id']:13} {s['user']:10} {s['cron']:16} {s['profile']:12} {s['notebook_name']}")
        return 0
    if args.jobs_command == "unschedule":
        client.unschedule(args.id)
        return 0
    return 2


def main(argv=None):
    """`datalab jobs ...` in a notebook container, as its user."""
    parser = argparse.ArgumentParser(prog="datalab", description="DataLab's jobs, from a notebook container")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return run(JobsClient.from_environment(), args, on_host=False)
    except (JobsError, http.HTTPError) as e:
        print(f"datalab: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `datalab jobs logs ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
