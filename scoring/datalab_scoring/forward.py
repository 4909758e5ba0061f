"""A small Keras network's forward pass in numpy: the reference workload's MLP
(Normalization, Dense, Dropout) scored without TensorFlow's per-call overhead.

A `tf.function` call costs a few hundred microseconds whatever the batch
(argument conversion, the executor, its thread pools); the same arithmetic
for one transaction in numpy costs tens. `model.py` uses this plan only when
every layer is one it knows and its scores match the compiled graph's on a
check batch; any other network stays on the `tf.function`.

The plan is a list of steps, each ("normalize", mean, scale) or
("dense", kernel, bias, activation), in float32 as the graph computes.
"""

import numpy as np


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))  # exp(-x) is inf for x < -88 in float32: the score is then 0


ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0, out=x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
}
# Layers that do nothing at inference (Keras: training=False)
PASS_THROUGH = {"InputLayer", "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "SpatialDropout1D",
                "ActivityRegularization"}
TOLERANCE = 1e-5  # the most a numpy score may differ from the graph's (both float32)


def forward(plan, rows):
    """Fraud probabilities for rows (lists of floats), as one flat list."""
    if not len(rows):
        return []
    x = np.asarray(rows, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow's inf or nan is the server's to refuse
        for step in plan:
            if step[0] == "normalize":
                x = (x - step[1]) / step[2]
            else:
                x = ACTIVATIONS[step[3]](x @ step[1] + step[2])
    return x.reshape(-1).tolist()


def plan_from_keras(model, epsilon):
    """The plan for a Keras model whose layers are all known, else None (with the
    reason as a second value). `epsilon`: keras.config.epsilon(), Normalization's
    floor on the standard deviation."""
    plan = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in PASS_THROUGH:
            continue
        if kind == "Normalization" and not getattr(layer, "invert", False):
            mean = np.asarray(layer.mean, dtype=np.float32).reshape(-1)
            scale = np.maximum(np.sqrt(np.asarray(layer.variance, dtype=np.float32).reshape(-1)),
                               np.float32(epsilon))
            plan.append(("normalize", mean, scale))
        elif kind == "Dense":
            activation = getattr(layer.activation, "__name__", "")
            if activation not in ACTIVATIONS or len(layer.get_weights()) != 2:
                return None, f"layer {layer.name}: activation {activation or '?'} or weights not known here"
            kernel, bias = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
            plan.append(("dense", kernel, bias, activation))
        else:
            return None, f"layer {layer.name} ({kind}) not known here"
    return plan, ""


def agrees(plan, reference, rows):
    """Whether the plan's scores are the reference predict's on rows; and the largest difference."""
    ours, theirs = np.asarray(forward(plan, rows)), np.asarray(reference(rows))
    if ours.shape != theirs.shape or not np.all(np.isfinite(ours)):
        return False, float("inf")
    difference = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    return difference <= TOLERANCE, difference


def check_rows(plan, width, example_rows=(), n=256, seed=0):
    """Rows to compare the two on: the input example's (else the normalization's mean,
    else zeros), and perturbations of them across several orders of magnitude (so that
    every ReLU is seen on and off)."""
    if len(example_rows):
        base = np.asarray(example_rows, dtype=np.float64)
    else:
        base = np.zeros((1, width)) + (plan[0][1] if plan and plan[0][0] == "normalize" else 0)
    rng = np.random.default_rng(seed)
    picks = base[rng.integers(0, len(base), n)]
    spread = (np.abs(picks) + 1) * rng.choice([0.01, 0.1, 1.0, 10.0], size=(n, 1))
    perturbed = picks + rng.standard_normal(picks.shape) * spread
    return np.vstack([base, perturbed]).astype(np.float32).tolist()
