"""Draws retrieval_bench --json output: the confusion matrices of the paper's
embedding (one MoE layer, max voting, the largest calibration size) and of
the best configuration as heat maps, and accuracy against calibration size
for each embedding depth (max voting).

usage: plot_retrieval.py RETRIEVAL_JSON OUT_PNG
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion(ax, run, tasks):
    m = np.array(run["confusion"], dtype=float)
    m /= m.sum(axis=1, keepdims=True)
    im = ax.imshow(100 * m, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_xlabel("matched pattern")
    ax.set_ylabel("the prompt's task")
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            if m[i, j] > 0:
                ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center",
                        color="white" if m[i, j] > 0.5 else "black", fontsize=7)
    ax.set_title(f"{run['embedding_layers']} MoE layer(s), {run['voting']} voting, "
                 f"{run['calibration_prompts']} prompts: {100 * run['accuracy']:.1f}%",
                 fontsize=9)
    return im


def main():
    r = json.load(open(sys.argv[1]))
    tasks = r["tasks"]
    runs = r["runs"]
    sizes = sorted({x["calibration_prompts"] for x in runs})
    depths = sorted({x["embedding_layers"] for x in runs})
    standard = next(x for x in runs if x["voting"] == "max" and x["calibration_prompts"] == sizes[-1]
                    and x["embedding_layers"] == depths[0])
    best = max(runs, key=lambda x: x["accuracy"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [3, 3, 2]})
    confusion(axes[0], standard, tasks)
    im = confusion(axes[1], best, tasks)
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="% of the row's prompts")
    ax2 = axes[2]
    for depth in depths:
        acc = [100 * next(x["accuracy"] for x in runs
                          if x["voting"] == "max" and x["calibration_prompts"] == s
                          and x["embedding_layers"] == depth)
               for s in sizes]
        ax2.plot(sizes, acc, marker="o", label=f"{depth} MoE layer(s)")
    ax2.axhline(98, color="grey", linestyle="--", linewidth=1, label="aim (98%)")
    ax2.set_xscale("log")
    ax2.set_xticks(sizes, [str(s) for s in sizes])
    ax2.set_xlabel("calibration prompts per task")
    ax2.set_ylabel("retrieval accuracy, max voting (%)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
