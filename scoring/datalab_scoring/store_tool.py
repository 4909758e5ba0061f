"""`python -m datalab_scoring.store_tool status [--json] | backfill FILE |
window --days D --out FILE`: the feature store operated from next to it.
`datalab features` runs this in a one-shot container of the scoring image on
the store's network (the host does not reach the store), with the store's
password file mounted; the promotion controller runs `window` so, to judge a
candidate on production's own labelled transactions."""

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

import pandas as pd
from fraudlab import intake, online
from fraudlab.features import FEATURES

from . import featurestore
from .evaluate import LABEL

TIMEOUT_MS = "60000"  # a backfill chunk is thousands of transactions in one round trip


def read_history(path):
    if path.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if path.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path)
    raise SystemExit(f"{os.path.basename(path)}: give a .csv, .csv.gz or .parquet file")


def show_status(found, as_json):
    if as_json:
        print(json.dumps(found))
        return
    last = found["last_write"]
    share = found["used_memory"] / found["maxmemory"] if found["maxmemory"] else None
    rows = [
        ("keys", f"{found['keys_in_database']:,}"),
        ("memory", f"{found['used_memory'] / 2**20:.1f} MiB of {found['maxmemory'] / 2**20:.0f} MiB"
                   + (f" ({share:.0%})" if share is not None else " (no limit)")),
        ("when full", found["maxmemory_policy"] + (" (writes refused, nothing dropped)"
                                                    if found["maxmemory_policy"] == "noeviction" else
                                                    " (WARNING: state may be evicted silently)")),
        ("persistence", ("append-only file" if found["aof_enabled"] else "none (a restart loses the state)")
         + f", last write {found['aof_last_write_status']}, last rewrite {found['aof_last_bgrewrite_status']}"),
        ("last write", datetime.fromtimestamp(last, timezone.utc).isoformat(timespec="seconds") if last
         else "never"),
    ]
    for name, value in rows:
        print(f"{name:12} {value}")


def export_window(store, days, limit, out, features_out=None):
    """Write the transactions scored in the last `days` (the latest `limit` scored at
    most) that have a label to `out` (parquet: online.WINDOW_COLUMNS), and their
    features alone, in the same order, to `features_out` (what a model under judgement
    may see: not the labels, not production's scores); what was written."""
    until = pd.Timestamp.now(tz="UTC")
    since = until - pd.Timedelta(days=days)
    scored = online.labelled_window(store.client, since, until, limit, prefix=store.prefix)
    labelled = scored[scored[LABEL].notna()].reset_index(drop=True)
    labelled.to_parquet(out, index=False)
    if features_out:
        labelled[list(FEATURES)].to_parquet(features_out, index=False)
    return {"since": since.isoformat(), "until": until.isoformat(), "scored": len(scored),
            "labelled": len(labelled), "frauds": int(labelled[LABEL].sum()), "features": list(FEATURES)}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="datalab features", description=__doc__)
    ap.add_argument("--password-file", default="/run/secrets/featurestore_password")
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    bf = sub.add_parser("backfill")
    bf.add_argument("file")
    win = sub.add_parser("window", help="the labelled transactions scored in the last days, as parquet; "
                                        "what they hold as JSON on the last line")
    win.add_argument("--days", type=float, required=True)
    win.add_argument("--limit", type=int, default=None, help="the latest so many scored transactions at most")
    win.add_argument("--out", required=True, help="the transactions, their features, labels and what served them")
    win.add_argument("--features-out", help="the same transactions' features alone (what models are given)")
    args = ap.parse_args(argv)
    settings = featurestore.Settings.from_env({**os.environ, "SCORING_FEATURE_STORE_PASSWORD_FILE": args.password_file,
                                               "SCORING_FEATURE_STORE_TIMEOUT_MS": TIMEOUT_MS})
    store = online.FeatureStore(featurestore.connect(settings))
    if args.command == "status":
        show_status(store.status(), args.json)
        return 0
    if args.command == "window":
        print(json.dumps(export_window(store, args.days, args.limit, args.out, args.features_out)))
        return 0
    history = read_history(args.file)
    started = time.monotonic()

    def progress(done, total):
        print(f"[{time.monotonic() - started:6.1f}s] {done:,}/{total:,} transactions loaded", flush=True)

    try:
        loaded = store.backfill(history, progress=progress)
    except intake.InvalidField as e:
        print(f"datalab features backfill: {e}", file=sys.stderr)
        return 2
    print(f"{loaded:,} transactions of the last windows loaded, of {len(history):,} in the file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
