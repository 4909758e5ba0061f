"""The gate's work inside its sandboxes (sandbox.py): a script the Python of
the scoring image (or of a model image baked from it) runs, with nothing of
the controller's but this file and the inputs copied beside it. Standard
library at the top: the controller imports MARKER from here.

    gate_worker.py score MODEL_DIR EVALUATION.parquet
        {"scores": [...]}: the model's fraud scores (0-100) of the evaluation set,
        with the scoring runtime's own loading code (datalab_scoring.model)
    gate_worker.py judge EVALUATION.parquet CANDIDATE.json [--production PRODUCTION.json] --threshold T
        the gate's figures (datalab_scoring.evaluate) from the labels and the scores

The answer is the last line of stdout, after MARKER.
"""

import argparse
import json
import sys

MARKER = "DATALAB-GATE "


def score(model_dir, evaluation):
    import pandas as pd
    from datalab_scoring import evaluate, model

    scores = evaluate.scores(model.load(model_dir, "gate", "0"), pd.read_parquet(evaluation))
    return {"scores": [round(s, 6) for s in scores]}


def judge(evaluation, candidate, production, threshold):
    import pandas as pd
    from datalab_scoring import evaluate

    frame = pd.read_parquet(evaluation)
    if evaluate.LABEL not in frame:
        raise ValueError(f"the evaluation set has no {evaluate.LABEL} column")
    labels = frame[evaluate.LABEL].tolist()
    scores = {name: json.loads(open(path).read())["scores"] if path else None
              for name, path in (("candidate", candidate), ("production", production))}
    for name, found in scores.items():
        if found is not None and len(found) != len(labels):
            raise ValueError(f"{len(found)} {name} scores for {len(labels)} transactions")
    return evaluate.evaluate(labels, scores["candidate"], threshold, scores["production"],
                             evaluate.segment_members(frame))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gate_worker.py")
    sub = parser.add_subparsers(dest="command", required=True)
    scoring = sub.add_parser("score")
    scoring.add_argument("model_dir")
    scoring.add_argument("evaluation")
    judging = sub.add_parser("judge")
    judging.add_argument("evaluation")
    judging.add_argument("candidate")
    judging.add_argument("--production")
    judging.add_argument("--threshold", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "score":
        answer = score(args.model_dir, args.evaluation)
    else:
        answer = judge(args.evaluation, args.candidate, args.production, args.threshold)
    print("\n" + MARKER + json.dumps(answer, allow_nan=False), flush=True)


if __name__ == "__main__":
    sys.exit(main())
