"""Scores a candidate version, and the version in production, on the
candidate's held-out evaluation set, with the very code that serves them
(model.load), and measures what the promotion gate decides on.

The evaluation set is the parquet file the candidate's run names in its
`datalab.evaluation` tag (the reference workload logs one): the model's
fields and the label column TX_FRAUD. The controller hands it over as a file
(model_registry/datalab_registry/sandbox.py).
"""

import math

LABEL = "TX_FRAUD"


def scores(model, frame, batch=4096):
    """Fraud scores 0-100, as the scoring API gives them."""
    missing = [n for n, _ in model.fields if n not in frame]
    if missing:
        raise ValueError(f"the evaluation set lacks the model's fields {missing}")
    rows = frame[[n for n, _ in model.fields]].astype("float64").values.tolist()
    out = []
    for start in range(0, len(rows), batch):
        out += [100.0 * float(p) for p in model.predict(rows[start:start + batch])]
    return out


def psi(expected, actual, bins=10):
    """Population stability index of two score samples (0-100), on equal-width bins."""
    def shares(values):
        counts = [0] * bins
        for v in values:
            counts[min(int(v / (100.0 / bins)), bins - 1)] += 1
        return [max(c / len(values), 1e-4) for c in counts]

    e, a = shares(expected), shares(actual)
    return sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a))


def measures(labels, scores_, threshold):
    from sklearn.metrics import average_precision_score

    blocked = [s >= threshold for s in scores_]
    positives = sum(labels)
    negatives = len(labels) - positives
    true_pos = sum(1 for y, b in zip(labels, blocked) if b and y)
    false_pos = sum(1 for y, b in zip(labels, blocked) if b and not y)
    return {
        "average_precision": float(average_precision_score(labels, scores_)) if positives else 0.0,
        "recall": true_pos / positives if positives else 0.0,
        "false_positive_rate": false_pos / negatives if negatives else 0.0,
        "block_rate": sum(blocked) / len(blocked) if blocked else 0.0,
    }


def evaluate(labels, candidate_scores, threshold, production_scores=None):
    """{"candidate": measures, "production": measures or None, "score_psi", "transactions", "frauds"}"""
    labels = [int(y) for y in labels]
    return {
        "threshold": threshold,
        "transactions": len(labels),
        "frauds": sum(labels),
        "candidate": measures(labels, candidate_scores, threshold),
        "production": measures(labels, production_scores, threshold) if production_scores is not None else None,
        "score_psi": psi(production_scores, candidate_scores) if production_scores is not None else None,
    }
