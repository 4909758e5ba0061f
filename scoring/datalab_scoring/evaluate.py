"""Scores a candidate version, and the version in production, on the same
labelled transactions, with the very code that serves them (model.load),
and measures what the promotion gate decides on: overall, and per segment.

The transactions are production's own recent labelled ones (the feature
store's scored log, with the features they were scored with) or, when too few
are labelled, the parquet file the candidate's run names in its
`datalab.evaluation` tag (the reference workload logs one): the model's
fields and the label column TX_FRAUD. The controller hands it over as a file
(model_registry/datalab_registry/sandbox.py).
"""

import math

LABEL = "TX_FRAUD"
# Segments a release is judged on besides the whole (as Stripe checks a model
# per segment before a release): name -> (column, test). A segment whose
# column the transactions lack is left out.
AMOUNT_BANDS = (50.0, 150.0)
SEGMENTS = {
    f"amount < {AMOUNT_BANDS[0]:g}": ("TX_AMOUNT", lambda v: v < AMOUNT_BANDS[0]),
    f"amount {AMOUNT_BANDS[0]:g}-{AMOUNT_BANDS[1]:g}": ("TX_AMOUNT", lambda v: AMOUNT_BANDS[0] <= v < AMOUNT_BANDS[1]),
    f"amount >= {AMOUNT_BANDS[1]:g}": ("TX_AMOUNT", lambda v: v >= AMOUNT_BANDS[1]),
    "night": ("TX_DURING_NIGHT", lambda v: v == 1),
    "weekend": ("TX_DURING_WEEKEND", lambda v: v == 1),
    # the 30-day count includes the transaction itself: 1 is a customer's first in 30 days
    "new customer": ("CUSTOMER_ID_NB_TX_30DAY_WINDOW", lambda v: v <= 1),
    "known customer": ("CUSTOMER_ID_NB_TX_30DAY_WINDOW", lambda v: v > 1),
}


def segment_members(frame):
    """{segment: [bool per row]} for the segments whose column `frame` has."""
    return {name: [bool(test(v)) for v in frame[column].tolist()]
            for name, (column, test) in SEGMENTS.items() if column in frame}


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


def evaluate(labels, candidate_scores, threshold, production_scores=None, segments=None):
    """{"candidate": measures, "production": measures or None, "score_psi", "transactions", "frauds",
    "segments": {name: {"transactions", "frauds", "candidate", "production"}}}; `segments`:
    segment_members() of the same transactions."""
    labels = [int(y) for y in labels]
    per_segment = {}
    for name, members in (segments or {}).items():
        rows = [i for i, member in enumerate(members) if member]
        if not rows:
            continue
        picked = [labels[i] for i in rows]
        per_segment[name] = {
            "transactions": len(rows), "frauds": sum(picked),
            "candidate": measures(picked, [candidate_scores[i] for i in rows], threshold),
            "production": (measures(picked, [production_scores[i] for i in rows], threshold)
                           if production_scores is not None else None)}
    return {
        "threshold": threshold,
        "transactions": len(labels),
        "frauds": sum(labels),
        "candidate": measures(labels, candidate_scores, threshold),
        "production": measures(labels, production_scores, threshold) if production_scores is not None else None,
        "score_psi": psi(production_scores, candidate_scores) if production_scores is not None else None,
        "segments": per_segment,
    }
