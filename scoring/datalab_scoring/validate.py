"""Checking a request: a scoring request against the model's signature (its
engineered features) or, for a model that declares its feature set, as raw
transactions; a feedback request's labels. Every problem is a 4xx with a
message that names the field (and, in a list, the item), never a 5xx."""

import json
import math
import sys

from fraudlab import intake


class RequestError(ValueError):
    """A request answered with `status` and {"error": message}, plus the
    "field" and "index" (in a list) it names when there is one."""

    def __init__(self, status, message, field=None, index=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.index = index

    def body(self):
        body = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.index is not None:
            body["index"] = self.index
        return body


# The compiled Keras model computes in float32 (model.py), where a larger number is
# infinite; every model's fields are held to that range.
FLOAT32_MAX = 3.4028234663852886e38
_RANGE = "(the model computes in float32: ±3.4e38 at most)"


def shown(value):
    """A JSON value for an error message: a scalar as sent (cut short), a list or
    object by its kind alone (echoing it back could be as large, or as deep, as the body)."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


def decode(body, content_type, max_bytes):
    """The JSON value of a request body."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, f"content type must be application/json, got {content_type or 'none'!r}")
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body:
        raise RequestError(400, "request body is empty: send a JSON object or a list of them")
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
    except RecursionError:  # the C decoder recurses once per [ or {: no request nests more than 3 deep
        raise RequestError(400, "request body is nested too deeply: a request is an object, or a list "
                                "of objects, of plain values") from None
    return payload


def items(payload, noun, verb, max_batch):
    """(items, many): one object, a list of them, or {"<noun>s": [...]}, and
    whether a list came (else one object)."""
    key = f"{noun}s"
    if isinstance(payload, dict) and set(payload) == {key}:
        payload = payload[key]
        if not isinstance(payload, list):
            raise RequestError(422, f"'{key}' must be a list of {key}")
    many = isinstance(payload, list)
    if not many and not isinstance(payload, dict):
        raise RequestError(422, f"request body must be a JSON object (one {noun}) or a list of them, "
                                f"got {shown(payload)}")
    found = payload if many else [payload]
    if not found:
        raise RequestError(422, f"no {noun} to {verb}: the list is empty")
    if len(found) > max_batch:
        raise RequestError(413, f"{len(found)} {key} in one request; the limit is {max_batch}")
    return found, many


def parse(body, content_type, fields, max_batch, max_bytes):
    """(rows, many): the transactions of a request body as lists of floats in
    `fields` order, and whether the request sent a list (else one object).
    `fields`: [(name, type)] from the model's signature."""
    transactions, many = items(decode(body, content_type, max_bytes), "transaction", "score", max_batch)
    names = [name for name, _ in fields]
    rows = []
    for i, tx in enumerate(transactions):
        where, index = (f"transaction {i}: ", i) if many else ("", None)
        if not isinstance(tx, dict):
            raise RequestError(422, f"{where}a transaction must be a JSON object of fields, got {shown(tx)}",
                               index=index)
        missing = [n for n in names if n not in tx]
        if missing:
            raise RequestError(422, f"{where}missing field(s): {', '.join(missing)}", missing[0], index)
        extra = sorted(set(tx) - set(names))
        if extra:
            raise RequestError(422, f"{where}unknown field(s): {', '.join(extra)}", extra[0], index)
        row = []
        for name, kind in fields:
            value = tx[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(422, f"{where}field '{name}' must be a number ({kind}), got {shown(value)}",
                                   name, index)
            try:
                number = float(value)
            except OverflowError:  # an integer of hundreds of digits: JSON sets no bound, a float does
                raise RequestError(422, f"{where}field '{name}' is out of range: an integer of "
                                        f"{len(str(abs(value)))} digits {_RANGE}", name, index) from None
            if not -FLOAT32_MAX <= number <= FLOAT32_MAX:  # NaN too
                if not math.isfinite(number):
                    raise RequestError(422, f"{where}field '{name}' must be finite, got {value}", name, index)
                raise RequestError(422, f"{where}field '{name}' is out of range: {value} {_RANGE}", name, index)
            row.append(number)
        rows.append(row)
    return rows, many


def parse_raw(body, content_type, max_batch, max_bytes, now, future_tolerance=intake.FUTURE_TOLERANCE):
    """(transactions, many): the raw transactions of a request body, each
    checked by fraudlab.intake.validate (a fraudlab.intake.Transaction), and
    whether a list came. `now`: an aware datetime, this server's clock."""
    raws, many = items(decode(body, content_type, max_bytes), "transaction", "score", max_batch)
    transactions = []
    for i, raw in enumerate(raws):
        where, index = (f"transaction {i}: ", i) if many else ("", None)
        try:
            tx = intake.validate(raw, now, future_tolerance)
        except intake.InvalidField as e:
            raise RequestError(422, f"{where}{e}", e.field, index) from None
        if tx.amount > FLOAT32_MAX:  # refused before it is counted into its customer's sums
            raise RequestError(422, f"{where}'amount' is out of range: {raw['amount']} {_RANGE}", "amount", index)
        transactions.append(tx)
    return transactions, many


def parse_labels(body, content_type, max_batch, max_bytes):
    """(labels, many): [(transaction id, fraud)] of a feedback request body,
    checked by fraudlab.intake.validate_label, and whether a list came."""
    raws, many = items(decode(body, content_type, max_bytes), "label", "record", max_batch)
    labels = []
    for i, raw in enumerate(raws):
        try:
            labels.append(intake.validate_label(raw))
        except intake.InvalidField as e:
            raise RequestError(422, f"{'label %d: ' % i if many else ''}{e}", e.field, i if many else None) from None
    return labels, many
