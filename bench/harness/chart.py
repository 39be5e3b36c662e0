"""PNG chart of every target relative to nginx (run with bench/.venv, which has matplotlib).

usage: bench/.venv/bin/python bench/harness/chart.py RESULT.json OUT.png

Bars read "times as good as nginx": for ↑ figures target ÷ nginx, for ↓ figures (latency,
memory) nginx ÷ target, so longer is always better and 1 is nginx. Log scale, because the
peers are one to three orders of magnitude apart.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

CHART_METRICS = {"req_per_s", "msgs_per_s", "p99_ms", "kib_per_session", "mb_per_s", "peak_rss_mib"}
COLORS = {
    "direct": "#9e9e9e",
    "gateway": "#d62728",
    "asgiproxy": "#1f77b4",
    "fastapi-proxy-lib": "#2ca02c",
}


def main(result_path: str, out_path: str) -> None:
    with open(result_path) as f:
        result = json.load(f)
    ratios = result.get("ratio_to_nginx")
    if not ratios:
        print("chart: no nginx figures, no chart")
        return
    targets = [t for t in result["meta"]["targets"] if t != "nginx"]
    rows = []  # (label, {target: goodness})
    for scenario in result["scenarios"]:
        for metric in scenario["metrics"]:
            if metric["key"] not in CHART_METRICS or (
                metric["key"] == "p99_ms" and scenario["kind"] != "ws-echo"
            ):
                continue
            values = {}
            for t in targets:
                r = ratios.get(scenario["id"], {}).get(metric["key"], {}).get(t)
                if r:
                    values[t] = r if metric["higher_is_better"] else 1 / r
            if values:
                rows.append((f"{scenario['title']}: {metric['label']}", values))
    if not rows:
        print("chart: nothing to plot")
        return
    height = 0.8 / max(1, len(targets))
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.8))
    # Bars grow from 1 (nginx): to the right where a target beats nginx, to the left where not.
    for i, t in enumerate(targets):
        ys = [n + i * height for n in range(len(rows))]
        xs = [row[1].get(t) for row in rows]
        ax.barh(
            ys, [x - 1 if x else 0 for x in xs], left=1, height=height, label=t, color=COLORS.get(t)
        )
        for y, x in zip(ys, xs, strict=True):
            if x:
                ax.text(
                    x,
                    y,
                    f" {x:.2g} " if x < 10 else f" {x:.0f} ",
                    va="center",
                    fontsize=6,
                    ha="left" if x >= 1 else "right",
                )
    ax.set_yticks([n + height * (len(targets) - 1) / 2 for n in range(len(rows))])
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ratios_seen = [v for _, row in rows for v in row.values()]
    ax.set_xlim(min(min(ratios_seen), 1) / 2, max(max(ratios_seen), 1) * 2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)
    ax.text(1.0, -0.6, "nginx", fontsize=8, ha="center", va="bottom")
    ax.set_xlabel(
        "times as good as nginx, log scale "
        "(throughput: target ÷ nginx; latency and memory: nginx ÷ target)"
    )
    meta = result["meta"]
    rounds = meta["profile"]["rounds"]
    ax.set_title(
        f"Gateway benchmark {meta['started']} ({meta['mode']}, medians of {rounds} rounds)",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    print(f"chart: wrote {out_path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
