"""Draws quality_bench --formats-only --json output: retention against the
bytes of routed experts held, one line per expert format through its budgets
(full, 50%, 75%, and the byte budget), so pruning and quantization can be
read together: the further left at the same height, the better.

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
        pts.sort(key=lambda r: r["expert_bytes"])
        xs = [r["expert_bytes"] / 2**20 for r in pts]
        ys = [100 * r["retention"] for r in pts]
        label = f"{q.get('dtype', 'dense')} (not quantized)" if f == "none" else f
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(pts, xs, ys):
            ax.annotate(r["budget"], (x, y), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
    budget = next(r for r in rows if r["format"] == formats[0] and r["budget"] == "bytes 3/8")
    ax.axvline(budget["expert_bytes"] / 2**20, color="grey", lw=0.8, ls="--")
    ax.text(budget["expert_bytes"] / 2**20, 0.02, " byte budget 3/8", fontsize=7, color="grey",
            transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("routed expert bytes held (MiB, log scale)")
    ax.set_ylabel("retention: average score / full unquantized model (%)")
    ax.set_title(f"testbed: expert formats x budgets (peu patterns, {q['cal_samples']} "
                 "calibration samples per task)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
