"""Checking a scoring request against the model's signature: every problem is
a 4xx with a message that names the field, never a 5xx."""

import json
import math


class RequestError(ValueError):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


NUMERIC = {"float", "double", "integer", "long"}


def parse(body, content_type, fields, max_batch, max_bytes):
    """(rows, many): the transactions of a request body as lists of floats in
    `fields` order, and whether the request sent a list (else one object).
    `fields`: [(name, type)] from the model's signature."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, f"content type must be application/json, got {content_type or 'none'!r}")
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    if isinstance(payload, dict) and set(payload) == {"transactions"}:
        payload = payload["transactions"]
        if not isinstance(payload, list):
            raise RequestError(422, "'transactions' must be a list of transactions")
    many = isinstance(payload, list)
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
            raise RequestError(422, f"{where}a transaction must be a JSON object of fields, got {type(tx).__name__}")
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
                raise RequestError(422, f"{where}field '{name}' must be a number ({kind}), got {json.dumps(value)}")
            if not math.isfinite(value):
                raise RequestError(422, f"{where}field '{name}' must be finite, got {value}")
            row.append(float(value))
        rows.append(row)
    return rows, many
