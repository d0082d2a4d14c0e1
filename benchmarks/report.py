#!/usr/bin/env python3
"""The benchmark report: charts and a Markdown page from one run's JSON results.

    make bench                                        # writes benchmarks/results/latest/
    python3 benchmarks/report.py benchmarks/results/latest

reads the JSON each benchmark script wrote there (``--json DIR/NAME.json``: scheduling,
bridge, memory, echo, green, http, django - whichever exist) and writes next to them:

* ``NAME.svg`` and ``NAME.png``: one figure per benchmark, greenhub's value divided by
  each peer's for every row, all from this one run, with the machine, the versions and
  the command that reproduces it in the figure;
* ``machine.json``: the machine and versions of the run (from the first result);
* ``report.md``: the figures and the text tables, for docs/benchmarks.md to link.

Needs matplotlib (in the [bench] extra).
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _summary import BENCHMARKS, ratio_table, section, short  # noqa: E402 - path set-up

SCRIPTS = {name: script for name, script, _, _ in BENCHMARKS}
WHAT = {name: what for name, _, what, _ in BENCHMARKS}
COLOURS = {"uvloop": "#1f77b4", "asyncio": "#7f7f7f", "gevent": "#2ca02c", "stock": "#7f7f7f"}
# For the other peers (sqlalchemy, a2wsgi, asgiref, ...): none of COLOURS' colours, so
# that two bars of a chart never share one (matplotlib's default cycle starts with
# uvloop's blue).
SPARE_COLOURS = ["#ff7f0e", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
# Labelled ticks of the log-scale ratio axis, coarse to fine: the first set giving three
# labels in the chart's range (a narrow range, 1.1-1.4, gets the finest).
TICK_SETS = [
    (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10),
    (0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.7, 2),
]


def pair_colours(peers):
    """A colour per ratio of a chart (its denominators `peers`), all different: the
    peer's own from COLOURS where no earlier ratio of the chart has it, else a spare."""
    spare = iter(SPARE_COLOURS)
    colours = []
    for peer in peers:
        colour = COLOURS.get(peer)
        if colour is None or colour in colours:
            colour = next(c for c in spare if c not in colours)
        colours.append(colour)
    return colours


def axis_ticks(lo, hi):
    """The labelled ticks for a log ratio axis showing `lo`..`hi`."""
    for ticks in TICK_SETS:
        shown = [t for t in ticks if lo <= t <= hi]
        if len(shown) >= 3:
            return shown
    return shown


def load(results_dir):
    """{name: JSON document} for each benchmark with results in `results_dir`."""
    results = {}
    for name, _, _, _ in BENCHMARKS:
        path = os.path.join(results_dir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
    return results


def machine_line(doc):
    m = doc.get("machine", {})
    parts = [
        m.get("date", ""),
        f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs",
        f"Python {str(m.get('python', '?')).split()[0]}",
    ]
    if m.get("repo_git"):
        parts.append(f"greenhub {m['repo_git']}")
    return ", ".join(p for p in parts if p)


def command(name, doc):
    quick = (
        " --quick" if doc.get("config", {}).get("quick") or doc.get("args", {}).get("quick") else ""
    )
    return f"python3 benchmarks/{SCRIPTS[name]}{quick}"


def figure(name, doc, out_dir, plt):
    """Draw benchmark `name`'s ratios; the paths written (none if nothing to draw)."""
    sec = section(name, doc)
    pairs = [(a, b) for a, b in sec.ratios if any(r[1].get(a) and r[1].get(b) for r in sec.rows)]
    rows = [r for r in sec.rows if any(r[1].get(a) and r[1].get(b) for a, b in pairs)]
    if not rows:
        return []
    height = 1.6 + 0.32 * len(rows) * max(1, len(pairs))
    fig, ax = plt.subplots(figsize=(10, height))
    bar = 0.8 / len(pairs)
    colours = pair_colours([b for _, b in pairs])
    for i, (a, b) in enumerate(pairs):
        ys, xs = [], []
        for j, (_, values, _) in enumerate(rows):
            if values.get(a) and values.get(b):
                ys.append(j + (i - (len(pairs) - 1) / 2) * bar)
                xs.append(values[a] / values[b])
        label = f"{short(a)} / {short(b)}"
        bars = ax.barh(ys, xs, height=bar * 0.9, label=label, color=colours[i])
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{r[0]}  [{r[2]}]" for r in rows], fontsize=8)
    ax.invert_yaxis()
    better = "higher" if sec.higher_is_better else "lower"
    ax.set_xlabel(f"ratio ({better} is better for the numerator; 1 = same)")
    ax.set_xscale("log")
    ticks = axis_ticks(*ax.get_xlim())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    # In a row between the title and the plot: never over a bar or its label.
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=len(pairs), fontsize=8, frameon=False)
    ax.set_title(f"{name}: {WHAT[name]}", fontsize=11, loc="left", pad=22)
    fig.text(0.01, 0.01, f"{command(name, doc)}   ({machine_line(doc)})", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    paths = []
    for ext in ("svg", "png"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        fig.savefig(path, dpi=110)
        paths.append(path)
    plt.close(fig)
    return paths


def report_lines(results, charts, image_dir=""):
    """The report in Markdown: per benchmark, the command, the chart, the table."""
    lines = []
    for name, doc in results.items():
        lines += [f"## {name}: {WHAT[name]}", "", f"`{command(name, doc)}`", ""]
        if name in charts:
            lines += [f"![{name}]({image_dir}{name}.svg)", ""]
        lines += ["```text", ratio_table({name: doc}).strip("\n"), "```", ""]
    return lines


def write_report(results, out_dir, charts):
    first = next(iter(results.values()))
    with open(os.path.join(out_dir, "machine.json"), "w") as f:
        json.dump({name: doc.get("machine", {}) for name, doc in results.items()}, f, indent=1)
    lines = ["# Benchmark results", "", f"Run: {machine_line(first)}", ""]
    lines += report_lines(results, charts)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


DOCS_INTRO = """# Benchmarks

greenhub beside the stock asyncio loop, uvloop and gevent (and, for awaiting from sync
code, SQLAlchemy's greenlet bridge, greenback and asgiref), every number of a figure
from one run of `make bench` on the project's 2-core machine. Each chart shows
greenhub's value divided by each peer's, per row (log scale; the line at 1 is parity;
below 1 greenhub is faster or smaller, except for requests per second). The command
under each figure reproduces it; `benchmarks/README.md` says what each benchmark
measures and how to read it, and `python -m greenhub bench` runs the quick profile on
your machine.

Run: {run}
"""


def write_docs_page(results, out_dir, charts, page):
    """The docs site's page: the report, with the charts copied next to it (img/)."""
    img = os.path.join(os.path.dirname(os.path.abspath(page)), "img")
    os.makedirs(img, exist_ok=True)
    for name in charts:
        shutil.copyfile(os.path.join(out_dir, f"{name}.svg"), os.path.join(img, f"{name}.svg"))
    first = next(iter(results.values()))
    lines = [DOCS_INTRO.format(run=machine_line(first))]
    lines += report_lines(results, charts, "img/")
    with open(page, "w") as f:
        f.write("\n".join(lines))
    return page


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="the directory the benchmarks wrote their JSON into")
    ap.add_argument("--out", help="where to write the charts and report (default: results)")
    ap.add_argument(
        "--docs", metavar="PAGE", help="also write the docs site's page (charts in img/ beside it)"
    )
    args = ap.parse_args(argv)
    results = load(args.results)
    if not results:
        ap.error(f"no benchmark results (NAME.json) in {args.results}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("report.py draws with matplotlib: pip install matplotlib (in the [bench] extra)")
    out_dir = args.out or args.results
    os.makedirs(out_dir, exist_ok=True)
    charts = {}
    for name, doc in results.items():
        paths = figure(name, doc, out_dir, plt)
        if paths:
            charts[name] = paths
            print("wrote " + ", ".join(paths))
    print("wrote " + write_report(results, out_dir, charts))
    if args.docs:
        print("wrote " + write_docs_page(results, out_dir, charts, args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
