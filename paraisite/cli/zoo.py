"""``paraisite zoo list|card|export|ship|publish``: the model zoo, its model cards, and ensemble bundles from sweeps."""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from paraisite.data import registry

if TYPE_CHECKING:
    from paraisite.zoo.catalog import ZooEntry


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``zoo list``, ``zoo card`` and ``zoo export``."""
    parser = subparsers.add_parser("zoo", help="pretrained models: list, model cards, ensemble bundles")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="table of the zoo's models").set_defaults(func=run_list)
    card = actions.add_parser("card", help="print a model card (Markdown)")
    card.add_argument("name", metavar="NAME", help="a name from `paraisite zoo list`")
    card.set_defaults(func=run_card)
    export = actions.add_parser("export", help="bundle the completed runs of a sweep as an ensemble")
    export.add_argument("sweep", help="sweep directory (searched recursively for metrics.json)")
    export.add_argument("--step", required=True, help="task name of the runs, e.g. step3")
    export.add_argument("--dataset", required=True, help="dataset name of the runs, e.g. Dataset1")
    export.add_argument("--name", required=True, help="bundle name, e.g. ltc-step3-dataset1")
    export.add_argument("-o", "--output", help="bundle directory to create")
    export.add_argument("--install", action="store_true", help="install it in <cache>/zoo/<name> (too)")
    export.set_defaults(func=run_export)
    ship = actions.add_parser(
        "ship", help="pack a sweep's ensemble into the package (int8 weights), with measured calibration and domain"
    )
    ship.add_argument("sweep", help="sweep directory (searched recursively for metrics.json)")
    ship.add_argument("--step", required=True, help="task name of the runs, e.g. step3")
    ship.add_argument("--dataset", required=True, help="dataset name of the runs, e.g. MIX")
    ship.add_argument("--name", required=True, help="zoo name, e.g. ltc-step3-mix")
    ship.add_argument(
        "--cross", nargs="*", default=[], help="datasets no member trained on, for held-out figures (e.g. Dataset1)"
    )
    ship.add_argument("-o", "--output", help="directory to create (default: paraisite/zoo/models/<name>)")
    ship.add_argument("--evidence", help="directory for the per-row CSVs behind the figures")
    ship.add_argument(
        "--intervals",
        help="JSON of intervals calibrated out of family (experiments/ltc-mf/build_tables.py: intervals.json); "
        "replaces the own-validation calibration",
    )
    ship.add_argument("--use-for", default="", help="card: what the ensemble is for (one line)")
    ship.add_argument("--not-for", default="", help="card: what it should not be used for")
    ship.add_argument("--training-data", default="", help="card: its training data, described (default: the dataset)")
    ship.add_argument("--data-reference", default="", help="card: its training data, short, for `zoo list`")
    ship.add_argument(
        "--measured", help="card: JSON of figures on measured values, {name: {subset: {count, mae_log10, ...}}}"
    )
    ship.add_argument(
        "--measured-subset", default="not_dataset1_compounds", help="card: the subset of --measured to quote"
    )
    ship.set_defaults(func=run_ship)
    publish = actions.add_parser("publish", help="pack a bundle for a release and print its published.tsv row")
    publish.add_argument("bundle", help="bundle directory (from `zoo export -o`)")
    publish.add_argument("--repo", required=True, help="GitHub repository of the release, OWNER/NAME")
    publish.add_argument("--tag", required=True, help="release tag the archive is attached to, e.g. zoo-v1")
    publish.add_argument("-o", "--output", default=".", help="directory for <name>.tar.gz (default: .)")
    publish.set_defaults(func=run_publish)


def _stored_score(entry: ZooEntry) -> str | None:
    """A CGCNN checkpoint's own validation score; ``None`` for ensembles or if it cannot be fetched."""
    from paraisite.zoo.catalog import checkpoint_score

    if entry.family != "cgcnn":
        return None
    try:
        return checkpoint_score(entry)
    except registry.RegistryError:
        return None


def _status(entry: ZooEntry, published: Collection[str]) -> str:
    from paraisite.zoo.bundle import installed_bundle_dir, is_bundle, read_bundle
    from paraisite.zoo.shipped import shipped_bundle_dir

    installed = installed_bundle_dir(entry.name)
    if is_bundle(installed):
        members = read_bundle(installed).members
        mapes = [member.val_mape for member in members if member.val_mape is not None]
        mape = f", val MAPE {sum(mapes) / len(mapes):.3f}" if mapes else ""
        return f"installed ({len(members)} members{mape})"
    if is_bundle(shipped_bundle_dir(entry.name)):
        return "shipped (offline)"
    if entry.family == "cgcnn" or entry.name in published:
        return "published"
    from paraisite.zoo.cards import planned_models

    plan = planned_models().get(entry.name)
    if plan is not None and plan.removed and plan.instead:
        return f"not shipped: use {plan.instead}"
    return "not yet published"


def run_list(args: argparse.Namespace) -> int:
    """Print the zoo as a table: name, property, units, references, errors, status."""
    from paraisite.zoo.catalog import catalog
    from paraisite.zoo.published import published_bundles

    published = published_bundles()
    table = Table(title="paraisite model zoo (`paraisite zoo card NAME` for details)")
    table.add_column("name", no_wrap=True)
    for column in ("property", "units", "data ref.", "model ref.", "published error", "in file", "status"):
        table.add_column(column, overflow="fold")
    for entry in catalog().values():
        in_file = _stored_score(entry) or ("see card" if entry.family == "cgcnn" else "-")
        row = (entry.property, entry.units, entry.data_reference, entry.model_reference, entry.published_error)
        table.add_row(entry.name, *row, in_file, _status(entry, published))
    Console(width=200).print(table)
    return 0


def run_card(args: argparse.Namespace) -> int:
    """Print the model card of one entry."""
    from paraisite.zoo.catalog import get_entry, model_card

    entry = get_entry(args.name)
    print(model_card(entry, _stored_score(entry)))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Build a bundle from a sweep into ``-o``, ``--install`` it in the cache, or both."""
    from paraisite.zoo.bundle import export_bundle, install_bundle, installed_bundle_dir, read_bundle

    if not args.output and not args.install:
        raise ValueError("give -o DIR, --install, or both")
    target = args.output or installed_bundle_dir(args.name)
    bundle = read_bundle(export_bundle(args.sweep, args.step, args.dataset, args.name, target).parent)
    console = Console(stderr=True)
    seeds = ", ".join(str(member.seed) for member in bundle.members)
    console.print(f"bundle {bundle.name}: {len(bundle.members)} members (seeds {seeds}) in {bundle.root}")
    if args.output and args.install:
        console.print(f"installed in {install_bundle(bundle.root)}")
    return 0


def run_ship(args: argparse.Namespace) -> int:
    """Pack a shipped ensemble with its card data (``card.json``) and print its measured figures."""
    from paraisite.zoo.cards import card_data, write_card
    from paraisite.zoo.shipping import ship_ensemble

    path = ship_ensemble(
        args.sweep,
        args.step,
        args.dataset,
        args.name,
        args.cross,
        output=args.output,
        evidence=args.evidence,
        intervals=args.intervals,
    )
    manifest = json.loads(path.read_text())
    card = card_data(
        manifest,
        args.use_for,
        args.not_for,
        args.training_data,
        args.data_reference,
        args.measured,
        args.measured_subset,
    )
    write_card(path.parent, card)
    from paraisite.zoo.files import pin_manifest
    from paraisite.zoo.shipped import SHIPPED_DIR

    if path.parent.resolve().parent == SHIPPED_DIR:  # the card's sha256 changed the manifest: pin it again
        pin_manifest(path)
    figures = manifest["figures"]
    Console(stderr=True).print(
        f"{args.name}: {path.parent} (val MAPE {figures['val_mape_mean']:.3f} ({figures['val_mape_std']:.3f}), "
        f"largest change from int8 weights {figures['max_abs_change']:.4f})"
    )
    return 0


def run_publish(args: argparse.Namespace) -> int:
    """Write ``<name>.tar.gz`` and print where to upload it and the row to add to ``published.tsv``."""
    from paraisite.zoo.published import format_row, publish_bundle

    archive, published = publish_bundle(args.bundle, args.output, args.repo, args.tag)
    console = Console(stderr=True, soft_wrap=True)  # paths and URLs stay on one line, to copy
    console.print(f"archive {archive} ({published.asset.size} bytes, sha256 {published.asset.sha256})")
    console.print(f"upload it to {published.asset.url}, then add this row to paraisite/zoo/published.tsv:")
    print(format_row(published))
    return 0
