"""Draws serve_bench --json output: requests/s and time to first token
against concurrent clients: full model, pattern-served over gRPC, and
pattern-served over the OpenAI HTTP API.

usage: plot_serve.py SERVE_JSON OUT_PNG
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    rows = json.load(open(sys.argv[1]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for mode, style in (("full", "o-"), ("pattern", "s--"), ("http", "^:")):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        c = [r["clients"] for r in mine]
        axes[0].plot(c, [r["requests_per_second"] for r in mine], style, label=mode)
        axes[1].plot(c, [1e3 * r["ttft_p50"] for r in mine], style, label=f"{mode} p50")
        axes[1].plot(c, [1e3 * r["ttft_p99"] for r in mine], style, alpha=0.4,
                     label=f"{mode} p99")
        axes[2].plot(c, [1e3 * r["token_p50"] for r in mine], style, label=f"{mode} p50")
        axes[2].plot(c, [1e3 * r["token_p99"] for r in mine], style, alpha=0.4,
                     label=f"{mode} p99")
    titles = ("requests/s", "time to first token (ms)", "per-token latency (ms)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
