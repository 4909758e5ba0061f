#!/usr/bin/env python3
"""Image build time, cold (--no-cache) and cached, and size, per image.

Builds exactly what `datalab up` builds (plus --include NAME...), first with
no layer cache, then again from the cache, and prints one row per image.
Last line: one JSON object.

    .venv/bin/python bench/images.py [--settings FILE] [--include tensorflow-gpu]
"""

import argparse
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datalab import images, manifest, settings as settings_mod  # noqa: E402
from datalab.docker import Docker  # noqa: E402
from datalab.steps import Steps  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings")
    ap.add_argument("--include", nargs="*", default=[], help="on-request images to add, e.g. tensorflow-gpu")
    args = ap.parse_args()
    settings = settings_mod.load(args.settings)
    docker = Docker(settings)
    names = images.default_targets(manifest.load()) + args.include
    cold, cached = {}, {}
    quiet = Steps(out=io.StringIO())
    print("cold builds (no layer cache) ...", flush=True)
    images.build_all(docker, settings, Steps(), names, no_cache=True, durations=cold)
    print("cached builds ...", flush=True)
    images.build_all(docker, settings, quiet, names, durations=cached)
    sizes = {r["name"]: r["size_mb"] for r in images.listing(docker)}
    sizes["base"] = round(docker.inspect("image", images.build_tag("base"))[0]["Size"] / 1e6)
    print()
    print(f"{'image':16} {'cold s':>8} {'cached s':>9} {'size MB':>8}")
    rows = {}
    for name in cold:
        rows[name] = {"cold_s": round(cold[name], 1), "cached_s": round(cached[name], 1), "size_mb": sizes.get(name)}
        print(f"{name:16} {cold[name]:8.1f} {cached[name]:9.1f} {sizes.get(name) or 0:8}")
    print(f"{'total':16} {sum(cold.values()):8.1f} {sum(cached.values()):9.1f}")
    print("reference (docs/targets.md): notebook image 74 s / 669 MB; + tensorflow-cpu +53 s, 2.19 GB")
    print(json.dumps({"images": rows, "total_cold_s": round(sum(cold.values()), 1),
                      "total_cached_s": round(sum(cached.values()), 1)}))


if __name__ == "__main__":
    main()
