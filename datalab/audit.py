"""The promotion audit log: one JSON object per line, appended by the
promotion controller for every attempt, read by `datalab audit`.

    {"at", "model", "version", "from", "by", "outcome", "reasons", "gate", "rollout_s", "duration_s"}

outcome: "deployed", "rejected" (the gate, or a version that cannot be
fetched or evaluated), "rolled back" (the rollout failed), "failed" (MLflow
or the engine failed three times), "superseded" (the alias moved on during
the gate) or "adopted" (the version already served, by `datalab deploy`).
Records with `"kind": "platform"` (empty model and version) are the
controller's platform-only actions in the registry, e.g. (re)registering its
webhook or deleting a webhook it did not make.
"""

import json
import os


def path(settings):
    return settings.data_dir / "deployments" / "audit.jsonl"


def append(settings, record):
    line = json.dumps(record, sort_keys=True) + "\n"
    # one write of one line: a reader never sees half a record
    fd = os.open(path(settings), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def records(settings):
    found = path(settings)
    if not found.exists():
        return []
    return [json.loads(line) for line in found.read_text().splitlines() if line.strip()]
