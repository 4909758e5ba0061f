"""The numpy forward pass (scoring/datalab_scoring/forward.py) against the same
network written out by hand, and what it refuses to take over. Its agreement
with TensorFlow itself is checked by the runtime at every model load, and
exercised by the lab suites (the reference model is served by it)."""

import math
from types import SimpleNamespace

import numpy as np

from datalab_scoring import forward

RNG = np.random.default_rng(7)
MEAN, VARIANCE = RNG.normal(size=3).astype(np.float32), RNG.uniform(0.5, 4, size=3).astype(np.float32)
K1, B1 = RNG.normal(size=(3, 4)).astype(np.float32), RNG.normal(size=4).astype(np.float32)
K2, B2 = RNG.normal(size=(4, 1)).astype(np.float32), RNG.normal(size=1).astype(np.float32)


def relu(x):
    return max(x, 0.0)


def by_hand(row):
    x = [(v - m) / max(math.sqrt(var), 1e-7) for v, m, var in zip(row, MEAN, VARIANCE)]
    hidden = [relu(sum(x[i] * K1[i][j] for i in range(3)) + B1[j]) for j in range(4)]
    return 1 / (1 + math.exp(-(sum(hidden[j] * K2[j][0] for j in range(4)) + B2[0])))


def fn(name):
    f = lambda x: x  # noqa: E731 - only its name matters to the plan
    f.__name__ = name
    return f


class Layer(SimpleNamespace):
    pass


def dense(kernel, bias, activation, name="dense"):
    return Layer(name=name, activation=fn(activation), get_weights=lambda: [kernel, bias])


def keras_like(*layers):
    return SimpleNamespace(layers=list(layers))


Normalization = type("Normalization", (Layer,), {})
Dense = type("Dense", (Layer,), {})
Dropout = type("Dropout", (Layer,), {})
Conv1D = type("Conv1D", (Layer,), {})


def reference_network():
    return keras_like(Normalization(name="norm", mean=MEAN.reshape(1, 3), variance=VARIANCE.reshape(1, 3)),
                      Dense(**vars(dense(K1, B1, "relu", "hidden"))), Dropout(name="drop"),
                      Dense(**vars(dense(K2, B2, "sigmoid", "score"))))


def test_the_plan_of_an_mlp_scores_as_the_network_written_out():
    plan, why = forward.plan_from_keras(reference_network(), 1e-7)
    assert why == "" and [step[0] for step in plan] == ["normalize", "dense", "dense"]
    rows = RNG.normal(size=(5, 3)).tolist()
    assert np.allclose(forward.forward(plan, rows), [by_hand(r) for r in rows], atol=1e-5)
    assert forward.forward(plan, []) == []


def test_a_network_with_a_layer_it_does_not_know_stays_on_the_graph():
    plan, why = forward.plan_from_keras(keras_like(Conv1D(name="conv")), 1e-7)
    assert plan is None and "conv (Conv1D)" in why
    swish = keras_like(Dense(**vars(dense(K1, B1, "swish", "odd"))))
    plan, why = forward.plan_from_keras(swish, 1e-7)
    assert plan is None and "activation swish" in why


def test_agreement_is_judged_on_the_scores_not_assumed():
    plan, _ = forward.plan_from_keras(reference_network(), 1e-7)
    rows = forward.check_rows(plan, 3)
    assert len(rows) > 100 and all(len(r) == 3 for r in rows)

    def graph(rs):
        return [by_hand(r) for r in rs]

    assert forward.agrees(plan, graph, rows)[0]
    off_by_a_little = forward.agrees(plan, lambda rs: [s + 1e-3 for s in graph(rs)], rows)
    assert off_by_a_little[0] is False and off_by_a_little[1] > 5e-4
    assert forward.agrees(plan, lambda rs: graph(rs)[:-1], rows) == (False, float("inf"))
    # the check rows switch the hidden units on and off, not just the example's side of zero
    hidden = np.maximum(((np.asarray(rows) - MEAN) / np.sqrt(VARIANCE)) @ K1 + B1, 0)
    assert ((hidden > 0).any(axis=0) & (hidden == 0).any(axis=0)).all()


def test_an_overflow_comes_back_as_inf_or_nan_for_the_server_to_refuse():
    plan, _ = forward.plan_from_keras(reference_network(), 1e-7)
    scores = forward.forward(plan, [[3e38, -3e38, 3e38]])
    assert len(scores) == 1 and (math.isnan(scores[0]) or scores[0] in (0.0, 1.0))


def test_an_unknown_engine_fails_the_load_with_its_name():
    from datalab_scoring import model

    try:
        model.load("/nonexistent", "fraud", 1, engine="fast")
    except ValueError as e:
        assert str(e) == "SCORING_ENGINE must be one of auto, graph, got 'fast'"
    else:
        raise AssertionError("loaded with an unknown engine")
