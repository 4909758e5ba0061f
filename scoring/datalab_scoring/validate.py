"""Checking a scoring request against the model's signature: every problem is
a 4xx with a message that names the field, never a 5xx."""

import json
import math
import sys


class RequestError(ValueError):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# The compiled Keras model computes in float32 (model.py), where a larger number is
# infinite; every model's fields are held to that range.
FLOAT32_MAX = 3.4028234663852886e38
_RANGE = "(the model computes in float32: ±3.4e38 at most)"


def _shown(value):
    """A JSON value for an error message: a scalar as sent (cut short), a list or
    object by its kind alone (echoing it back could be as large, or as deep, as the body)."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


def parse(body, content_type, fields, max_batch, max_bytes):
    """(rows, many): the transactions of a request body as lists of floats in
    `fields` order, and whether the request sent a list (else one object).
    `fields`: [(name, type)] from the model's signature."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, f"content type must be application/json, got {content_type or 'none'!r}")
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body:
        raise RequestError(400, "request body is empty: send a JSON object (one transaction) or a list of them")
    try:
        text = body.decode("utf-8")  # JSON is UTF-8 (RFC 8259); json.loads(bytes) would guess UTF-16/32 too
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not UTF-8: byte {e.start} is {body[e.start]:#04x}") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    except ValueError:  # the decoder's only other one: an integer past Python's int-string conversion limit
        digits = sys.get_int_max_str_digits()
        raise RequestError(400, f"request body has an integer of more than {digits} digits") from None
    except RecursionError:  # the C decoder recurses once per [ or {: no transaction nests more than 3 deep
        raise RequestError(400, "request body is nested too deeply: a transaction is an object of numbers") from None
    if isinstance(payload, dict) and set(payload) == {"transactions"}:
        payload = payload["transactions"]
        if not isinstance(payload, list):
            raise RequestError(422, "'transactions' must be a list of transactions")
    many = isinstance(payload, list)
    if not many and not isinstance(payload, dict):
        raise RequestError(422, "request body must be a JSON object (one transaction) or a list of them, "
                                f"got {_shown(payload)}")
    transactions = payload if many else [payload]
    if not transactions:
        raise RequestError(422, "no transaction to score: the list is empty")
    if len(transactions) > max_batch:
        raise RequestError(413, f"{len(transactions)} transactions in one request; the limit is {max_batch}")
    names = [name for name, _ in fields]
    rows = []
    for i, tx in enumerate(transactions):
        where = f"transaction {i}: " if many else ""
        if not isinstance(tx, dict):
            raise RequestError(422, f"{where}a transaction must be a JSON object of fields, got {_shown(tx)}")
        missing = [n for n in names if n not in tx]
        if missing:
            raise RequestError(422, f"{where}missing field(s): {', '.join(missing)}")
        extra = sorted(set(tx) - set(names))
        if extra:
            raise RequestError(422, f"{where}unknown field(s): {', '.join(extra)}")
        row = []
        for name, kind in fields:
            value = tx[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(422, f"{where}field '{name}' must be a number ({kind}), got {_shown(value)}")
            try:
                number = float(value)
            except OverflowError:  # an integer of hundreds of digits: JSON sets no bound, a float does
                raise RequestError(422, f"{where}field '{name}' is out of range: an integer of "
                                        f"{len(str(abs(value)))} digits {_RANGE}") from None
            if not -FLOAT32_MAX <= number <= FLOAT32_MAX:  # NaN too
                if not math.isfinite(number):
                    raise RequestError(422, f"{where}field '{name}' must be finite, got {value}")
                raise RequestError(422, f"{where}field '{name}' is out of range: {value} {_RANGE}")
            row.append(number)
        rows.append(row)
    return rows, many
