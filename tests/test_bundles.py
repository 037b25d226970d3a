"""Bundles and their archives from outside data: paths stay inside their roots, archives are exactly the manifest's
files within limits, and every check runs on every load.

Bundles here are real directories and real ``.tar.gz`` archives with small member files (the checks do not depend
on what the members hold; loading members as checkpoints is tested in ``test_zoo.py``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from paraisite.cli.main import main
from paraisite.data import registry
from paraisite.safety import UnsafePathError, resolve_inside
from paraisite.zoo.bundle import (
    MANIFEST,
    MAX_ARCHIVE_ENTRIES,
    BundleError,
    archive_bundle,
    export_bundle,
    extract_bundle,
    install_bundle,
    installed_bundle_dir,
    read_bundle,
)
from paraisite.zoo.predictors import load_predictor
from paraisite.zoo.published import (
    SITE_TABLE_ENV,
    TABLE_COLUMNS,
    PublishedBundle,
    fetch_bundle,
    read_table,
    unpacked_dir,
)

NAME = "ltc-step3-dataset1"


def make_bundle(root: Path, name: str = NAME, files: dict[str, bytes] | None = None, **manifest_fields) -> Path:
    """A bundle directory whose members are small files with their true sha256 in the manifest."""
    files = files or {"seed1.ckpt": b"weights of seed 1", "seed2.ckpt": b"weights of seed 2"}
    root.mkdir(parents=True, exist_ok=True)
    members = []
    for seed, (file, data) in enumerate(files.items(), start=1):
        (root / file).write_bytes(data)
        members.append({"file": file, "sha256": hashlib.sha256(data).hexdigest(), "seed": seed, "val_mape": 0.5})
    manifest = {"format": 1, "name": name, "step": "step3", "dataset": "Dataset1", "members": members}
    manifest.update(manifest_fields)
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def tar_gz(path: Path, entries: list[tuple[str, bytes | None]]) -> Path:
    """A ``.tar.gz`` with the given entries (``None``: a directory), in that order."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def bundle_entries(bundle_dir: Path, name: str = NAME) -> list[tuple[str, bytes | None]]:
    files = sorted(path.name for path in bundle_dir.iterdir())
    return [(name, None), *((f"{name}/{file}", (bundle_dir / file).read_bytes()) for file in files)]


def pinned(archive: Path, name: str = NAME) -> PublishedBundle:
    asset = registry.ReleaseAsset("lab/paraisite", "zoo-t", archive.name, registry.sha256sum(archive), 0)
    asset = registry.ReleaseAsset(asset.repo, asset.tag, asset.file, asset.sha256, archive.stat().st_size)
    return PublishedBundle(name, asset, 2, 0.5, 0.0, "quick", "clean")


@pytest.fixture
def mirror_with(tmp_path):
    """Put an archive at its release path in a mirror of its own; returns (cache, mirror)."""
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"

    def put(archive: Path, published: PublishedBundle) -> tuple[Path, Path]:
        target = mirror / published.asset.key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read_bytes())
        return cache, mirror

    return put


# --- one helper for every path from outside data ---


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../escape.ckpt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("sub/../../x", "'..'"),
        ("a\\b", "backslashes"),
        ("", "non-empty"),
        (".hidden", "allowed"),
        ("ok/", "allowed"),
    ],
)
def test_resolve_inside_refuses_names_that_leave_the_root(tmp_path, name, reason):
    with pytest.raises(UnsafePathError, match=reason):
        resolve_inside(tmp_path, name, what="test name")


def test_resolve_inside_refuses_a_link_out_of_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_inside(root, "out/file", what="test name")
    assert resolve_inside(root, "inside/file", what="test name") == root / "inside" / "file"


# --- manifests ---


@pytest.mark.parametrize("member", ["../outside.ckpt", "/tmp/outside.ckpt", "sub/seed1.ckpt", MANIFEST])
def test_manifest_member_outside_the_bundle_is_refused_and_not_packed(tmp_path, member):
    bundle_dir = make_bundle(tmp_path / "bundle")
    (tmp_path / "outside.ckpt").write_bytes(b"weights of seed 1")
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest["members"][0]["file"] = member
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"member file|differ from manifest\.json"):
        read_bundle(bundle_dir)
    assert main(["zoo", "publish", str(bundle_dir), "--repo", "a/b", "--tag", "t", "-o", str(tmp_path / "o")]) == 1
    assert not (tmp_path / "o").exists()


def test_member_that_is_a_link_is_refused(tmp_path):
    bundle_dir = make_bundle(tmp_path / "bundle")
    (tmp_path / "elsewhere.ckpt").write_bytes(b"weights of seed 1")
    (bundle_dir / "seed1.ckpt").unlink()
    (bundle_dir / "seed1.ckpt").symlink_to(tmp_path / "elsewhere.ckpt")
    with pytest.raises(BundleError, match=r"outside|not a regular file"):
        read_bundle(bundle_dir)


def test_bundle_name_must_be_a_plain_name(tmp_path):
    bundle_dir = make_bundle(tmp_path / "bundle", name="../../escape")
    with pytest.raises(BundleError, match="bundle name"):
        read_bundle(bundle_dir)
    with pytest.raises(UnsafePathError, match="bundle name"):
        installed_bundle_dir("../escape", tmp_path / "cache")


def test_zoo_export_name_cannot_write_outside_the_cache(tmp_path, capsys):
    cache = tmp_path / "cache"
    with registry.configured(cache, registry.mirror_dir()):
        command = ["zoo", "export", str(tmp_path), "--step", "step3", "--dataset", "Dataset1"]
        assert main([*command, "--name", "../../escape", "--install"]) == 1
    assert "bundle name: '../../escape'" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []
    with pytest.raises(BundleError, match="bundle name"):
        export_bundle(tmp_path, "step3", "Dataset1", "a/b", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_install_copies_exactly_the_bundle_files(tmp_path):
    bundle_dir = make_bundle(tmp_path / "bundle")
    (bundle_dir / "notes.txt").write_text("not a member\n")
    installed = install_bundle(bundle_dir, tmp_path / "cache")
    assert sorted(path.name for path in installed.iterdir()) == [MANIFEST, "seed1.ckpt", "seed2.ckpt"]


# --- archives ---


def test_archive_with_an_extra_file_is_refused(tmp_path):
    bundle_dir = make_bundle(tmp_path / "bundle")
    entries = [*bundle_entries(bundle_dir), (f"{NAME}/extra.bin", b"\0" * 1024)]
    archive = tar_gz(tmp_path / "extra.tar.gz", entries)
    with pytest.raises(BundleError, match=r"exactly.*extra: \['ltc-step3-dataset1/extra.bin'\]"):
        extract_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_missing_a_member_or_repeating_one_is_refused(tmp_path):
    bundle_dir = make_bundle(tmp_path / "bundle")
    entries = bundle_entries(bundle_dir)
    with pytest.raises(BundleError, match=r"missing: \['ltc-step3-dataset1/seed2.ckpt'\]"):
        extract_bundle(tar_gz(tmp_path / "missing.tar.gz", entries[:-1]), tmp_path / "out")
    with pytest.raises(BundleError, match="once each"):
        extract_bundle(tar_gz(tmp_path / "twice.tar.gz", [*entries, entries[-1]]), tmp_path / "out")


def test_archive_with_too_many_entries_is_refused_before_unpacking(tmp_path):
    entries = [(NAME, None), *((f"{NAME}/f{index:05d}", b"x") for index in range(MAX_ARCHIVE_ENTRIES + 5))]
    archive = tar_gz(tmp_path / "many.tar.gz", entries)
    with pytest.raises(BundleError, match=f"more than {MAX_ARCHIVE_ENTRIES} entries"):
        extract_bundle(archive, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["many.tar.gz"]


def test_archive_declaring_a_huge_member_is_refused_without_reading_it(tmp_path):
    """A header announcing 600 MiB (no data follows): refused at that header, before any data is read."""
    archive = tmp_path / "huge.tar.gz"
    huge = tarfile.TarInfo(f"{NAME}/huge.bin")
    huge.size = 600 * 1024**2
    top = tarfile.TarInfo(NAME)
    top.type = tarfile.DIRTYPE
    with gzip.open(archive, "wb") as stream:
        stream.write(top.tobuf(tarfile.PAX_FORMAT) + huge.tobuf(tarfile.PAX_FORMAT))
    assert archive.stat().st_size < 1024
    with pytest.raises(BundleError, match="bytes unpacked"):
        extract_bundle(archive, tmp_path / "out")


def test_archive_top_directory_must_be_the_manifest_name(tmp_path):
    bundle_dir = make_bundle(tmp_path / "bundle")
    entries = [(name.replace(NAME, "other-name", 1), data) for name, data in bundle_entries(bundle_dir)]
    with pytest.raises(BundleError, match="differs from the manifest's name"):
        extract_bundle(tar_gz(tmp_path / "renamed.tar.gz", entries), tmp_path / "out")


# --- published bundles: every check on every load ---


def test_bundle_with_another_name_than_pinned_is_refused_every_time(tmp_path, mirror_with):
    archive = archive_bundle(read_bundle(make_bundle(tmp_path / "bundle", name="ltc-step3-dataset2")), tmp_path)
    published = pinned(archive, name=NAME)  # the table pins dataset1's name on dataset2's archive
    cache, mirror = mirror_with(archive, published)
    for _ in range(2):
        with pytest.raises(BundleError, match="holds bundle 'ltc-step3-dataset2', the table pins"):
            fetch_bundle(published, cache=cache, mirror=mirror)
    assert not unpacked_dir(published, cache).exists()


def test_tampered_unpacked_copy_does_not_survive_the_next_load(tmp_path, mirror_with):
    archive = archive_bundle(read_bundle(make_bundle(tmp_path / "bundle")), tmp_path)
    published = pinned(archive)
    cache, mirror = mirror_with(archive, published)
    first = fetch_bundle(published, cache=cache, mirror=mirror)
    expected = {path.name: path.read_bytes() for path in first.root.iterdir()}

    # tamper with the unpacked copy: a member, the manifest (rehashed to match), an extra file
    (first.root / "seed1.ckpt").write_bytes(b"other weights")
    manifest = json.loads((first.root / MANIFEST).read_text())
    manifest["members"][0]["sha256"] = hashlib.sha256(b"other weights").hexdigest()
    (first.root / MANIFEST).write_text(json.dumps(manifest))
    (first.root / "extra.py").write_text("print('hello')\n")

    again = fetch_bundle(published, cache=cache, mirror=mirror)
    assert {path.name: path.read_bytes() for path in again.root.iterdir()} == expected


def test_tampered_cached_archive_is_fetched_again(tmp_path, mirror_with):
    archive = archive_bundle(read_bundle(make_bundle(tmp_path / "bundle")), tmp_path)
    published = pinned(archive)
    cache, mirror = mirror_with(archive, published)
    fetch_bundle(published, cache=cache, mirror=mirror)
    cached = cache / published.asset.key
    cached.write_bytes(b"not the archive")
    fetch_bundle(published, cache=cache, mirror=mirror)
    assert registry.sha256sum(cached) == published.asset.sha256


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("repo", "../../outside", "repo: '../../outside'"),
        ("repo", "owner", "must be 2 plain name"),
        ("tag", "../..", "tag: '../..'"),
        ("file", "/etc/passwd.tar.gz", "file: '/etc/passwd.tar.gz'"),
        ("file", "x.tar.gz/../../y.tar.gz", "file: 'x.tar.gz/../../y.tar.gz'"),
        ("name", "../escape", "name: '../escape'"),
        ("sha256", "abc", "is not 64 lowercase hex digits"),
    ],
)
def test_site_table_values_that_would_leave_the_cache_are_refused(
    tmp_path, monkeypatch, capsys, column, value, message
):
    row = dict(
        zip(
            TABLE_COLUMNS,
            [NAME, "lab/paraisite", "zoo-t", f"{NAME}.tar.gz", "0" * 64, "10", "2", "0.5", "0.1", "quick", "clean"],
            strict=True,
        )
    )
    row[column] = value
    text = "\t".join(TABLE_COLUMNS) + "\n" + "\t".join(row.values()) + "\n"
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        read_table(text)
    table = tmp_path / "site.tsv"
    table.write_text(text)
    monkeypatch.setenv(SITE_TABLE_ENV, str(table))
    assert main(["zoo", "list"]) == 0  # the bad row affects only the model it names (tests/test_paths_tables.py)
    if column != "name":  # a row naming no valid model affects none
        with pytest.raises(ValueError, match=f"{SITE_TABLE_ENV}={table}, line 2: .*" + message.replace("(", r"\(")):
            load_predictor(NAME)
