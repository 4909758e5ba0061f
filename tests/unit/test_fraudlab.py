"""The simulator follows the handbook's generative process; features and the
protocol behave as specified. Small sizes, seconds."""

import numpy as np
import pandas as pd
import pytest

from fraudlab import evaluate, features, simulate


@pytest.fixture(scope="module")
def data():
    customers, terminals, tx = simulate.simulate(n_customers=300, n_terminals=600, nb_days=60, seed=1)
    return customers, terminals, features.add_features(tx)


def test_customer_and_terminal_profiles(data):
    customers, terminals, _ = data
    assert customers.mean_amount.between(5, 100).all()
    assert np.allclose(customers.std_amount, customers.mean_amount / 2)
    assert customers.mean_nb_tx_per_day.between(0, 4).all()
    assert terminals[["x_terminal_id", "y_terminal_id"]].stack().between(0, 100).all()


def test_transactions_follow_the_generative_process(data):
    customers, terminals, tx = data
    assert tx.TX_TIME_SECONDS.is_monotonic_increasing
    assert (tx.TX_TIME_SECONDS - tx.TX_TIME_DAYS * 86400).between(0, 86399).all()
    assert (tx.TX_AMOUNT >= 0).all()
    # each transaction happens at a terminal within radius 5 of its customer
    c = customers.set_index("CUSTOMER_ID").loc[tx.CUSTOMER_ID]
    t = terminals.set_index("TERMINAL_ID").loc[tx.TERMINAL_ID]
    distance = np.hypot(c.x_customer_id.to_numpy() - t.x_terminal_id.to_numpy(),
                        c.y_customer_id.to_numpy() - t.y_terminal_id.to_numpy())
    assert (distance <= 5).all()
    # daily counts are Poisson around the customers' means
    expected = customers.mean_nb_tx_per_day.sum() * 60
    assert 0.7 * expected < len(tx) < 1.1 * expected  # some customers have no terminal in reach


def test_the_three_fraud_scenarios(data):
    _, _, tx = data
    assert (tx.loc[tx.TX_FRAUD_SCENARIO == 1, "TX_AMOUNT"] > 220).all()
    assert set(tx.TX_FRAUD_SCENARIO.unique()) == {0, 1, 2, 3}
    assert (tx.TX_FRAUD == (tx.TX_FRAUD_SCENARIO > 0)).all()
    # once 28 days have passed, 2 x 28 of the 600 terminals are compromised on any day:
    # about that share of transactions are scenario-2 frauds (scenario 1 may take some)
    steady = tx[tx.TX_TIME_DAYS >= 28]
    share = (steady.TX_FRAUD_SCENARIO == 2).mean()
    assert 0.5 * 56 / 600 < share < 1.5 * 56 / 600


def test_features_see_only_the_past(data):
    _, _, tx = data
    assert list(tx[features.FEATURES].columns) == features.FEATURES
    assert not tx[features.FEATURES].isna().any().any()
    first = tx.groupby("CUSTOMER_ID").head(1)
    assert (first.CUSTOMER_ID_NB_TX_1DAY_WINDOW == 1).all()  # its own transaction only
    assert (tx.loc[tx.TX_TIME_DAYS < 7, "TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0).all()  # labels a week late
    assert tx.TERMINAL_ID_RISK_7DAY_WINDOW.between(0, 1).all()


def test_protocol_removes_known_compromised_cards(data):
    _, _, tx = data
    train, test = evaluate.train_test_split(tx, start_day=35)
    assert train.TX_TIME_DAYS.between(35, 41).all() and test.TX_TIME_DAYS.between(49, 55).all()
    known = set(train.loc[train.TX_FRAUD == 1, "CUSTOMER_ID"])
    assert not known & set(test.CUSTOMER_ID)


def test_card_precision_at_k_counts_cards_per_day(data):
    _, _, tx = data
    _, test = evaluate.train_test_split(tx, start_day=35)
    perfect = evaluate.metrics(test, test.TX_FRAUD.to_numpy(), k=5)
    assert perfect["auc_roc"] == 1.0 and perfect["average_precision"] == 1.0
    frauds_per_day = test[test.TX_FRAUD == 1].groupby("TX_TIME_DAYS").CUSTOMER_ID.nunique()
    assert perfect["card_precision_at_5_keeping_detected"] == pytest.approx(
        (frauds_per_day.clip(upper=5) / 5).reindex(range(49, 56), fill_value=0).mean())
    assert perfect["card_precision_at_5"] <= perfect["card_precision_at_5_keeping_detected"]


def test_card_precision_at_k_leaves_out_cards_detected_on_earlier_days():
    """The handbook's card_precision_top_k (remove_detected_compromised_cards=True), by hand, k = 1:
    day 0: A (fraud, its best score 0.9 of two transactions) before B (0.5): A found, 1/1; A is detected.
    day 1: A (fraud, 0.8) before B (genuine, 0.7). Keeping A: A found, 1. Leaving A out: B, 0.
    day 2: A (fraud, 0.9), C (fraud, 0.6), B (0.3). Keeping A: A, 1. Leaving A out: C, 1.
    Keeping detected cards: (1 + 1 + 1) / 3 = 1. Leaving them out: (1 + 0 + 1) / 3 = 2/3."""
    rows = [(0, "A", 0, 0.2), (0, "A", 1, 0.9), (0, "B", 0, 0.5),
            (1, "A", 1, 0.8), (1, "B", 0, 0.7), (1, "C", 0, 0.1),
            (2, "A", 1, 0.9), (2, "C", 1, 0.6), (2, "B", 0, 0.3)]
    test = pd.DataFrame(rows, columns=["TX_TIME_DAYS", "CUSTOMER_ID", "TX_FRAUD", "score"])
    assert evaluate.card_precision_at_k(test, test.score, k=1) == pytest.approx(2 / 3)
    assert evaluate.card_precision_at_k(test, test.score, k=1, remove_detected_compromised_cards=False) == 1.0
    figures = evaluate.metrics(test, test.score, k=1)
    assert figures["card_precision_at_1"] == pytest.approx(2 / 3)
    assert figures["card_precision_at_1_keeping_detected"] == 1.0
