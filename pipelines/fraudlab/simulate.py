"""The transaction simulator (Fraud Detection Handbook, chapter 3, facts
reimplemented, vectorised with numpy).

Customers sit on a 100x100 grid with a mean amount ~U(5,100) (std = mean/2)
and a mean of ~U(0,4) transactions a day; terminals are uniform on the grid;
a customer uses the terminals within `radius`. Each day a customer makes
Poisson(mean) transactions at N(12h, 20000 s) (kept inside the day), of
N(mean, std) (negative: U(0, 2 mean)), at one of their terminals.
Frauds: (1) amounts over 220; (2) each day 2 terminals are compromised for
28 days; (3) each day 3 customers are compromised for 14 days and a third of
their transactions get 5x the amount.
"""

import numpy as np
import pandas as pd

SECONDS_PER_DAY = 86400


def customers(n, rng):
    mean_amount = rng.uniform(5, 100, n)
    return pd.DataFrame({
        "CUSTOMER_ID": np.arange(n),
        "x_customer_id": rng.uniform(0, 100, n),
        "y_customer_id": rng.uniform(0, 100, n),
        "mean_amount": mean_amount,
        "std_amount": mean_amount / 2,
        "mean_nb_tx_per_day": rng.uniform(0, 4, n),
    })


def terminals(n, rng):
    return pd.DataFrame({"TERMINAL_ID": np.arange(n),
                         "x_terminal_id": rng.uniform(0, 100, n), "y_terminal_id": rng.uniform(0, 100, n)})


def available_terminals(customer_df, terminal_df, radius=5.0, chunk=512):
    """(flat terminal ids, offsets): customer c uses flat[offsets[c]:offsets[c+1]]."""
    term_xy = terminal_df[["x_terminal_id", "y_terminal_id"]].to_numpy()
    cust_xy = customer_df[["x_customer_id", "y_customer_id"]].to_numpy()
    lists = []
    for start in range(0, len(cust_xy), chunk):
        d2 = ((cust_xy[start:start + chunk, None, :] - term_xy[None, :, :]) ** 2).sum(axis=2)
        lists.extend(np.nonzero(row <= radius ** 2)[0] for row in d2)
    counts = np.array([len(t) for t in lists])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = np.concatenate(lists) if lists else np.array([], dtype=int)
    return flat, offsets


def transactions(customer_df, terminal_df, nb_days, start_date, rng, radius=5.0):
    flat, offsets = available_terminals(customer_df, terminal_df, radius)
    n_avail = np.diff(offsets)
    n = len(customer_df)
    per_day = rng.poisson(customer_df["mean_nb_tx_per_day"].to_numpy()[:, None], size=(n, nb_days))
    per_day[n_avail == 0] = 0  # a customer with no terminal in reach buys nothing
    cust = np.repeat(np.repeat(np.arange(n), nb_days), per_day.ravel())
    day = np.repeat(np.tile(np.arange(nb_days), n), per_day.ravel())
    size = len(cust)
    t = rng.normal(SECONDS_PER_DAY / 2, 20000, size)
    bad = (t < 0) | (t >= SECONDS_PER_DAY)
    while bad.any():  # redraw until inside the day, as the handbook's generator keeps only those
        t[bad] = rng.normal(SECONDS_PER_DAY / 2, 20000, bad.sum())
        bad = (t < 0) | (t >= SECONDS_PER_DAY)
    mean = customer_df["mean_amount"].to_numpy()[cust]
    amount = rng.normal(mean, customer_df["std_amount"].to_numpy()[cust])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    terminal = flat[offsets[cust] + (rng.random(size) * n_avail[cust]).astype(int)]
    seconds = day * SECONDS_PER_DAY + t.astype(int)
    df = pd.DataFrame({
        "TX_DATETIME": pd.Timestamp(start_date) + pd.to_timedelta(seconds, unit="s"),
        "CUSTOMER_ID": cust, "TERMINAL_ID": terminal, "TX_AMOUNT": np.round(amount, 2),
        "TX_TIME_SECONDS": seconds, "TX_TIME_DAYS": day,
    }).sort_values("TX_TIME_SECONDS", kind="stable").reset_index(drop=True)
    df.insert(0, "TRANSACTION_ID", np.arange(len(df)))
    return df


def add_frauds(df, customer_df, terminal_df, rng):
    df = df.copy()
    df["TX_FRAUD"] = 0
    df["TX_FRAUD_SCENARIO"] = 0
    # (1) large amounts
    big = df["TX_AMOUNT"] > 220
    df.loc[big, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 1]
    nb_days = int(df["TX_TIME_DAYS"].max()) + 1
    days = df["TX_TIME_DAYS"].to_numpy()
    # (2) compromised terminals: 2 a day, all their transactions for 28 days
    for d in range(nb_days):
        bad = rng.choice(len(terminal_df), size=2, replace=False)
        hit = (days >= d) & (days < d + 28) & np.isin(df["TERMINAL_ID"].to_numpy(), bad)
        df.loc[hit, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 2]
    # (3) compromised cards: 3 a day, a third of their transactions for 14 days, amount x5
    for d in range(nb_days):
        bad = rng.choice(len(customer_df), size=3, replace=False)
        window = np.flatnonzero((days >= d) & (days < d + 14) & np.isin(df["CUSTOMER_ID"].to_numpy(), bad))
        chosen = rng.choice(window, size=len(window) // 3, replace=False) if len(window) else window
        df.loc[chosen, "TX_AMOUNT"] = df.loc[chosen, "TX_AMOUNT"] * 5
        df.loc[chosen, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 3]
    return df


def simulate(n_customers=5000, n_terminals=10000, nb_days=183, start_date="2018-04-01", radius=5.0, seed=0):
    """(customers, terminals, transactions with TX_FRAUD labels)."""
    rng = np.random.default_rng(seed)
    customer_df = customers(n_customers, rng)
    terminal_df = terminals(n_terminals, rng)
    tx = transactions(customer_df, terminal_df, nb_days, start_date, rng, radius)
    return customer_df, terminal_df, add_frauds(tx, customer_df, terminal_df, rng)
