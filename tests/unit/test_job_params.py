import pytest

from datalab_jobs.params import ParameterError, check, declared
from datalab_jobs.runner import error_of


def notebook(source, tags=("parameters",)):
    return {"cells": [{"cell_type": "code", "metadata": {"tags": list(tags)}, "source": source, "outputs": []}]}


NB = notebook('n_days = 7  # days simulated\nepochs = 3\nrate = 0.5\nlabel = "demo"\nfast = False\nseeds = [1, 2]\n')


def test_declared_parameters_with_types_defaults_and_help():
    params = declared(NB)
    assert params["n_days"] == {"type": "int", "default": 7, "help": "days simulated"}
    assert {k: v["type"] for k, v in params.items()} == {
        "n_days": "int", "epochs": "int", "rate": "float", "label": "str", "fast": "bool", "seeds": "list"}
    assert declared(notebook("x = 1", tags=())) == {}


def test_cli_strings_are_coerced_to_the_declared_types():
    got = check(NB, {"n_days": "30", "rate": "1", "label": "x", "fast": "true", "seeds": "[3]"})
    assert got == {"n_days": 30, "rate": 1.0, "label": "x", "fast": True, "seeds": [3]}
    assert check(NB, {"epochs": 5, "rate": 2}) == {"epochs": 5, "rate": 2.0}


def test_unknown_names_list_what_the_notebook_accepts():
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) epoch;.*epochs \(int, default 3\)"):
        check(NB, {"epoch": "3"})


@pytest.mark.parametrize("name, value", [("n_days", "seven"), ("n_days", True), ("rate", "fast"),
                                         ("fast", "maybe"), ("seeds", "{}"), ("seeds", "[1,")])
def test_wrong_types_are_refused_naming_the_parameter(name, value):
    with pytest.raises(ParameterError, match=f"parameter '{name}' must be"):
        check(NB, {name: value})


def test_error_of_names_the_failing_cell():
    out = {"cells": [{"outputs": []}, {"outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "bad"}]}]}
    assert error_of(out) == "ValueError: bad (cell 1)"
    assert error_of({"cells": []}) is None
