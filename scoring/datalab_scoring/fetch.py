"""Download a registered model version (by version number or alias) from the
MLflow registry into a folder, for baking into a scoring image. Runs in a
one-shot container on the lab's tracking network; prints one JSON line.

    python -m datalab_scoring.fetch NAME VERSION_OR_ALIAS DEST
"""

import json
import sys


def main(argv=None):
    name, ref, dest = (argv or sys.argv[1:])[:3]
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
        path = download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=dest)
    except MlflowException as e:
        print(f"cannot fetch model {name}@{ref}: {e.message}", file=sys.stderr)
        return 2
    print(json.dumps({"name": name, "version": str(version.version), "run_id": version.run_id,
                      "aliases": list(version.aliases), "path": path}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
