"""The model a deployment serves: an MLflow model directory baked into the
image at rollout. TensorFlow models registered by the reference workload (a
pyfunc over a saved Keras model) are served by a numpy forward pass of their
layers (forward.py), checked against their compiled tf.function at load, or
by that tf.function where the pass does not apply; never model.predict. Any
other MLflow model falls back to its pyfunc.

A model that declares a feature set in its MLmodel metadata
("datalab.feature_set": fraudlab.features.FEATURE_SET, the only one this
runtime computes) is served raw transactions: the service computes its
signature's fields from them (featurestore.py). Without it, a request sends
the signature's fields themselves."""

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import yaml
from fraudlab.features import FEATURE_SET, FEATURES

from . import forward

log = logging.getLogger("datalab.scoring")

FEATURE_SET_KEY = "datalab.feature_set"  # in the MLmodel's metadata (log_model(metadata=...))


@dataclass
class Model:
    name: str
    version: str
    fields: list        # [(name, type)] from the signature, in order
    example: list       # transactions (dicts) from the input example
    predict: Callable   # rows (lists of floats) -> fraud probabilities
    engine: str
    feature_set: str | None = None  # FEATURE_SET: takes raw transactions; None: takes `fields`


def signature_fields(mlmodel):
    inputs = (mlmodel.get("signature") or {}).get("inputs")
    if not inputs:
        raise ValueError("the model has no input signature: register it with one (infer_signature)")
    fields = [(i["name"], i["type"]) for i in json.loads(inputs)]
    if any(name is None for name, _ in fields):
        raise ValueError("the model's signature has unnamed inputs: a scoring request needs named fields")
    return fields


def feature_set(mlmodel, fields):
    """The feature set the model declares (None: it takes its signature's
    fields as they come), checked against what this runtime computes."""
    declared = (mlmodel.get("metadata") or {}).get(FEATURE_SET_KEY)
    if declared is None:
        return None
    if declared != FEATURE_SET:
        raise ValueError(f"the model declares the feature set {declared!r} ({FEATURE_SET_KEY} in its metadata); "
                         f"this scoring runtime computes {FEATURE_SET!r} only")
    unknown = [name for name, _ in fields if name not in FEATURES]
    if unknown:
        raise ValueError(f"the model declares the feature set {FEATURE_SET!r}, but its signature has field(s) "
                         f"the set does not compute: {', '.join(unknown)} (it computes {', '.join(FEATURES)})")
    return declared


def input_example(model_dir, mlmodel):
    path = Path(model_dir) / (mlmodel.get("saved_input_example_info") or {}).get("artifact_path", "input_example.json")
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "columns" in data:  # pandas "split" orient
        return [dict(zip(data["columns"], row)) for row in data["data"]]
    return data if isinstance(data, list) else [data]


ENGINES = ("auto", "graph")  # SCORING_ENGINE: the numpy pass where it applies, or always the graph


def _compiled_keras(path, width, example_rows, engine="auto"):
    """The Keras model's predict function and its engine: the numpy forward pass
    (forward.py) where it knows every layer and matches the compiled graph on a check
    batch, else (or with engine "graph") the compiled graph itself."""
    import keras
    import tensorflow as tf

    # Micro-batches of a small network gain nothing from TensorFlow's thread pools; their
    # threads take the core the server's loop needs (the BLAS's: one thread, from the image's
    # environment, for every model). Set before TensorFlow's first op runs.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = keras.saving.load_model(path, compile=False)
    graph = tf.function(lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec([None, width], tf.float32)]).get_concrete_function()

    def predict(rows):
        return graph(tf.constant(rows, dtype=tf.float32)).numpy().reshape(-1).tolist()

    plan, why = forward.plan_from_keras(model, keras.config.epsilon()) if engine == "auto" else (
        None, "SCORING_ENGINE=graph")
    if plan is None:
        log.info("the model is served by its compiled graph: %s", why)
        return predict, "tf.function"
    try:
        same, difference = forward.agrees(plan, predict, forward.check_rows(plan, width, example_rows))
    except (ValueError, TypeError, tf.errors.OpError) as e:  # shapes the plan got wrong
        same, difference = False, f"an error ({e})"
    if not same:
        log.warning("the numpy pass differs from the compiled graph by %s: the graph serves", difference)
        return predict, "tf.function"
    return partial(forward.forward, plan), "numpy"


# MLflow signature types -> the dtypes its schema enforcement accepts
DTYPES = {"float": "float32", "double": "float64", "integer": "int32", "long": "int64", "boolean": "bool"}


def _pyfunc(model_dir, fields):
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(model_dir))
    names = [n for n, _ in fields]
    dtypes = {n: DTYPES[t] for n, t in fields if t in DTYPES}

    def predict(rows):
        frame = pd.DataFrame(rows, columns=names).astype(dtypes)
        return [float(v) for v in pd.Series(list(model.predict(frame))).to_list()]

    return predict


def load(model_dir, name, version, pyfunc=_pyfunc, engine="auto"):
    """The model in an MLflow model directory, warmed up. `pyfunc(model_dir,
    fields)`: the predict function of a model other than the reference
    workload's Keras one (MLflow's pyfunc; the tests pass a stand-in).
    `engine`: one of ENGINES, for a Keras model."""
    if engine not in ENGINES:
        raise ValueError(f"SCORING_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
    model_dir = Path(model_dir)
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    fields = signature_fields(mlmodel)
    declared = feature_set(mlmodel, fields)
    artifacts = (mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {})
    keras_model = artifacts.get("keras_model", {}).get("path")
    example = input_example(model_dir, mlmodel)
    if keras_model:
        rows = [[float(t[n]) for n, _ in fields] for t in example if all(n in t for n, _ in fields)]
        predict, engine = _compiled_keras(str(model_dir / keras_model), len(fields), rows, engine)
    else:
        predict, engine = pyfunc(model_dir, fields), "pyfunc"
    model = Model(name, str(version), fields, example, predict, engine, declared)
    warm_up(model)
    return model


def warm_up(model):
    """Trace and run the graph for the batch sizes it will see, with the input example."""
    if not model.example:
        return
    row = [float(model.example[0][n]) for n, _ in model.fields]
    for size in (1, 2, 8, 64):
        scores = model.predict([row] * size)
        if len(scores) != size or not all(0.0 <= s <= 1.0 for s in scores):
            raise ValueError(f"the model's warm-up answered {scores[:3]}... for {size} transactions: "
                             "expected one probability (0-1) each")
