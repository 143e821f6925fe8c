#!/usr/bin/env python3
"""Draws the raw results `cargo xtask bench` writes to docs/bench/*.csv as PNG beside them.

Usage: python3 bench/plot.py docs/bench   (needs matplotlib: python3 -m pip install matplotlib)

Each CSV present is drawn; a missing one is skipped. Files:
- hello.csv: req/s of each server of `bench hello` (bars), fresh and reused instances.
- scale-connections.csv: req/s and p99 against connections, per server (log x).
- scale-read.csv: the same for the cached product read.
- scale-components.csv: start time, idle RSS and req/s of one against components loaded.
- start.csv: the whole shop's start, split into compiling, loading compiled code and the rest.
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def hello(out):
    data = rows(out / "hello.csv")
    labels = [r["server"] for r in data]
    rps = [float(r["rps"]) for r in data]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.2))
    bars = ax.barh(labels, rps, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in rps], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("requests per second (median round)")
    ax.set_title("bench hello: the same answer, side by side")
    ax.margins(x=0.15)
    save(fig, out / "hello.png")


def connections(out, name="scale-connections", title="hello: throughput and p99 as connections grow"):
    data = rows(out / f"{name}.csv")
    series = defaultdict(list)
    for r in data:
        series[r["server"]].append(
            (int(r["connections"]), float(r["rps"]), float(r["p99_ms"]))
        )
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for server, points in series.items():
        points.sort()
        xs = [p[0] for p in points]
        left.plot(xs, [p[1] for p in points], marker="o", label=server)
        right.plot(xs, [p[2] for p in points], marker="o", label=server)
    for ax, label in ((left, "requests per second"), (right, "p99 latency (ms)")):
        ax.set_xscale("log")
        ax.set_xlabel("keep-alive connections")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.suptitle(title)
    save(fig, out / f"{name}.png")


def read(out):
    connections(
        out,
        "scale-read",
        "the cached product read (Redis hit): throughput and p99 as connections grow",
    )


def components(out):
    data = rows(out / "scale-components.csv")
    xs = [int(r["components"]) for r in data]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    a.plot(xs, [float(r["start_cold_ms"]) for r in data], marker="o", label="empty data folder")
    a.plot(xs, [float(r["start_warm_ms"]) for r in data], marker="o", label="compile cache")
    a.set_ylabel("start to first answer (ms)")
    a.legend(fontsize=8)
    b.plot(xs, [float(r["rss_idle_mib"]) for r in data], marker="o", color="#dd8452")
    b.set_ylabel("RSS idle (MiB)")
    c.plot(xs, [float(r["rps_one"]) for r in data], marker="o", color="#55a868")
    c.set_ylabel("req/s of one component")
    c.set_ylim(bottom=0)
    for ax in (a, b, c):
        ax.set_xlabel("components loaded (copies of hello)")
        ax.grid(True, alpha=0.3)
    fig.suptitle("cost of loaded components")
    save(fig, out / "scale-components.png")


def start(out):
    data = rows(out / "start.csv")
    labels = [r["start"] for r in data]
    total = [float(r["ms_to_first_answer"]) for r in data]
    compile_ms = [float(r["compile_ms"]) for r in data]
    cache_ms = [float(r["cache_load_ms"]) for r in data]
    rest = [max(t - c - k, 0.0) for t, c, k in zip(total, compile_ms, cache_ms)]
    fig, ax = plt.subplots(figsize=(9, 2.8))
    ax.barh(labels, compile_ms, label="compiling components", color="#c44e52")
    ax.barh(labels, cache_ms, left=compile_ms, label="loading from the compile cache", color="#8172b2")
    left = [c + k for c, k in zip(compile_ms, cache_ms)]
    ax.barh(labels, rest, left=left, label="the rest (backends, migrations, startup)", color="#937860")
    for y, (t, r) in enumerate(zip(total, data)):
        ax.text(t, y, f" {t:,.0f} ms, {float(r['rss_idle_mib']):.0f} MiB idle", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms from `agora serve` to the first answered request")
    ax.margins(x=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("the whole shop's start (embedded backends)")
    save(fig, out / "start.png")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench")
    drawn = 0
    for name, draw in (
        ("hello.csv", hello),
        ("scale-connections.csv", connections),
        ("scale-read.csv", read),
        ("scale-components.csv", components),
        ("start.csv", start),
    ):
        if (out / name).exists():
            draw(out)
            drawn += 1
    if drawn == 0:
        sys.exit(f"no results in {out}")


if __name__ == "__main__":
    main()
