"""The promotion gate: does a candidate's evaluation (datalab_scoring.evaluate)
pass the lab's thresholds (settings [gate]), overall and on every segment with
enough data? Pure; returns the reasons it fails. Which transactions it is
judged on: production's recent labelled ones when there are enough, else the
candidate's evaluation set, saying why. And what the gate's sandboxes answer,
read strictly: a model's code ran there, so their output is taken as data of
one exact shape, or not at all."""

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


# a segment's drop (production - candidate) beyond which the candidate is refused
SEGMENT_RELATIVE = (
    ("average_precision", "max_segment_average_precision_drop"),
    ("recall", "max_segment_recall_drop"),
)
PRODUCTION, EVALUATION_SET, REFUSED = "production", "evaluation set", "refused"


def judged_on(window, limits, fields):
    """(PRODUCTION, EVALUATION_SET or REFUSED, why): judge on production's labelled
    window when it has enough labelled transactions and frauds; on the candidate's
    evaluation set when it has not. A candidate taking a field the window's features
    lack is refused then, not judged on its own team's data. `window`: the export's
    facts (sandbox.production_window), or {"error": why}; `fields`: the candidate's
    input names."""
    days = limits["production_window_days"]
    if "error" in window:
        return EVALUATION_SET, window["error"]
    if window["labelled"] < limits["production_min_labelled"] or window["frauds"] < limits["production_min_frauds"]:
        return EVALUATION_SET, (f"production's last {days:g} days hold {window['labelled']} labelled transactions, "
                                f"{window['frauds']} frauds (the gate needs {limits['production_min_labelled']} "
                                f"and {limits['production_min_frauds']})")
    missing = sorted(set(fields) - set(window["features"]))
    if missing:
        return REFUSED, (f"production's last {days:g} days hold {window['labelled']} labelled transactions, but "
                         f"not the field(s) the candidate takes: {', '.join(missing)} (a candidate is judged on "
                         "production's transactions when there are enough, and these have the features "
                         f"{', '.join(window['features'])})")
    return PRODUCTION, (f"production's last {days:g} days: {window['labelled']} labelled transactions, "
                        f"{window['frauds']} frauds")


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
        for name, segment in evaluation.get("segments", {}).items():
            if segment["transactions"] < limits["segment_min_transactions"] \
                    or segment["frauds"] < limits["segment_min_frauds"]:
                continue  # too little to tell noise from a regression
            cand_s, prod_s = segment["candidate"], segment["production"]
            for measure, key in SEGMENT_RELATIVE:
                drop = prod_s[measure] - cand_s[measure]
                if drop > limits[key]:
                    reasons.append(f"segment '{name}' ({segment['transactions']} transactions, {segment['frauds']} "
                                   f"frauds): {measure.replace('_', ' ')} {cand_s[measure]:.3f} vs "
                                   f"{prod_s[measure]:.3f} in production (drop {drop:.3f} > {limits[key]:g})")
    return reasons


def summary(evaluation):
    """The gate's figures as flat tags: datalab.gate.<measure> = value."""
    tags = {f"datalab.gate.{k}": f"{v:.4f}" for k, v in evaluation["candidate"].items()}
    if evaluation.get("production"):
        tags.update({f"datalab.gate.production_{k}": f"{v:.4f}" for k, v in evaluation["production"].items()})
    if evaluation.get("score_psi") is not None:
        tags["datalab.gate.score_psi"] = f"{evaluation['score_psi']:.4f}"
    tags["datalab.gate.transactions"] = str(evaluation["transactions"])
    if evaluation.get("judged_on"):
        tags["datalab.gate.judged_on"] = evaluation["judged_on"]["source"]
    return tags


MEASURES = ("average_precision", "recall", "false_positive_rate", "block_rate")
MAX_TRANSACTIONS = 5_000_000
MAX_SEGMENTS = 32


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
    keys = {"threshold", "transactions", "frauds", "candidate", "production", "score_psi", "segments"}
    if not isinstance(answer, dict) or set(answer) != keys:
        raise Unreadable(f"the judgement answered keys {sorted(answer) if isinstance(answer, dict) else answer!r}")
    if answer["transactions"] != transactions or answer["threshold"] != threshold:
        raise Unreadable("the judgement is about other transactions or another threshold")
    frauds = answer["frauds"]
    if isinstance(frauds, bool) or not isinstance(frauds, int) or not 0 <= frauds <= transactions:
        raise Unreadable(f"the judgement counts {str(frauds)[:40]} frauds in {transactions} transactions")
    figures = {"threshold": threshold, "transactions": transactions, "frauds": frauds,
               **_sides(answer, "the judgement's", answer["production"] is not None)}
    psi = answer["score_psi"]
    figures["score_psi"] = None if psi is None else _number(psi, "the score PSI", 0.0, math.inf)
    if (figures["production"] is None) != (psi is None):
        raise Unreadable("the judgement compares with production by halves")
    segments = answer["segments"]
    if not isinstance(segments, dict) or len(segments) > MAX_SEGMENTS:
        raise Unreadable(f"the judgement's segments are not a table of at most {MAX_SEGMENTS}")
    figures["segments"] = {}
    for name, segment in segments.items():
        if not (0 < len(name) <= 40 and name.isprintable()):
            raise Unreadable("the judgement names a segment oddly")
        if not isinstance(segment, dict) or set(segment) != {"transactions", "frauds", "candidate", "production"}:
            raise Unreadable(f"the judgement's segment {name!r} is not its figures")
        size, frauds_in = segment["transactions"], segment["frauds"]
        if any(isinstance(n, bool) or not isinstance(n, int) for n in (size, frauds_in)) \
                or not 0 <= frauds_in <= size <= transactions:
            raise Unreadable(f"the judgement counts {str(size)[:20]} transactions, {str(frauds_in)[:20]} frauds "
                             f"in segment {name!r}")
        figures["segments"][name] = {"transactions": size, "frauds": frauds_in,
                                     **_sides(segment, f"segment {name!r}'s", figures["production"] is not None)}
    return figures


def _sides(found, what, with_production):
    """The candidate's and production's measures of a judgement or a segment."""
    sides = {}
    for side in ("candidate", "production"):
        measures = found[side]
        if side == "production" and not with_production:
            if measures is not None:
                raise Unreadable(f"{what} production figures have no production to come from")
            sides[side] = None
            continue
        if not isinstance(measures, dict) or set(measures) != set(MEASURES):
            raise Unreadable(f"{what} {side} figures are not {', '.join(MEASURES)}")
        sides[side] = {m: _number(measures[m], f"{what} {side} {m}", 0.0, 1.0) for m in MEASURES}
    return sides
