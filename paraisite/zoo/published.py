"""Published ensemble bundles: release assets pinned in ``published.tsv``, fetched, verified and unpacked.

Where the weights live: each bundle is packed by ``paraisite zoo publish`` into a reproducible ``<name>.tar.gz``,
attached to a release of the project repository, and pinned by one row of ``published.tsv`` (repository, tag,
file, sha256, size, and the members' measured validation MAPE). Fetching goes through the registry like every
upstream file: cache first, else the mirror (``<mirror>/<repo>/releases/download/<tag>/<file>``) or the network,
and the archive's sha256 is checked before it is opened. It is unpacked into
``<cache>/zoo/published/<name>-<sha256[:12]>/``. Every load checks everything again (:func:`fetch_bundle`): the
archive's sha256, its limits and exact content, the pinned name, and the unpacked files against the archive.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from paraisite.data import registry
from paraisite.safety import UnsafeFileError, UnsafePathError, check_relative_name, read_limited, resolve_inside
from paraisite.zoo.bundle import Bundle, archive_bundle, extract_bundle, read_bundle

log = logging.getLogger(__name__)

SITE_TABLE_ENV = "PARAISITE_ZOO_TABLE"
TABLE_COLUMNS = (
    "name",
    "repo",
    "tag",
    "file",
    "sha256",
    "size",
    "members",
    "val_mape_mean",
    "val_mape_std",
    "profile",
    "protocol",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PublishedBundle:
    """One row of ``published.tsv``: a pinned bundle archive and its measured validation MAPE."""

    name: str
    asset: registry.ReleaseAsset
    members: int
    val_mape_mean: float
    val_mape_std: float
    profile: str
    protocol: str

    @property
    def measured_error(self) -> str:
        """Validation MAPE over the members, as the paper reports it: mean (std)."""
        return f"MAPE {self.val_mape_mean:.3f} ({self.val_mape_std:.3f}), {self.members} seeds, {self.profile}"

    def row(self) -> dict[str, str]:
        """The row as written in ``published.tsv``."""
        asset = self.asset
        values = (
            *(self.name, asset.repo, asset.tag, asset.file, asset.sha256, asset.size, self.members),
            *(f"{self.val_mape_mean:.4f}", f"{self.val_mape_std:.4f}", self.profile, self.protocol),
        )
        return dict(zip(TABLE_COLUMNS, map(str, values), strict=True))


def _checked_asset(row: dict[str, str]) -> registry.ReleaseAsset:
    """The release asset of a table row; its names must be plain (they become cache and mirror paths)."""
    name = row["name"]
    check_relative_name(name, what="published table: name", parts=1)
    check_relative_name(row["repo"], what=f"published table, {name}: repo", parts=2)
    check_relative_name(row["tag"], what=f"published table, {name}: tag", parts=1)
    check_relative_name(row["file"], what=f"published table, {name}: file", parts=1)
    if not row["file"].endswith(".tar.gz"):
        raise ValueError(f"published table, {name}: file {row['file']!r} is not a .tar.gz bundle archive")
    if not _SHA256.match(row["sha256"] or ""):
        raise ValueError(f"published table, {name}: sha256 {row['sha256']!r} is not 64 lowercase hex digits")
    return registry.ReleaseAsset(row["repo"], row["tag"], row["file"], row["sha256"], int(row["size"]))


def _bundle(row: dict[str, str]) -> PublishedBundle:
    """The bundle of one table row; a bad value is a ``ValueError`` naming its column."""

    def number(column: str, kind: type) -> Any:
        try:
            return kind(row[column])
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ValueError(f"column {column}: {row[column]!r} is not {expected}") from None

    number("size", int)
    asset = _checked_asset(row)
    members, mean, std = number("members", int), number("val_mape_mean", float), number("val_mape_std", float)
    return PublishedBundle(row["name"], asset, members, mean, std, row["profile"], row["protocol"])


def read_table(
    text: str, source: str = "published table", errors: dict[str, str] | None = None
) -> dict[str, PublishedBundle]:
    """Parse a ``published.tsv`` text (comment lines start with ``#``).

    ``errors``: collect each bad row there (``{name: message}``, ``""`` for a row naming no valid model) instead
    of raising, so that it affects only the model it names. Messages name ``source``, the line and the column.

    Raises:
        ValueError: wrong columns, or (``errors`` not given) a row whose name, repo (``owner/name``), tag or file is
            not plain (no ``..``, ``/`` where not expected, absolute paths), whose sha256 is not a digest, or whose
            numbers are not numbers.
    """
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if not line.startswith("#")]
    header = lines[0][1].split("\t") if lines else []
    if tuple(header) != TABLE_COLUMNS:
        raise ValueError(f"{source}: columns {header}, expected {list(TABLE_COLUMNS)}")
    published = {}
    for number, line in lines[1:]:
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != len(TABLE_COLUMNS):
                raise ValueError(f"{len(fields)} tab-separated columns, expected {len(TABLE_COLUMNS)}")
            bundle = _bundle(dict(zip(TABLE_COLUMNS, fields, strict=True)))
        except (ValueError, UnsafePathError) as error:
            message = f"{source}, line {number}: {error}"
            if errors is None:
                raise ValueError(message) from None
            name = fields[0] if _PLAIN_NAME.match(fields[0]) else ""
            errors[name] = message
            log.warning("%s (it affects only %s)", message, name or "no model: the row names none")
            continue
        published[bundle.name] = bundle
    return published


#: Largest site table read (``$PARAISITE_ZOO_TABLE``); the package's has a row per ensemble.
MAX_SITE_TABLE_BYTES = 1024**2
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")


def site_table_errors() -> dict[str, str]:
    """The bad rows of ``$PARAISITE_ZOO_TABLE`` by the model they name (see :func:`published_bundles`)."""
    errors: dict[str, str] = {}
    _site_table(errors)
    return errors


def _site_table(errors: dict[str, str]) -> dict[str, PublishedBundle]:
    site_table = os.environ.get(SITE_TABLE_ENV)
    if not site_table:
        return {}
    try:
        data = read_limited(Path(site_table).expanduser(), MAX_SITE_TABLE_BYTES, what="site table", compressed=())
        text = data.decode("utf-8")
    except (OSError, UnsafeFileError, UnicodeDecodeError) as error:
        raise ValueError(f"{SITE_TABLE_ENV}={site_table}: unreadable published table ({error})") from None
    try:
        return read_table(text, f"{SITE_TABLE_ENV}={site_table}", errors)
    except ValueError as error:
        raise ValueError(f"{SITE_TABLE_ENV}={site_table}: unreadable published table ({error})") from None


def published_bundles() -> dict[str, PublishedBundle]:
    """The bundles pinned in the package's ``published.tsv``, then in ``$PARAISITE_ZOO_TABLE`` (by zoo name).

    A site table (same columns) lets a cluster pin archives it hosts itself, e.g. ensembles trained there before a
    paraisite release pins them; its rows take precedence. It is read as a regular file of at most
    :data:`MAX_SITE_TABLE_BYTES` (a FIFO or device is refused without being opened); a bad row is left out with a
    warning naming its line and column, and affects only the model it names (:func:`site_table_errors`).
    """
    published = read_table(resources.files("paraisite.zoo").joinpath("published.tsv").read_text())
    published.update(_site_table({}))
    return published


def fetch_bundle(
    published: PublishedBundle,
    *,
    cache: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
) -> Bundle:
    """The verified, unpacked bundle of a published row; every check runs on every call.

    The archive's cache and mirror paths must stay inside their roots; its sha256 is checked (the cached copy too);
    :func:`paraisite.zoo.bundle.extract_bundle` then checks its limits, that it holds exactly the manifest's files
    and the pinned name, and reuses the unpacked copy only if it still matches the archive.

    Raises:
        paraisite.data.registry.ChecksumError: the archive's sha256 is not the pinned one (nothing is unpacked).
        paraisite.data.registry.MissingFileError: neither the URL nor the mirror has the archive.
        paraisite.safety.UnsafePathError: the row's repo/tag/file lead outside the cache or mirror.
        paraisite.zoo.bundle.BundleError: an archive that is not exactly the pinned bundle (e.g. another name).
        paraisite.zoo.bundle.BundleIntegrityError: an unpacked member does not match the manifest.
    """
    asset = published.asset
    resolve_inside(registry.cache_dir(cache), asset.key, what=f"published bundle {published.name}: cache path")
    mirror_root = registry.mirror_dir(mirror)
    if mirror_root is not None:
        resolve_inside(mirror_root, asset.key, what=f"published bundle {published.name}: mirror path")
    archive = registry.fetch_entry(asset, cache=cache, mirror=mirror)
    return extract_bundle(archive, unpacked_dir(published, cache), expected_name=published.name)


def unpacked_dir(published: PublishedBundle, cache: str | os.PathLike | None = None) -> Path:
    """Where a published bundle is unpacked: ``<cache>/zoo/published/<name>-<sha256[:12]>``."""
    folder = f"{published.name}-{published.asset.sha256[:12]}"
    return resolve_inside(registry.cache_dir(cache) / "zoo" / "published", folder, what="unpacked bundle", parts=1)


def publish_bundle(
    source: str | os.PathLike, output_dir: str | os.PathLike, repo: str, tag: str
) -> tuple[Path, PublishedBundle]:
    """Pack a bundle for release and describe its ``published.tsv`` row.

    Returns the archive (to upload as asset ``<name>.tar.gz`` of release ``tag`` of ``repo``) and the row that
    pins it: sha256, size, and the members' validation MAPE, mean and sample std (ddof 1, as in the tables).
    """
    bundle = read_bundle(source)
    mapes = [member.val_mape for member in bundle.members]
    if any(mape is None for mape in mapes):
        raise ValueError(f"{bundle.root}: a member has no validation MAPE in the manifest; it cannot be published")
    archive = archive_bundle(bundle, output_dir)
    asset = registry.ReleaseAsset(repo, tag, archive.name, registry.sha256sum(archive), archive.stat().st_size)
    values = np.asarray(mapes, dtype=float)
    published = PublishedBundle(
        bundle.name,
        asset,
        len(values),
        float(values.mean()),
        float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
        str(bundle.manifest.get("profile")),
        str(bundle.manifest.get("protocol")),
    )
    return archive, published


def format_row(published: PublishedBundle) -> str:
    """The tab-separated ``published.tsv`` line of a row."""
    return "\t".join(published.row().values())
