"""Download a registered model version (by version number or alias) from the
MLflow registry into a folder, for baking into a scoring image (`datalab
deploy`). Runs in a one-shot container on the lab's tracking network; prints
one JSON line. (The promotion gate fetches in the controller and runs model
code only in network-less sandboxes: model_registry/datalab_registry/sandbox.py.)

    python -m datalab_scoring.fetch NAME VERSION_OR_ALIAS DEST
"""

import argparse
import json
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="datalab_scoring.fetch")
    parser.add_argument("name")
    parser.add_argument("ref")
    parser.add_argument("dest")
    args = parser.parse_args(argv)
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    name, ref = args.name, args.ref
    try:
        version = client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
        path = download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=args.dest)
    except MlflowException as e:
        print(f"cannot fetch model {name}@{ref}: {e.message}", file=sys.stderr)
        return 2
    answer = {"name": name, "version": str(version.version), "run_id": version.run_id,
              "aliases": list(version.aliases), "path": path}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
