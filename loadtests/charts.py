"""The two charts the docs show, drawn from results.json with matplotlib.

- prober_latency.png: `GET /ping` p95 against the offered rate, one line per variant, one
  panel per load (log scales: the stages differ by orders of magnitude), with each variant's
  10x-idle bar (dotted, in its colour), the 100 ms bar, and a ring where it breaks;
- queue_wait.png: the jobs' queue wait and turnaround (p95) against the offered rate, for one
  worker and for two (see workers_compared), with a ring where the workers fall behind.

The marks carry a gid (`knee:<variant>:<load>`, `10x-idle:<variant>:<load>`) that the tests
read. The knees are knee.py's, the same the summary names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests import knee

TITLES = {"cpu": "CPU tasks (crunch)", "io": "I/O tasks (wait)"}
STYLE = {"stage1-async": ("#d84315", "o"), "stage1-def": ("#f9a825", "s")}
QUEUED_COLOURS = ["#1565c0", "#00897b", "#6a1b9a", "#2e7d32", "#ad1457", "#4e342e"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _style(variants: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    queued = [v["name"] for v in variants if v["name"] not in STYLE]
    colours = {
        name: (QUEUED_COLOURS[i % len(QUEUED_COLOURS)], "^") for i, name in enumerate(queued)
    }
    return STYLE | colours


def _series(results: dict[str, Any], name: str, load: str, value) -> tuple[list, list]:
    steps = sorted((s for s in results["steps"] if s["variant"] == name and s["load"] == load),
                   key=knee.rate)  # fmt: skip
    points = [(s["rate"], y) for s in steps if (y := value(s))]
    return [x for x, _ in points], [y for _, y in points]


def _panels(plt, results: dict[str, Any]):
    loads = [load for load in knee.LOADS if any(s["load"] == load for s in results["steps"])]
    fig, axes = plt.subplots(1, max(1, len(loads)), figsize=(5.2 * max(1, len(loads)), 4.2),
                             dpi=120, squeeze=False)  # fmt: skip
    return fig, list(zip(loads, axes[0], strict=False))


def _axes(plt, ax) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 10, 20, 50, 100: readable ms
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("offered tasks per second (log scale)")
    ax.grid(which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a panel with nothing of its load draws no legend
        ax.legend(fontsize=7)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _ring(ax, x: float, y: float, colour: str, gid: str, label: str | None) -> None:
    """A knee: a ring around the step where it is, in the variant's colour."""
    ax.plot([x], [y], marker="o", markersize=13, markerfacecolor="none", markeredgewidth=1.6,
            markeredgecolor=colour, linestyle="none", gid=gid, label=label)  # fmt: skip


def prober_chart(results: dict[str, Any], path: Path) -> None:
    _save(_pyplot(), prober_figure(results), path)


def prober_figure(results: dict[str, Any]):
    plt = _pyplot()
    fig, panels = _panels(plt, results)
    style = _style(results["variants"])
    for load, ax in panels:
        first_bar = first_ring = True
        for variant in results["variants"]:
            name = variant["name"]
            xs, ys = _series(results, name, load, lambda s: s["prober"].get("p95"))
            if not xs:
                continue
            colour, marker = style[name]
            ax.plot(xs, ys, marker=marker, color=colour, label=name)
            knees = results["knees"][name]
            if knees["idle_p95"]:
                bar = knee.PROBER_TIMES_IDLE * knees["idle_p95"]
                label = f"{knee.PROBER_TIMES_IDLE}x idle p95, each variant's (dotted)"
                label = label if first_bar else None
                ax.plot([min(xs), max(xs)], [bar, bar], ":", color=colour, linewidth=1.1,
                        gid=f"10x-idle:{name}:{load}", label=label)  # fmt: skip
                first_bar = False
            if (at := knee.breaks_at(knees[load])) is not None and at in xs:
                label = "breaks: first step past a bar" if first_ring else None
                _ring(ax, at, ys[xs.index(at)], colour, f"knee:{name}:{load}", label)
                first_ring = False
        ax.axhline(knee.PROBER_LIMIT_MS, color="#555", linestyle="--", linewidth=0.8,
                   label=f"{knee.PROBER_LIMIT_MS:g} ms")  # fmt: skip
        ax.set_title(f"GET /ping p95 under {TITLES[load]}", fontsize=10)
        ax.set_ylabel("GET /ping p95 (ms, log scale)")
        _axes(plt, ax)
    return fig


def workers_compared(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage run with more than one worker count (stage2 and stage2-w2 by default), so the
    chart shows what a second worker buys; else every queued variant."""
    queued = [v for v in variants if v["stage"] > 1]
    for stage in sorted({v["stage"] for v in queued}):
        same = [v for v in queued if v["stage"] == stage]
        if len({v["workers"] for v in same}) > 1:
            return same
    return queued


def queue_chart(results: dict[str, Any], path: Path) -> None:
    _save(_pyplot(), queue_figure(results), path)


def queue_figure(results: dict[str, Any]):
    plt = _pyplot()
    fig, panels = _panels(plt, results)
    style = _style(results["variants"])
    queued = workers_compared(results["variants"])
    for load, ax in panels:
        first_ring = True
        for variant in queued:
            name = variant["name"]
            colour, _ = style[name]
            for key, line, what in (("turnaround_ms", "-", "turnaround"),
                                    ("queue_wait_ms", ":", "queue wait")):  # fmt: skip
                xs, ys = _series(results, name, load, lambda s, k=key: s[k].get("p95"))
                if xs:
                    ax.plot(xs, ys, line, marker="^", color=colour,
                            label=f"{name} {what}")  # fmt: skip
            xs, ys = _series(results, name, load, lambda s: s["turnaround_ms"].get("p95"))
            behind = results["knees"][name].get(load, {}).get("falls_behind")
            if behind is not None and behind in xs:
                label = "workers fall behind" if first_ring else None
                _ring(ax, behind, ys[xs.index(behind)], colour, f"knee:{name}:{load}", label)
                first_ring = False
        ax.set_title(f"Jobs' p95 under {TITLES[load]}", fontsize=10)
        ax.set_ylabel("enqueue to start / to finish, p95 (ms, log)")
        _axes(plt, ax)
    return fig
