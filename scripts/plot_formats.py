"""Draws quality_bench --formats-only --json output: retention against the
weight bytes held (every weight the engine holds), one line per format
through its budgets (full, 50%, 75%), so pruning and quantization can be read
together: the further left at the same height, the better.

usage: plot_formats.py FORMATS_JSON OUT_PNG
"""
import json
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    q = json.load(open(sys.argv[1]))
    rows = q["formats"]
    formats = list(dict.fromkeys(r["format"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 5))
    for f in formats:
        pts = [r for r in rows if r["format"] == f and r["budget"] != "bytes 3/8"]
        pts.sort(key=lambda r: r["weight_bytes"])
        xs = [r["weight_bytes"] / 2**20 for r in pts]
        ys = [100 * r["retention"] for r in pts]
        label = f"{q.get('dtype', 'dense')} (not quantized)" if f == "none" else f
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(pts, xs, ys):
            ax.annotate(r["budget"], (x, y), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("weights held (MiB, log scale)")
    ax.set_ylabel("retention: average score / full unquantized model (%)")
    ax.set_title(f"testbed: formats x expert budgets (peu patterns, {q['cal_samples']} "
                 "calibration samples per task)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
