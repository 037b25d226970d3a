"""``paraisite data fetch|list``: download, verify and inspect the pinned upstream files."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paraisite.data import registry


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data fetch`` and ``data list``."""
    parser = subparsers.add_parser("data", help="fetch and verify upstream datasets and weights")
    parser.add_argument("--cache", help=f"cache root (default ${registry.CACHE_ENV} or the OS cache)")
    parser.add_argument("--mirror", help=f"read files from this mirror root (default ${registry.MIRROR_ENV})")
    actions = parser.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="download (or copy from the mirror) and verify files")
    fetch.add_argument("names", nargs="*", metavar="NAME", help=f"groups: {', '.join(registry.GROUPS)}")
    fetch.add_argument("--all", action="store_true", help="every file in the registry")
    fetch.set_defaults(func=run_fetch)
    listing = actions.add_parser("list", help="show what is cached and verified")
    listing.set_defaults(func=run_list)
    graphs = actions.add_parser("graphs", help="load (building once) the graphs of datasets; print counts and times")
    graphs.add_argument("datasets", nargs="*", metavar="DATASET", help="conf/data names (default: all)")
    graphs.add_argument("--cutoff", type=float, default=4.0, help="MEGNet graph cutoff in A (default 4.0)")
    graphs.set_defaults(func=run_graphs)
    export = actions.add_parser("export", help="write a source's crystals as CSV (one row per crystal)")
    export.add_argument("source", metavar="NAME", help="an LTC source: aflow, dataset1, dataset2, measured")
    export.add_argument("-o", "--output", required=True, help="CSV file to write")
    export.add_argument("--report", action="store_true", help="also print the source's conversion report (JSON)")
    export.set_defaults(func=run_export)


#: Columns of ``paraisite data export``.
EXPORT_COLUMNS = ("id", "formula", "structure_file", "tc_W_per_mK", "fidelity", "source", "provenance")


def run_export(args: argparse.Namespace) -> int:
    """Write one row per crystal of a source: id, reduced formula, registry structure file, TC, fidelity, provenance."""
    import csv
    import json

    from paraisite.data import sources
    from paraisite.safety import atomic_write

    if args.source not in sources.SOURCES:
        raise ValueError(f"unknown LTC source {args.source!r}; valid sources: {', '.join(sources.SOURCES)}")
    with registry.configured(args.cache, args.mirror):
        data = sources.load_source(args.source)
    fidelity = sources.source_spec(args.source).fidelity

    def write(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(EXPORT_COLUMNS)
            for r in data.records:
                writer.writerow((r.id, r.formula, r.structure_file, repr(r.tc), fidelity, r.source, r.provenance))

    atomic_write(Path(args.output), write)
    Console(stderr=True).print(f"{len(data.records)} crystals of {args.source} ({fidelity}) written to {args.output}")
    if args.report:
        print(json.dumps(data.report, indent=1))
    return 0


def _selected(args: argparse.Namespace) -> list[registry.UpstreamFile]:
    if args.all:
        return list(registry.REGISTRY.values())
    if not args.names:
        raise ValueError(f"name at least one group ({', '.join(registry.GROUPS)}) or pass --all")
    chosen: dict[str, registry.UpstreamFile] = {}
    for name in args.names:
        chosen.update((f.key, f) for f in registry.group_files(name))
    return list(chosen.values())


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch and verify the selected files, with a progress bar."""
    entries = _selected(args)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("fetch + verify", total=len(entries))
        for entry in entries:
            registry.fetch_entry(entry, cache=args.cache, mirror=args.mirror)
            progress.advance(task)
    size = sum(e.size for e in entries) / 1e6
    source = registry.mirror_dir(args.mirror) or "network"
    console.print(f"{len(entries)} files ({size:.1f} MB) verified in {registry.cache_dir(args.cache)} from {source}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print, per group, how many files are cached and verified."""
    table = Table(title=f"paraisite data in {registry.cache_dir(args.cache)}")
    for column in ("group", "files", "MB", "verified", "missing", "corrupt"):
        table.add_column(column, justify="left" if column == "group" else "right")
    bad = 0
    for name in registry.GROUPS:
        entries = registry.group_files(name)
        states = Counter(state for _, state in registry.cached_status(entries, args.cache))
        bad += states["corrupt"]
        mb = f"{sum(e.size for e in entries) / 1e6:.1f}"
        row = (states["verified"], states["missing"], states["corrupt"])
        table.add_row(name, str(len(entries)), mb, *map(str, row))
    Console().print(table)
    return 1 if bad else 0


def run_graphs(args: argparse.Namespace) -> int:
    """Load each dataset's graphs (built once, then from the cache) and print count, drops and time."""
    from paraisite.config import group_options, load_group_option
    from paraisite.data.graphs import MEGNetGraphBuilder, load_graph_set

    registry.configure(args.cache, args.mirror)
    builder = MEGNetGraphBuilder(cutoff=args.cutoff)
    table = Table(title=f"MEGNet graphs (cutoff {args.cutoff} A)")
    for column in ("dataset", "sources", "graphs", "dropped", "seconds"):
        table.add_column(column, justify="left" if column in ("dataset", "sources") else "right")
    for name in args.datasets or group_options("data"):
        sources = list(load_group_option("data", name).sources)
        start = time.perf_counter()
        sets = [load_graph_set(source, builder) for source in sources]
        seconds = time.perf_counter() - start
        graphs, dropped = sum(len(s) for s in sets), sum(len(s.problems) for s in sets)
        table.add_row(name, "+".join(sources), str(graphs), str(dropped), f"{seconds:.2f}")
    Console().print(table)
    return 0
