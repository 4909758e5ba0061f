"""The promotion gate: does a candidate's evaluation (datalab_scoring.evaluate)
pass the lab's thresholds (settings [gate])? Pure; returns the reasons it fails.
And what the gate's sandboxes answer, read strictly: a model's code ran there,
so their output is taken as data of one exact shape, or not at all."""

import json
import math

from .gate_worker import MARKER

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


MEASURES = ("average_precision", "recall", "false_positive_rate", "block_rate")
MAX_TRANSACTIONS = 5_000_000


class Unreadable(ValueError):
    pass


def _answer(output, what):
    """The JSON after MARKER on the last line of a sandbox's stdout."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines or not lines[-1].startswith(MARKER):
        raise Unreadable(f"{what} gave no answer")
    try:
        return json.loads(lines[-1][len(MARKER):], parse_constant=_no_constant)
    except ValueError as e:
        raise Unreadable(f"{what} answered something that is not the gate's JSON ({str(e)[:100]})") from None


def _no_constant(name):
    raise ValueError(f"{name} is not a number the gate takes")


def _number(value, what, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise Unreadable(f"{what} is {str(value)[:40]}, not a number in [{low:g}, {high:g}]")
    return float(value)


def parse_scores(output, what):
    """[score 0-100, ...] from a scoring sandbox's output."""
    answer = _answer(output, what)
    scores = answer.get("scores") if isinstance(answer, dict) and set(answer) == {"scores"} else None
    if not isinstance(scores, list) or not 0 < len(scores) <= MAX_TRANSACTIONS:
        raise Unreadable(f"{what} answered no list of scores")
    return [_number(s, f"a score of {what}", 0.0, 100.0) for s in scores]


def parse_evaluation(output, threshold, transactions):
    """The judge's figures, exactly in the shape datalab_scoring.evaluate gives them."""
    answer = _answer(output, "the judgement")
    keys = {"threshold", "transactions", "frauds", "candidate", "production", "score_psi"}
    if not isinstance(answer, dict) or set(answer) != keys:
        raise Unreadable(f"the judgement answered keys {sorted(answer) if isinstance(answer, dict) else answer!r}")
    if answer["transactions"] != transactions or answer["threshold"] != threshold:
        raise Unreadable("the judgement is about other transactions or another threshold")
    frauds = answer["frauds"]
    if isinstance(frauds, bool) or not isinstance(frauds, int) or not 0 <= frauds <= transactions:
        raise Unreadable(f"the judgement counts {str(frauds)[:40]} frauds in {transactions} transactions")
    figures = {"threshold": threshold, "transactions": transactions, "frauds": frauds}
    for side in ("candidate", "production"):
        found = answer[side]
        if found is None and side == "production":
            figures[side] = None
            continue
        if not isinstance(found, dict) or set(found) != set(MEASURES):
            raise Unreadable(f"the judgement's {side} figures are not {', '.join(MEASURES)}")
        figures[side] = {m: _number(found[m], f"the {side}'s {m}", 0.0, 1.0) for m in MEASURES}
    psi = answer["score_psi"]
    figures["score_psi"] = None if psi is None else _number(psi, "the score PSI", 0.0, math.inf)
    if (figures["production"] is None) != (psi is None):
        raise Unreadable("the judgement compares with production by halves")
    return figures
