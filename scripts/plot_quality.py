"""Draws quality_bench --json output: retention of every metric at each
budget (bars), and peu's retention against calibration size (line).

usage: plot_quality.py QUALITY_JSON OUT_PNG
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main():
    q = json.load(open(sys.argv[1]))
    rows = q["rows"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(budgets)
    x = np.arange(len(metrics))
    for i, b in enumerate(budgets):
        vals = [100 * next(r["retention"] for r in rows if r["metric"] == m and r["budget"] == b)
                for m in metrics]
        bars = ax.bar(x + (i - (len(budgets) - 1) / 2) * width, vals, width, label=f"{b} reduction"
                      if "%" in b else b)
        for rect, v in zip(bars, vals):
            ax.text(rect.get_x() + rect.get_width() / 2, v + 1, f"{v:.0f}", ha="center",
                    fontsize=6)
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, metrics)
    ax.set_ylabel("retention: pruned / full average score (%)")
    ax.set_title(f"testbed, {q['cal_samples']} calibration samples per task")
    ax.legend(fontsize=8)
    sweep = q["calibration_sweep"]
    ax2.plot([s["samples"] for s in sweep], [100 * s["retention"] for s in sweep], marker="o")
    ax2.set_xscale("log")
    ax2.set_xlabel("calibration samples per task")
    ax2.set_ylabel("peu retention at 75% reduction (%)")
    ax2.set_title("calibration size")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
