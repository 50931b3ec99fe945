"""Draws the testbed's specialisation report (premoe testbed specialisation
--json-out FILE) as one picture: per MoE layer, the tasks' expert selection
frequencies (top row) and the Jaccard overlap of their top-half expert sets
(bottom row, with the random-set expectation in the title).

usage: plot_specialisation.py REPORT_JSON OUT_PNG
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main():
    report = json.load(open(sys.argv[1]))
    tasks, layers = report["tasks"], report["layers"]
    n = len(layers)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 8.4), squeeze=False)
    for i, layer in enumerate(layers):
        freq = np.array(report["frequency"][i])
        ax = axes[0][i]
        im = ax.imshow(freq, aspect="auto", cmap="viridis")
        ax.set_title(f"layer {layer}: selection frequency")
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
        jac = np.array(report["jaccard"][i])
        ax = axes[1][i]
        im = ax.imshow(jac, vmin=0, vmax=1, cmap="magma")
        ax.set_title(f"top-{report['top_half']} Jaccard: mean {report['mean_jaccard'][i]:.2f}"
                     f" (random {report['random_jaccard']:.2f})", fontsize=9)
        ax.set_xticks(range(len(tasks)), tasks, rotation=90, fontsize=8)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        for a in range(len(tasks)):
            for b in range(len(tasks)):
                ax.text(b, a, f"{jac[a, b]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if jac[a, b] < 0.6 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("testbed: how experts specialise by task")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
