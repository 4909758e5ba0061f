"""A notebook's declared parameters (its cell tagged "parameters", as papermill
reads it) and the checking of submitted values against them."""

import ast
import json

TYPES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict", type(None): "None"}


class ParameterError(ValueError):
    pass


def declared(notebook):
    """{name: {"type": ..., "default": ..., "help": ...}} from the parameters cell."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            return _parse(source)
    return {}


def _parse(source):
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ParameterError(f"the parameters cell is not valid Python: {e}") from None
    lines = source.splitlines()
    params = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
        if not isinstance(target, ast.Name) or getattr(node, "value", None) is None:
            continue
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            default = ast.get_source_segment(source, node.value)
            kind = "expression"
        else:
            kind = TYPES.get(type(default), type(default).__name__)
        comment = lines[node.lineno - 1].partition("#")[2].strip()
        params[target.id] = {"type": kind, "default": default, "help": comment}
    return params


def describe(params):
    return ", ".join(f"{name} ({p['type']}, default {p['default']!r})" for name, p in params.items()) or "none"


def coerce(value, kind, name):
    """Turn a submitted value (often a CLI string) into the declared type."""
    if kind in ("None", "expression"):
        return value  # no type to hold it to
    if kind == "str":
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if kind == "bool":
                lowered = text.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return lowered in ("true", "1", "yes")
            if kind == "int":
                return int(text)
            if kind == "float":
                return float(text)
            value = json.loads(text)
        except ValueError:
            raise ParameterError(f"parameter '{name}' must be {kind}, got {value!r}") from None
    expected = {"bool": bool, "int": int, "float": (int, float), "list": list, "dict": dict}[kind]
    if isinstance(value, bool) and kind != "bool" or not isinstance(value, expected):
        raise ParameterError(f"parameter '{name}' must be {kind}, got {value!r}")
    return float(value) if kind == "float" else value


def check(notebook, submitted):
    """Submitted parameters, coerced to the notebook's declared types; a
    ParameterError naming what the notebook accepts otherwise."""
    params = declared(notebook)
    unknown = sorted(set(submitted) - set(params))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; "
                             f"this notebook accepts: {describe(params)}")
    return {name: coerce(value, params[name]["type"], name) for name, value in submitted.items()}
