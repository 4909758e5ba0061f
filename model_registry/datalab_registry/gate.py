"""The promotion gate: does a candidate's evaluation (datalab_scoring.evaluate)
pass the lab's thresholds (settings [gate])? Pure; returns the reasons it fails."""

ABSOLUTE = (
    ("average_precision", "min_average_precision", "at least"),
    ("recall", "min_recall", "at least"),
    ("false_positive_rate", "max_false_positive_rate", "at most"),
    ("block_rate", "max_block_rate", "at most"),
)
# measure, limit, direction: a drop (production - candidate) or a rise (candidate - production)
RELATIVE = (
    ("average_precision", "max_average_precision_drop", "drop"),
    ("recall", "max_recall_drop", "drop"),
    ("block_rate", "max_block_rate_increase", "rise"),
)


def failures(evaluation, limits):
    """[reason, ...]; empty when the candidate passes."""
    cand, prod = evaluation["candidate"], evaluation.get("production")
    threshold = evaluation["threshold"]
    reasons = []
    for measure, key, how in ABSOLUTE:
        value, limit = cand[measure], limits[key]
        if (how == "at least" and value < limit) or (how == "at most" and value > limit):
            reasons.append(f"{measure.replace('_', ' ')} {value:.3f} at threshold {threshold:g} "
                           f"(must be {how} {limit:g})")
    if prod:
        for measure, key, direction in RELATIVE:
            change = prod[measure] - cand[measure] if direction == "drop" else cand[measure] - prod[measure]
            if change > limits[key]:
                reasons.append(f"{measure.replace('_', ' ')} {cand[measure]:.3f} vs {prod[measure]:.3f} in production "
                               f"({direction} {change:.3f} > {limits[key]:g})")
        shift = evaluation.get("score_psi")
        if shift is not None and shift > limits["max_score_psi"]:
            reasons.append(f"score distribution moved: PSI {shift:.3f} vs production (> {limits['max_score_psi']:g})")
    return reasons


def summary(evaluation):
    """The gate's figures as flat tags: datalab.gate.<measure> = value."""
    tags = {f"datalab.gate.{k}": f"{v:.4f}" for k, v in evaluation["candidate"].items()}
    if evaluation.get("production"):
        tags.update({f"datalab.gate.production_{k}": f"{v:.4f}" for k, v in evaluation["production"].items()})
    if evaluation.get("score_psi") is not None:
        tags["datalab.gate.score_psi"] = f"{evaluation['score_psi']:.4f}"
    tags["datalab.gate.transactions"] = str(evaluation["transactions"])
    return tags
