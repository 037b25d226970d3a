"""``paraisite data fetch|list``: download, verify and inspect the pinned upstream files."""

from __future__ import annotations

import argparse
import time
from collections import Counter

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
