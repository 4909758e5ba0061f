"""Features of the handbook's baseline (chapter 3.4): weekend and night flags;
per customer, the number and mean amount of their transactions over the last
1, 7 and 30 days (this one included); per terminal, the number of
transactions and the share of frauds over 1, 7 and 30-day windows that end
`delay` days ago (labels are known a week late).

The constants below are the one definition of the windows, the delay and the
feature names: the online path (online.py) computes the same features from
them."""

import numpy as np
import pandas as pd

WINDOWS = (1, 7, 30)  # days, ascending
DELAY = 7  # days until a transaction's label is known
WEEKEND_FROM = 5  # day of the week (Monday = 0) from which a day is a weekend day
NIGHT_UNTIL = 6  # hours 0 to 6 are night
CUSTOMER_NB_TX, CUSTOMER_AVG_AMOUNT = "CUSTOMER_ID_NB_TX_{}DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_{}DAY_WINDOW"
TERMINAL_NB_TX, TERMINAL_RISK = "TERMINAL_ID_NB_TX_{}DAY_WINDOW", "TERMINAL_ID_RISK_{}DAY_WINDOW"
FEATURES = (
    ["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    + [name.format(w) for w in WINDOWS for name in (CUSTOMER_NB_TX, CUSTOMER_AVG_AMOUNT)]
    + [name.format(w) for w in WINDOWS for name in (TERMINAL_NB_TX, TERMINAL_RISK)]
)
# The name of this definition: a model trained on these features declares it in
# its MLmodel metadata ("datalab.feature_set"), and the scoring service then
# takes raw transactions and computes these features itself (online.py).
# Change the windows, the delay or the names, and this name changes too: a
# model trained on the old definition must not be served the new one.
FEATURE_SET = "fraudlab.handbook/v1"


def calendar_flags(df):
    return pd.DataFrame({
        "TX_DURING_WEEKEND": (df["TX_DATETIME"].dt.day_of_week >= WEEKEND_FROM).astype(int),
        "TX_DURING_NIGHT": (df["TX_DATETIME"].dt.hour <= NIGHT_UNTIL).astype(int),
    }, index=df.index)


def customer_spending(df, windows=WINDOWS):
    ordered = df.sort_values(["CUSTOMER_ID", "TX_DATETIME"], kind="stable")
    out = pd.DataFrame(index=ordered.index)
    grouped = ordered.set_index("TX_DATETIME").groupby("CUSTOMER_ID")["TX_AMOUNT"]
    for w in windows:
        rolling = grouped.rolling(f"{w}D")
        out[CUSTOMER_NB_TX.format(w)] = rolling.count().to_numpy()
        out[CUSTOMER_AVG_AMOUNT.format(w)] = rolling.mean().to_numpy()
    return out.reindex(df.index)


def terminal_risk(df, windows=WINDOWS, delay=DELAY):
    """Day-level windows: for a transaction on day d, counts over days
    [d - delay - w, d - delay) and the frauds among them."""
    nb_days = int(df["TX_TIME_DAYS"].max()) + 1
    n_terminals = int(df["TERMINAL_ID"].max()) + 1
    counts = np.zeros((n_terminals, nb_days + 1))
    frauds = np.zeros((n_terminals, nb_days + 1))
    np.add.at(counts, (df["TERMINAL_ID"], df["TX_TIME_DAYS"] + 1), 1)
    np.add.at(frauds, (df["TERMINAL_ID"], df["TX_TIME_DAYS"] + 1), df["TX_FRAUD"])
    counts, frauds = counts.cumsum(axis=1), frauds.cumsum(axis=1)  # column k: days < k
    term, day = df["TERMINAL_ID"].to_numpy(), df["TX_TIME_DAYS"].to_numpy()
    out = pd.DataFrame(index=df.index)
    end = np.clip(day - delay, 0, nb_days)
    for w in windows:
        start = np.clip(day - delay - w, 0, nb_days)
        n = counts[term, end] - counts[term, start]
        f = frauds[term, end] - frauds[term, start]
        out[TERMINAL_NB_TX.format(w)] = n
        out[TERMINAL_RISK.format(w)] = np.divide(f, n, out=np.zeros_like(f), where=n > 0)
    return out


def add_features(df, delay=DELAY):
    return pd.concat([df, calendar_flags(df), customer_spending(df), terminal_risk(df, delay=delay)], axis=1)
