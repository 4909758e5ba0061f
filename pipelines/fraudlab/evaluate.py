"""The handbook's protocol (chapter 5): train on one week, leave a week's
delay, test on the next week without the cards already known to be
compromised; AUC ROC, average precision and card precision@k."""

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score


def train_test_split(df, start_day, delta_train=7, delta_delay=7, delta_test=7):
    train = df[(df["TX_TIME_DAYS"] >= start_day) & (df["TX_TIME_DAYS"] < start_day + delta_train)]
    known = set(train.loc[train["TX_FRAUD"] == 1, "CUSTOMER_ID"])
    test_days = []
    for d in range(delta_test):
        day = df[df["TX_TIME_DAYS"] == start_day + delta_train + delta_delay + d]
        # frauds found on the delay period's days become known as the test week goes on
        seen = df[(df["TX_TIME_DAYS"] == start_day + delta_train + d - 1) & (df["TX_FRAUD"] == 1)]
        known |= set(seen["CUSTOMER_ID"])
        test_days.append(day[~day["CUSTOMER_ID"].isin(known)])
    return train, pd.concat(test_days)


def card_precision_at_k(test, scores, k=100):
    """Mean over test days of the share of compromised cards among the k
    cards with the highest score that day."""
    frame = pd.DataFrame({"day": test["TX_TIME_DAYS"].to_numpy(), "card": test["CUSTOMER_ID"].to_numpy(),
                          "fraud": test["TX_FRAUD"].to_numpy(), "score": np.asarray(scores)})
    per_card = frame.groupby(["day", "card"]).max()
    daily = [g.sort_values("score", ascending=False).head(k)["fraud"].sum() / k
             for _, g in per_card.groupby(level="day")]
    return float(np.mean(daily))


def metrics(test, scores, k=100):
    y = test["TX_FRAUD"].to_numpy()
    return {"auc_roc": float(roc_auc_score(y, scores)), "average_precision": float(average_precision_score(y, scores)),
            f"card_precision_at_{k}": card_precision_at_k(test, scores, k)}
