"""Raw transactions and labels as the scoring service takes them, checked:
{"transaction_id": str, "customer_id": int|str, "terminal_id": int|str,
"amount": float >= 0, "datetime": ISO-8601 str, UTC when it has no offset}
and {"transaction_id": str, "fraud": bool}. Anything else is an InvalidField
naming the field. The online features (online.py) are computed from these."""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum

import pandas as pd

FIELDS = ("transaction_id", "customer_id", "terminal_id", "amount", "datetime")
LABEL_FIELDS = ("transaction_id", "fraud")
FUTURE_TOLERANCE = timedelta(minutes=5)  # clocks drift; a transaction further ahead is refused
MAX_ID_LENGTH = 128
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class InvalidField(ValueError):
    """An input that cannot be used; `field` names what is wrong (None: the input as a whole)."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


class Feedback(str, Enum):
    UNKNOWN = "unknown"  # no record of that transaction id: never scored here, or expired
    UNCHANGED = "unchanged"  # the label it already had
    RECORDED = "recorded"  # a first or a flipped label, counted into its terminal's day


@dataclass(frozen=True)
class Served:
    """A scoring answer, for the scored log."""
    transaction_id: str
    model: str
    version: str
    score: float  # the model's fraud probability, 0-1
    scored_at: int  # epoch milliseconds, the scoring server's clock


@dataclass(frozen=True)
class Transaction:
    transaction_id: str
    customer_id: int | str
    terminal_id: int | str
    amount: float
    time: datetime  # aware, UTC

    @property
    def day(self):
        return day_number(self.time)

    @property
    def epoch_microseconds(self):
        return (self.time - EPOCH) // timedelta(microseconds=1)


def day_number(time):
    """Whole days since the Unix epoch of an aware datetime's UTC time: the
    terminal windows' day (the batch TX_TIME_DAYS plus a constant when the
    data starts at a midnight, UTC)."""
    return (time - EPOCH) // timedelta(days=1)


def _shown(value):
    if isinstance(value, int) and value.bit_length() > 128:  # repr() of a huge one is slow, or refused
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


def _identifier(raw, field):
    value = raw[field]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, int) and value.bit_length() > 64) or (
            isinstance(value, str) and not 0 < len(value) <= MAX_ID_LENGTH):
        raise InvalidField(field, f"'{field}' must be an integer of at most 64 bits or a non-empty string of "
                                  f"at most {MAX_ID_LENGTH} characters, got {_shown(value)}")
    return value


def validate(raw, now, future_tolerance=FUTURE_TOLERANCE):
    """The Transaction of a raw transaction, or InvalidField naming what is
    wrong. `now`: an aware datetime; a transaction more than
    `future_tolerance` after it is refused."""
    _check_fields(raw, FIELDS, "transaction")
    transaction_id = _checked_transaction_id(raw["transaction_id"])
    customer_id, terminal_id = _identifier(raw, "customer_id"), _identifier(raw, "terminal_id")
    amount = raw["amount"]
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise InvalidField("amount", f"'amount' must be a number, got {_shown(amount)}")
    try:
        amount = float(amount)
    except OverflowError:  # an integer of hundreds of digits
        raise InvalidField("amount", "'amount' is out of range: an integer larger than a float holds") from None
    if not math.isfinite(amount) or amount < 0:
        raise InvalidField("amount", f"'amount' must be a finite number >= 0, got {_shown(raw['amount'])}")
    text = raw["datetime"]
    if not isinstance(text, str):
        raise InvalidField("datetime", f"'datetime' must be an ISO-8601 string, got {_shown(text)}")
    try:
        time = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidField("datetime", f"'datetime' is not an ISO-8601 date and time: {_shown(text)}") from None
    time = time.replace(tzinfo=timezone.utc) if time.tzinfo is None else time.astimezone(timezone.utc)
    if time > now + future_tolerance:
        raise InvalidField("datetime", f"'datetime' {text} is {time - now} ahead of this server's clock "
                                       f"(at most {future_tolerance} is tolerated)")
    return Transaction(transaction_id, customer_id, terminal_id, amount, time)


def _check_fields(raw, fields, what):
    """InvalidField unless `raw` is an object of exactly `fields`."""
    if not isinstance(raw, dict):
        raise InvalidField(None, f"a {what} must be an object of fields, got {type(raw).__name__}")
    missing = [name for name in fields if name not in raw]
    if missing:
        raise InvalidField(missing[0], f"missing field(s): {', '.join(missing)}")
    unknown = [name for name in raw if name not in fields]
    if unknown:
        raise InvalidField(unknown[0], f"unknown field(s): {', '.join(map(_shown, unknown))}; "
                                       f"a {what} has {', '.join(fields)}")


def _checked_transaction_id(transaction_id):
    if not isinstance(transaction_id, str) or not 0 < len(transaction_id) <= MAX_ID_LENGTH:
        raise InvalidField("transaction_id", "'transaction_id' must be a non-empty string of at most "
                                             f"{MAX_ID_LENGTH} characters, got {_shown(transaction_id)}")
    return transaction_id


def checked_label(transaction_id, fraud):
    transaction_id = _checked_transaction_id(transaction_id)
    if not isinstance(fraud, bool):
        raise InvalidField("fraud", f"'fraud' must be true or false, got {_shown(fraud)}")
    return transaction_id, fraud


def validate_label(raw):
    """(transaction id, fraud) of a label {"transaction_id": str, "fraud":
    bool}, or InvalidField naming what is wrong."""
    _check_fields(raw, LABEL_FIELDS, "label")
    return checked_label(raw["transaction_id"], raw["fraud"])


def raw_transactions(frame):
    """A batch frame's transactions (TRANSACTION_ID, TX_DATETIME: UTC when
    naive, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT) as raw transactions, in its order."""
    times = pd.to_datetime(frame["TX_DATETIME"], utc=True)
    # tolist(): Python's ints and floats, which validate() takes, not numpy's
    return [{"transaction_id": str(transaction_id), "customer_id": customer_id, "terminal_id": terminal_id,
             "amount": amount, "datetime": time.isoformat()}
            for transaction_id, time, customer_id, terminal_id, amount in zip(
                frame["TRANSACTION_ID"].tolist(), times.tolist(), frame["CUSTOMER_ID"].tolist(),
                frame["TERMINAL_ID"].tolist(), frame["TX_AMOUNT"].tolist())]
