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

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from paraisite.data import registry
from paraisite.safety import check_relative_name, resolve_inside
from paraisite.zoo.bundle import Bundle, archive_bundle, extract_bundle, read_bundle

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


def read_table(text: str) -> dict[str, PublishedBundle]:
    """Parse a ``published.tsv`` text (comment lines start with ``#``).

    Raises:
        ValueError: wrong columns, or a row whose name, repo (``owner/name``), tag or file is not plain (no ``..``,
            ``/`` where not expected, absolute paths), or whose sha256 is not a digest.
    """
    rows = registry.read_tsv(text)
    if tuple(rows.fieldnames or ()) != TABLE_COLUMNS:
        raise ValueError(f"published table: columns {rows.fieldnames}, expected {list(TABLE_COLUMNS)}")
    published = {}
    for row in rows:
        asset = _checked_asset(row)
        published[row["name"]] = PublishedBundle(
            row["name"],
            asset,
            int(row["members"]),
            float(row["val_mape_mean"]),
            float(row["val_mape_std"]),
            row["profile"],
            row["protocol"],
        )
    return published


def published_bundles() -> dict[str, PublishedBundle]:
    """The bundles pinned in the package's ``published.tsv``, then in ``$PARAISITE_ZOO_TABLE`` (by zoo name).

    A site table (same columns) lets a cluster pin archives it hosts itself, e.g. ensembles trained there before a
    paraisite release pins them; its rows take precedence.
    """
    published = read_table(resources.files("paraisite.zoo").joinpath("published.tsv").read_text())
    site_table = os.environ.get(SITE_TABLE_ENV)
    if site_table:
        try:
            published.update(read_table(Path(site_table).expanduser().read_text()))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{SITE_TABLE_ENV}={site_table}: unreadable published table ({error})") from None
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
