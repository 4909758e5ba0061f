"""Download a registered model version (by version number or alias) from the
MLflow registry into a folder, for baking into a scoring image; with
--evaluate-against, also measure it and the version in production on the
candidate's evaluation set for the promotion gate. Runs in a one-shot
container on the lab's tracking network; prints one JSON line.

    python -m datalab_scoring.fetch NAME VERSION_OR_ALIAS DEST
        [--evaluate-against NAME/VERSION | --evaluate-against ""] [--threshold 50]
"""

import argparse
import json
import sys
import tempfile


def main(argv=None):
    parser = argparse.ArgumentParser(prog="datalab_scoring.fetch")
    parser.add_argument("name")
    parser.add_argument("ref")
    parser.add_argument("dest")
    parser.add_argument("--evaluate-against", default=None,
                        help='NAME/VERSION in production to compare with ("" when none is)')
    parser.add_argument("--threshold", type=float, default=50.0)
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
    if args.evaluate_against is not None:
        try:
            answer["evaluation"] = evaluate(client, version, path, args.evaluate_against, args.threshold)
        except (MlflowException, ValueError, OSError) as e:
            print(f"cannot evaluate {name} v{version.version}: {getattr(e, 'message', e)}", file=sys.stderr)
            return 3
    print(json.dumps(answer))
    return 0


def evaluate(client, version, path, against, threshold):
    from mlflow.artifacts import download_artifacts

    from . import evaluate as gate, model as models

    with tempfile.TemporaryDirectory() as work:
        frame = gate.evaluation_set(client, version.run_id, work)
        candidate = models.load(path, version.name, version.version)
        production_scores = None
        if against:
            prod_name, prod_version = against.rsplit("/", 1)
            prod_path = download_artifacts(artifact_uri=f"models:/{prod_name}/{prod_version}", dst_path=f"{work}/prod")
            production_scores = gate.scores(models.load(prod_path, prod_name, prod_version), frame)
        return gate.evaluate(frame[gate.LABEL].tolist(), gate.scores(candidate, frame), threshold, production_scores)


if __name__ == "__main__":
    sys.exit(main())
