"""The online feature store's pure parts: a raw transaction is checked field
by field, each refusal naming its field; day numbers are whole UTC days since
the Unix epoch, the simulation's TX_TIME_DAYS less a constant."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from fraudlab import intake, online, simulate
from fraudlab.features import FEATURES

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
GOOD = {"transaction_id": "tx-1", "customer_id": 17, "terminal_id": "T-9", "amount": 12.5,
        "datetime": "2024-06-01T11:59:00"}


def test_a_valid_transaction_is_read_in_utc():
    tx = intake.validate(GOOD, NOW)
    assert tx == intake.Transaction("tx-1", 17, "T-9", 12.5, datetime(2024, 6, 1, 11, 59, tzinfo=timezone.utc))
    with_offset = intake.validate({**GOOD, "datetime": "2024-06-01T13:59:00+02:00", "amount": 3}, NOW)
    assert with_offset.time == tx.time and with_offset.amount == 3.0
    assert intake.validate({**GOOD, "datetime": "2024-06-01T11:59:00Z"}, NOW).time == tx.time


@pytest.mark.parametrize("change, field, says", [
    ({"transaction_id": None}, "transaction_id", "missing field(s): transaction_id"),
    ({"merchant": "m"}, "merchant", "unknown field(s): 'merchant'"),
    ({"transaction_id": ""}, "transaction_id", "non-empty string"),
    ({"transaction_id": "x" * 129}, "transaction_id", "at most 128"),
    ({"transaction_id": 5}, "transaction_id", "got 5"),
    ({"customer_id": 1.0}, "customer_id", "non-empty string"),
    ({"customer_id": True}, "customer_id", "got True"),
    ({"customer_id": 2 ** 64}, "customer_id", "integer of at most 64 bits"),
    ({"customer_id": 10 ** 5000}, "customer_id", "got an integer of 16610 bits"),
    ({"terminal_id": ""}, "terminal_id", "non-empty string"),
    ({"terminal_id": [1]}, "terminal_id", "got [1]"),
    ({"amount": -0.01}, "amount", "finite number >= 0"),
    ({"amount": float("nan")}, "amount", "got nan"),
    ({"amount": float("inf")}, "amount", "got inf"),
    ({"amount": "12"}, "amount", "must be a number"),
    ({"amount": False}, "amount", "must be a number"),
    ({"amount": 10 ** 400}, "amount", "out of range"),
    ({"amount": 10 ** 5000}, "amount", "out of range"),
    ({"datetime": "01/06/2024"}, "datetime", "not an ISO-8601"),
    ({"datetime": 1717243200}, "datetime", "must be an ISO-8601 string"),
    ({"datetime": "2024-06-01T12:06:00"}, "datetime", "ahead of this server's clock"),
])
def test_each_invalid_field_is_named(change, field, says):
    raw = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(intake.InvalidField) as refused:
        intake.validate(raw, NOW)
    assert refused.value.field == field and says in str(refused.value)


def test_not_an_object():
    with pytest.raises(intake.InvalidField, match="must be an object of fields, got list"):
        intake.validate([GOOD], NOW)


def test_future_tolerance():
    assert intake.validate({**GOOD, "datetime": "2024-06-01T12:05:00"}, NOW)  # 5 min ahead: clocks drift
    with pytest.raises(intake.InvalidField, match="0:01:00 ahead"):
        intake.validate({**GOOD, "datetime": "2024-06-01T12:01:00"}, NOW, future_tolerance=timedelta(0))


def test_day_numbers_are_utc_days_since_the_epoch():
    assert intake.day_number(datetime(1970, 1, 1, tzinfo=timezone.utc)) == 0
    assert intake.day_number(datetime(1969, 12, 31, 23, 59, tzinfo=timezone.utc)) == -1
    assert intake.day_number(datetime(2018, 4, 1, 23, 59, 59, tzinfo=timezone.utc)) == 17622
    # 00:30 in Paris (+02:00) is still the previous day in UTC
    assert intake.validate({**GOOD, "datetime": "2018-04-02T00:30:00+02:00"}, NOW).day == 17622


def test_day_numbers_follow_the_simulations_days_when_it_starts_at_midnight():
    _, _, tx = simulate.simulate(n_customers=50, n_terminals=50, nb_days=5, start_date="2018-04-01", seed=2)
    days = [intake.validate(raw, NOW).day for raw in intake.raw_transactions(tx)]
    assert (np.array(days) - tx["TX_TIME_DAYS"].to_numpy() == 17622).all()


def test_raw_transactions_of_a_batch_frame_are_valid():
    frame = pd.DataFrame({"TRANSACTION_ID": [7], "TX_DATETIME": [pd.Timestamp("2018-04-01 10:00:00")],
                          "CUSTOMER_ID": np.array([3]), "TERMINAL_ID": np.array([4]), "TX_AMOUNT": [5.5]})
    [raw] = intake.raw_transactions(frame)
    assert raw == {"transaction_id": "7", "customer_id": 3, "terminal_id": 4, "amount": 5.5,
                   "datetime": "2018-04-01T10:00:00+00:00"}
    assert type(raw["customer_id"]) is int  # numpy's int64 is not an int: validate() would refuse it
    intake.validate(raw, NOW)


def test_feature_matrix():
    row = dict.fromkeys(FEATURES, 1.5)
    matrix = online.feature_matrix([row, row])
    assert matrix.dtype == np.float32 and matrix.shape == (2, len(FEATURES))
    assert online.feature_matrix([]).shape == (0, len(FEATURES))
