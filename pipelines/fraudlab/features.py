"""Features of the handbook's baseline (chapter 3.4): weekend and night flags;
per customer, the number and mean amount of their transactions over the last
1, 7 and 30 days (this one included); per terminal, the number of
transactions and the share of frauds over 1, 7 and 30-day windows that end
`delay` days ago (labels are known a week late)."""

import numpy as np
import pandas as pd

WINDOWS = (1, 7, 30)
FEATURES = (
    ["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    + [f"CUSTOMER_ID_{k}_{w}DAY_WINDOW" for w in WINDOWS for k in ("NB_TX", "AVG_AMOUNT")]
    + [f"TERMINAL_ID_{k}_{w}DAY_WINDOW" for w in WINDOWS for k in ("NB_TX", "RISK")]
)


def calendar_flags(df):
    return pd.DataFrame({
        "TX_DURING_WEEKEND": (df["TX_DATETIME"].dt.day_of_week >= 5).astype(int),
        "TX_DURING_NIGHT": (df["TX_DATETIME"].dt.hour <= 6).astype(int),
    }, index=df.index)


def customer_spending(df, windows=WINDOWS):
    ordered = df.sort_values(["CUSTOMER_ID", "TX_DATETIME"], kind="stable")
    out = pd.DataFrame(index=ordered.index)
    grouped = ordered.set_index("TX_DATETIME").groupby("CUSTOMER_ID")["TX_AMOUNT"]
    for w in windows:
        rolling = grouped.rolling(f"{w}D")
        out[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = rolling.count().to_numpy()
        out[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = rolling.mean().to_numpy()
    return out.reindex(df.index)


def terminal_risk(df, windows=WINDOWS, delay=7):
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
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = n
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = np.divide(f, n, out=np.zeros_like(f), where=n > 0)
    return out


def add_features(df, delay=7):
    return pd.concat([df, calendar_flags(df), customer_spending(df), terminal_risk(df, delay=delay)], axis=1)
