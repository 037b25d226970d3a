"""Card data beside the shipped weights: ``card.json`` (and ``planned.json``) read by ``zoo list`` and ``zoo card``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from paraisite.cli.main import main
from paraisite.data import registry
from paraisite.zoo import shipped as shipped_module
from paraisite.zoo.cards import CARD, CardError, card_data, planned_models, read_card, write_card
from paraisite.zoo.catalog import catalog, get_entry, model_card
from paraisite.zoo.shipped import SHIPPED_DIR, shipped_manifests

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "experiments" / "ltc-mf" / "shipped_on_measured.json"
NEW = "ltc-step2-skutterudites"


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    """A shipped-models folder of its own, holding a copy of ltc-step2-dataset2's manifest and card."""
    folder = tmp_path / "models"
    (folder / "ltc-step2-dataset2").mkdir(parents=True)
    for file in ("manifest.json", CARD):
        shutil.copy(SHIPPED_DIR / "ltc-step2-dataset2" / file, folder / "ltc-step2-dataset2")
    monkeypatch.setattr(shipped_module, "SHIPPED_DIR", folder)
    return folder


def _new_model(models: Path, evidence: Path) -> Path:
    """A model no code knows: a manifest of a new name and dataset, and its card written from evidence."""
    manifest = json.loads((SHIPPED_DIR / "ltc-step2-dataset2" / "manifest.json").read_text())
    manifest.pop("card_sha256")
    manifest.update(name=NEW, dataset="Skutterudites")
    manifest["figures"].update(val_mape_mean=0.1234, val_mape_std=0.0456)
    directory = models / NEW
    directory.mkdir()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    figures = {"count": 40, "mae_log10": 0.6, "mean_signed_log10": 0.5, "within_x2": 0.25, "constant_mae_log10": 0.4}
    evidence.write_text(json.dumps({NEW: {"filled": figures}}))
    card = card_data(
        manifest,
        "filled skutterudites computed ab initio",
        "empty cages",
        "Skutterudites: 50 filled CoSb3 cages, ab-initio LTC",
        "Skutterudites (S50)",
        measured=evidence,
        measured_subset="filled",
    )
    return write_card(directory, card)


def test_a_model_folder_with_a_card_and_no_code_entry_is_listed_and_carded(models, tmp_path, capsys):
    card_path = _new_model(models, tmp_path / "evidence.json")
    pinned = json.loads((models / NEW / "manifest.json").read_text())["card_sha256"]
    assert pinned == registry.sha256sum(card_path)
    assert main(["zoo", "list"]) == 0
    assert NEW in capsys.readouterr().out
    entry = catalog()[NEW]
    assert (entry.step, entry.dataset) == ("step2", "Skutterudites")
    assert entry.data_reference == "Skutterudites (S50)"
    assert entry.published_error == "MAPE 0.123 (0.046), 9 seeds, full profile, clean protocol"
    assert main(["zoo", "card", NEW]) == 0
    card = capsys.readouterr().out
    for text in (
        "**Use it for.** filled skutterudites computed ab initio.",
        "**Not for.** empty cages.",
        "Skutterudites: 50 filled CoSb3 cages, ab-initio LTC",
        # 10 ** 0.5 = 3.16; MAE 0.6 above the constant's 0.4; 25 % within a factor 2
        "On 40 measured conductivities",
        "3.2x high (+0.50 dex): MAE 0.60 dex, worse than a constant's 0.40; 25 % within a factor 2",
        "Validation MAPE 0.123 (0.046)",
    ):
        assert text in card.replace("\n", " ")


def test_an_edited_card_is_refused_naming_the_file(models, capsys):
    card = models / "ltc-step2-dataset2" / CARD
    data = json.loads(card.read_text())
    data["use_for"] = "every crystal"
    card.write_text(json.dumps(data))
    for command in (["zoo", "card", "ltc-step2-dataset2"], ["zoo", "list"]):
        assert main(command) == 1
        error = capsys.readouterr().err.replace("\n", "")
        assert str(card) in error
        assert "edited since it was written" in error


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda card: "{not json", "not JSON"),
        (lambda card: json.dumps({**card, "format": 2}), "card format 2"),
        (lambda card: json.dumps({**card, "use_for": None}), "use_for is None, not a text"),
        (
            lambda card: json.dumps(
                {**card, "figures": {"validation": {**card["figures"]["validation"], "mape_mean": "0.3"}}}
            ),
            "figures.validation.mape_mean is '0.3', not a float",
        ),
        (lambda card: json.dumps({**card, "name": "ltc-step2-mix"}), "describes 'ltc-step2-mix'"),
    ],
)
def test_a_malformed_card_is_one_clear_error_naming_the_file(models, capsys, edit, problem):
    """Even re-pinned in its manifest (so not merely 'edited'), a malformed card is refused with its problem."""
    directory = models / "ltc-step2-dataset2"
    card = directory / CARD
    card.write_text(edit(json.loads(card.read_text())))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["card_sha256"] = registry.sha256sum(card)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CardError, match=problem):
        read_card(directory, manifest)
    assert main(["zoo", "card", "ltc-step2-dataset2"]) == 1
    error = capsys.readouterr().err.replace("\n", "")
    assert str(card) in error


def test_a_pinned_card_that_is_missing_or_an_unpinned_one_is_refused(models):
    directory = models / "ltc-step2-dataset2"
    manifest = shipped_manifests()["ltc-step2-dataset2"]
    (directory / CARD).unlink()
    with pytest.raises(CardError, match=f"{directory / CARD}: missing, but .* pins a card"):
        read_card(directory, manifest)
    assert read_card(directory, {**manifest, "card_sha256": None}) is None  # no card, none pinned: no card data
    shutil.copy(SHIPPED_DIR / "ltc-step2-dataset2" / CARD, directory)
    with pytest.raises(CardError, match="pins no card"):
        read_card(directory, {key: value for key, value in manifest.items() if key != "card_sha256"})


def test_evidence_without_the_model_is_a_clear_error(tmp_path):
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps({"other-model": {}}))
    manifest = shipped_manifests()["ltc-step2-mix"]
    with pytest.raises(CardError, match=f"{evidence}: no 'not_dataset1_compounds' figures of ltc-step2-mix"):
        card_data(manifest, "x", measured=evidence)


def test_shipped_cards_carry_their_manifest_and_evidence_figures():
    """Each shipped card's figures are its manifest's and those of experiments/ltc-mf/shipped_on_measured.json."""
    evidence = json.loads(MEASURED.read_text())
    manifests = shipped_manifests()
    assert sorted(manifests) == ["ltc-mf", "ltc-step2-aflow", "ltc-step2-dataset2", "ltc-step2-mix"]
    for name, manifest in manifests.items():
        if name == "ltc-mf":  # judged out of family: test_ltc_mf_card_quotes_its_cross_validation
            continue
        card = read_card(SHIPPED_DIR / name, manifest)
        assert card is not None
        assert card.validation["mape_mean"] == manifest["figures"]["val_mape_mean"]
        assert card.validation["mape_std"] == manifest["figures"]["val_mape_std"]
        assert card.measured is not None
        expected = evidence[name]["not_dataset1_compounds"]
        assert card.measured["rows"] == expected["count"] == 131
        for key in ("mae_log10", "mean_signed_log10", "within_x2", "constant_mae_log10"):
            assert card.measured[key] == expected[key]
        assert "shipped_on_measured.json" in card.sources["measured"]
        assert card.use_for in model_card(get_entry(name))
    # The figures the cards quoted before they were data (commit 2bf7b66): MIX 2.6x high, MAE 0.52 dex, AFLOW 2.1x low
    assert "2.6x high (+0.42 dex): MAE 0.52 dex, worse than a constant's 0.40" in model_card(get_entry("ltc-step2-mix"))
    assert "2.1x low (-0.33 dex): MAE 0.45 dex" in model_card(get_entry("ltc-step2-aflow"))
    # removed from the package for ltc-mf (size budget): its card says so and what to use instead
    assert "Not shipped: removed from the package when ltc-mf shipped" in model_card(get_entry("ltc-step2-dataset1"))
    assert "use `--model ltc-mf`" in model_card(get_entry("ltc-step2-dataset1"))


def test_ltc_mf_card_quotes_its_cross_validation():
    """ltc-mf's card figures are those build_tables.py wrote from the grouped CV (experiments/ltc-mf/cv-l1)."""
    cv = Path(__file__).resolve().parents[1] / "experiments" / "ltc-mf" / "cv-l1"
    evidence = json.loads((cv / "evidence.json").read_text())["ltc-mf"]["out_of_family"]
    intervals = json.loads((cv / "intervals.json").read_text())
    manifest = shipped_manifests()["ltc-mf"]
    card = read_card(SHIPPED_DIR / "ltc-mf", manifest)
    assert card is not None
    assert card.measured is not None
    assert card.measured["rows"] == evidence["count"] == 155
    assert card.measured["mae_log10"] == evidence["mae_log10"]
    assert manifest["calibration"]["by_fidelity"] == intervals["by_fidelity"]
    assert manifest["domain_flag"] is False
    assert all(x["ratio"] < 2 or x["flagged_out"] == 0 for x in intervals["domain_signals"].values())
    text = model_card(get_entry("ltc-mf"))
    assert f"MAE {evidence['mae_log10']:.2f} dex, against a constant's {evidence['constant_mae_log10']:.2f}" in text
    assert "No `in_domain` column" in text


def test_a_malformed_planned_file_names_itself(tmp_path):
    planned = tmp_path / "planned.json"
    planned.write_text(json.dumps({"models": {"ltc-step3-mix": {"figures": {}}}}))
    with pytest.raises(CardError, match=f"{planned}: malformed planned-models file.*origin"):
        planned_models(planned)
    planned.write_text(json.dumps({"models": {"x": {"origin": "step3/MIX", "figures": {"full": {"mape_mean": 1}}}}}))
    with pytest.raises(CardError, match=f"{planned}: figures.x.full.mape_std is None"):
        planned_models(planned)
