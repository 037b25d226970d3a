"""Paths and tables from outside: ``zoo ship --name`` stays inside its root; the site table is read as a bounded
regular file, and a bad row is reported with its line and column and affects only the model it names."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from paraisite.cli.main import main
from paraisite.zoo import shipped
from paraisite.zoo.bundle import MANIFEST
from paraisite.zoo.files import MANIFEST_PINS, UnpinnedManifestError, check_pinned_manifest, manifest_pins
from paraisite.zoo.predictors import load_predictor
from paraisite.zoo.published import SITE_TABLE_ENV, TABLE_COLUMNS, published_bundles, site_table_errors
from paraisite.zoo.shipped import SHIPPED_DIR

GOOD = [
    "ltc-step3-dataset2",
    "lab/paraisite",
    "zoo-t",
    "good.tar.gz",
    "0" * 64,
    "10",
    "2",
    "0.5",
    "0.1",
    "quick",
    "clean",
]


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", ".hidden"])
def test_zoo_ship_refuses_a_name_that_is_not_a_plain_name(tmp_path, capsys, name):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    command = ["zoo", "ship", str(sweep), "--step", "step2", "--dataset", "Dataset1", "--name", name]
    assert main([*command, "--evidence", str(tmp_path / "evidence")]) == 1
    assert f"zoo ship --name: {name!r}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


@pytest.mark.parametrize(("make", "kind"), [("fifo", "a FIFO"), ("device", "a character device")])
def test_a_site_table_that_is_not_a_regular_file_is_refused_without_being_opened(tmp_path, monkeypatch, make, kind):
    if make == "fifo":
        table = tmp_path / "site.tsv"
        os.mkfifo(table)  # opening it for reading would block until a writer comes
    else:
        table = "/dev/zero"  # reading it would never end
    monkeypatch.setenv(SITE_TABLE_ENV, str(table))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"not a regular file \\({kind}\\)"):
        published_bundles()
    assert time.perf_counter() - start < 5


def test_an_oversized_site_table_is_refused(tmp_path, monkeypatch):
    table = tmp_path / "site.tsv"
    table.write_text("\t".join(TABLE_COLUMNS) + "\n" + "#" * 2_000_000 + "\n")
    monkeypatch.setenv(SITE_TABLE_ENV, str(table))
    with pytest.raises(ValueError, match="more than the 1048576-byte limit for a site table"):
        published_bundles()


def test_a_bad_row_names_its_line_and_column_and_affects_only_its_model(tmp_path, monkeypatch, capsys):
    bad = [*GOOD]
    bad[0], bad[6] = "ltc-step3-dataset1", "two"
    rows = ["# a site table", "\t".join(TABLE_COLUMNS), "\t".join(GOOD), "\t".join(bad)]
    table = tmp_path / "site.tsv"
    table.write_text("\n".join(rows) + "\n")
    monkeypatch.setenv(SITE_TABLE_ENV, str(table))
    expected = f"{SITE_TABLE_ENV}={table}, line 4: column members: 'two' is not an integer"
    assert "ltc-step3-dataset2" in published_bundles()
    assert "ltc-step3-dataset1" not in published_bundles()
    assert site_table_errors() == {"ltc-step3-dataset1": expected}
    with pytest.raises(ValueError, match="line 4: column members") as error:
        load_predictor("ltc-step3-dataset1")
    assert str(error.value) == expected
    assert main(["zoo", "list"]) == 0  # every other model, CGCNN and LTC, is unaffected
    assert main(["zoo", "card", "cgcnn-band-gap"]) == 0


def test_every_shipped_manifest_is_pinned_in_the_package():
    manifests = sorted(SHIPPED_DIR.glob(f"*/{MANIFEST}"))
    assert manifests
    assert sorted(manifest_pins(SHIPPED_DIR)) == [path.parent.name for path in manifests]
    for path in manifests:
        check_pinned_manifest(path)


def test_an_edited_shipped_manifest_is_refused_like_an_edited_member(tmp_path, monkeypatch):
    name = "ltc-step2-dataset2"
    models = tmp_path / "models"
    shutil.copytree(SHIPPED_DIR / name, models / name)
    shutil.copyfile(SHIPPED_DIR / MANIFEST_PINS, models / MANIFEST_PINS)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", models)
    assert load_predictor(name).name == name
    manifest = json.loads((models / name / MANIFEST).read_text())
    manifest["calibration"]["quantiles"]["0.95"] = 0.0001  # an interval collapsed to nothing
    (models / name / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(UnpinnedManifestError, match=f"{models / name / MANIFEST}: sha256 mismatch: .* pins "):
        load_predictor(name)
    (models / MANIFEST_PINS).write_text("")
    with pytest.raises(UnpinnedManifestError, match=f"the shipped ensemble {name} is not pinned"):
        load_predictor(name)
