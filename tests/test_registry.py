"""Registry: pinned URLs, sha256 verification, mirror mapping, CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from paraisite.cli.main import main as cli
from paraisite.data import registry

ATOM_INIT = ("txie-93/cgcnn", "data/sample-regression/atom_init.json")


@pytest.fixture
def tiny_mirror(tmp_path: Path, mirror_dir: Path) -> Path:
    """A mirror holding one real upstream file."""
    entry = registry.get(*ATOM_INIT)
    target = entry.mirror_path(tmp_path / "mirror")
    target.parent.mkdir(parents=True)
    shutil.copyfile(entry.mirror_path(mirror_dir), target)
    return tmp_path / "mirror"


def test_every_registry_entry_has_a_pinned_url_and_hash():
    # + the 4 files each of TensorNet- and M3GNet-MatPES-PBE-v2025.1-PES, + the 2 measured-LTC compilations
    assert len(registry.REGISTRY) == 5627 + 4 + 4 + 2
    assert len(registry.select("liudakl/ParAIsite", "main/src/aflow_cif/*.cif")) == 5578
    for entry in registry.REGISTRY.values():
        assert entry.url == f"https://raw.githubusercontent.com/{entry.repo}/{entry.commit}/{entry.path}"
        assert len(entry.sha256) == 64
        assert entry.size > 0


def test_mirror_layout_maps_url_prefix(tmp_path: Path):
    entry = registry.get(*ATOM_INIT)
    expected = tmp_path / "txie-93" / "cgcnn" / "data" / "sample-regression" / "atom_init.json"
    assert entry.mirror_path(tmp_path) == expected


def test_good_file_is_fetched_verified_and_cached(tmp_path: Path, tiny_mirror: Path):
    path = registry.fetch(*ATOM_INIT, cache=tmp_path / "cache", mirror=tiny_mirror)
    assert path == tmp_path / "cache" / "txie-93/cgcnn/data/sample-regression/atom_init.json"
    assert registry.sha256sum(path) == registry.get(*ATOM_INIT).sha256
    # The cached copy is used without the mirror.
    assert registry.fetch(*ATOM_INIT, cache=tmp_path / "cache", mirror=tmp_path / "empty") == path


def test_corrupted_file_is_refused_with_both_hashes(tmp_path: Path, tiny_mirror: Path):
    entry = registry.get(*ATOM_INIT)
    source = entry.mirror_path(tiny_mirror)
    source.write_bytes(source.read_bytes() + b" ")
    bad_hash = registry.sha256sum(source)
    with pytest.raises(registry.ChecksumError) as error:
        registry.fetch(*ATOM_INIT, cache=tmp_path / "cache", mirror=tiny_mirror)
    message = str(error.value)
    assert entry.sha256 in message
    assert bad_hash in message
    assert str(source) in message
    assert not (tmp_path / "cache" / entry.key).exists()


def test_corrupted_cache_copy_is_replaced(tmp_path: Path, tiny_mirror: Path):
    path = registry.fetch(*ATOM_INIT, cache=tmp_path / "cache", mirror=tiny_mirror)
    path.write_text("tampered")
    assert dict(registry.cached_status([registry.get(*ATOM_INIT)], tmp_path / "cache"))
    states = [state for _, state in registry.cached_status([registry.get(*ATOM_INIT)], tmp_path / "cache")]
    assert states == ["corrupt"]
    fixed = registry.fetch(*ATOM_INIT, cache=tmp_path / "cache", mirror=tiny_mirror)
    assert registry.sha256sum(fixed) == registry.get(*ATOM_INIT).sha256


def test_missing_file_names_url_and_mirror_path(tmp_path: Path, tiny_mirror: Path):
    entry = registry.get("txie-93/cgcnn", "pre-trained/band-gap.pth.tar")
    with pytest.raises(registry.MissingFileError) as error:
        registry.fetch_entry(entry, cache=tmp_path / "cache", mirror=tiny_mirror)
    assert entry.url in str(error.value)
    assert str(entry.mirror_path(tiny_mirror)) in str(error.value)


def test_environment_variables_set_cache_and_mirror(tmp_path: Path, tiny_mirror: Path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "envcache"))
    monkeypatch.setenv(registry.MIRROR_ENV, str(tiny_mirror))
    assert registry.fetch(*ATOM_INIT).is_relative_to(tmp_path / "envcache")


def test_unknown_names_list_valid_ones():
    with pytest.raises(KeyError, match="dataset1"):
        registry.group_files("nope")
    with pytest.raises(KeyError, match=r"registry\.tsv"):
        registry.get("txie-93/cgcnn", "no/such/file")


def test_cli_fetch_and_list(tmp_path: Path, mirror_dir: Path, capsys):
    cache = str(tmp_path / "cache")
    assert cli(["data", "--cache", cache, "--mirror", str(mirror_dir), "fetch", "dataset1", "megnet-eform"]) == 0
    assert cli(["data", "--cache", cache, "list"]) == 0
    listing = capsys.readouterr().out
    assert "dataset1" in listing
    assert "megnet-eform" in listing
    # A corrupt cached file makes `list` fail.
    next((tmp_path / "cache").rglob("Dataset1.pkl")).write_bytes(b"x")
    assert cli(["data", "--cache", cache, "list"]) == 1


def test_cli_fetch_error_is_one_clear_line(tmp_path: Path, capsys):
    code = cli(["data", "--cache", str(tmp_path / "c"), "--mirror", str(tmp_path / "none"), "fetch", "dataset1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "not in the mirror: no file" in err
    assert "for https://raw.githubusercontent.com/liudakl/ParAIsite/" in err
    assert "Set PARAISITE_MIRROR to a folder laid out as" in err
