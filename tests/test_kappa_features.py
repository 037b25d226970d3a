"""`+features=kappa_bte`: log10 BTE kappa of `paraisite kappa` as a head input, trained, reloaded and predicted."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from paraisite.cli.main import main
from paraisite.data.inputs import read_input_structure
from paraisite.kappa.features import KAPPA_FEATURE_NAMES, KappaFeatureComputer, KappaFeatureSettings
from paraisite.kappa.settings import load_settings
from paraisite.models.regressor import LTCRegressor
from paraisite.training.builders import build_datamodule
from paraisite.training.checks import ConfigValueError, check_run_config
from paraisite.training.train import train
from tests.helpers import FAST, compose_train, predict_with_cli, write_validation_poscars

#: A protocol of seconds per 2-atom crystal (fc3 and fc2 in the conventional cell, whatever its size): wiring only,
#: its kappa is far from converged (some crystals' come out inf or 1e37, and are unknown inputs).
TINY_SET = ["fc3_min_length=3", "fc2_min_length=3", "mesh_length=20"]
TINY = [
    "+features=kappa_bte",
    "model.physics.protocol=quick",
    *(f"+model.physics.set.{item}" for item in TINY_SET),
    "model.physics.max_primitive_atoms=2",
]


def silicon() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]]).get_primitive_structure()


@pytest.fixture(scope="module")
def kappa_run(tmp_path_factory):
    """A tiny run with BTE kappa features: its folder, config and result."""
    run_dir = tmp_path_factory.mktemp("kappa-bte") / "run"
    cfg = compose_train(run_dir, "data=dataset1", "max_per_source=8", *FAST, *TINY)
    return run_dir, cfg, train(cfg)


def test_kappa_features_train_reload_and_predict(tmp_path, kappa_run):
    run_dir, cfg, result = kappa_run
    assert result["status"] == "completed"
    model = LTCRegressor.load_from_checkpoint(result["best_checkpoint"], map_location="cpu")
    physics = model.hparams.physics
    assert physics["kind"] == "kappa_bte"
    assert physics["names"] == list(KAPPA_FEATURE_NAMES)
    # the protocol is stored resolved: a later change of conf/kappa/quick.yaml cannot change the model's inputs
    assert physics["settings"] == load_settings("quick", TINY_SET).to_dict()
    assert model.head.layers[0].in_features == model.backbone.out_dim + 1
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    expected = np.concatenate([model.predict_tc(*batch[:3]).detach().numpy() for batch in datamodule.val_dataloader()])
    paths = write_validation_poscars(datamodule, tmp_path)
    rows = predict_with_cli(run_dir, paths, tmp_path / "ltc.csv")  # features computed again from the files
    np.testing.assert_allclose([float(row["tc_W_per_mK"]) for row in rows], expected, rtol=1e-3)
    # crystals over max_primitive_atoms=2 get no BTE kappa, and non-physical values are unknown too: named in
    # imputed_features, and only they
    computer = KappaFeatureComputer(KappaFeatureSettings.from_dict(physics))
    for path, row in zip(paths, rows, strict=True):
        structure = read_input_structure(path)
        unknown = len(structure.get_primitive_structure()) > 2 or np.isnan(computer.features(structure)).all()
        assert row["imputed_features"] == (KAPPA_FEATURE_NAMES[0] if unknown else ""), path


def test_the_feature_is_the_commands_kappa_read_back_from_the_shared_cache(tmp_path):
    cif, output, cache = tmp_path / "Si.cif", tmp_path / "kappa.csv", tmp_path / "cache"
    silicon().to(filename=str(cif))
    set_args = [arg for item in TINY_SET for arg in ("--set", item)]
    command = ["kappa", str(cif), "-o", str(output), "--protocol", "quick", *set_args]
    assert main([*command, "--cache-dir", str(cache)]) == 0
    with open(output, newline="") as stream:
        kappa = float(next(csv.DictReader(stream))["kappa_W_per_mK"])
    entries = sorted(cache.iterdir())
    settings = KappaFeatureSettings.from_dict({"protocol": "quick", "set": TINY_SET, "max_primitive_atoms": 2})
    computer = KappaFeatureComputer(settings, cache_dir=cache)
    feature = computer.features(read_input_structure(cif), "Si")
    assert feature.shape == (1,)
    assert math.isclose(feature[0], math.log10(kappa), rel_tol=1e-12)
    assert sorted(cache.iterdir()) == entries  # read back, nothing computed again
    assert computer._runner is not None
    assert computer._runner._calculator is None


def test_a_crystal_over_the_atom_bound_is_unknown_without_any_work(tmp_path, caplog):
    settings = KappaFeatureSettings.from_dict({"protocol": "quick", "max_primitive_atoms": 1})
    computer = KappaFeatureComputer(settings, cache_dir=tmp_path)
    with caplog.at_level("INFO"):
        assert np.isnan(computer.features(silicon(), "two-atom Si")).all()
    assert "two-atom Si: 2 atoms in the primitive cell > model.physics.max_primitive_atoms=1" in caplog.text
    assert computer._runner is None
    assert not any(tmp_path.iterdir())
    # the default protocol's 10 A rule gives silicon's 8-atom conventional cell 2x2x2: 64 atoms
    computer = KappaFeatureComputer(KappaFeatureSettings.from_dict({"max_fc3_atoms": 63}), cache_dir=tmp_path)
    with caplog.at_level("INFO"):
        assert np.isnan(computer.features(silicon(), "Si")).all()
    assert "Si: its fc3 supercell would have 64 atoms > model.physics.max_fc3_atoms=63" in caplog.text
    assert computer._runner is None


def test_a_non_physical_kappa_is_an_unknown_input(tmp_path, caplog):
    # 8-atom supercells for fc3 and fc2 give LiCl imaginary modes and an RTA kappa of about 1e38 W/mK (or inf)
    settings = KappaFeatureSettings.from_dict({"protocol": "quick", "set": TINY_SET})
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with caplog.at_level("WARNING"):
        feature = KappaFeatureComputer(settings, cache_dir=tmp_path).features(rocksalt.get_primitive_structure(), "x")
    assert np.isnan(feature).all()
    outside = r"x: BTE kappa (inf|[0-9.]+e\+[0-9]+) W/mK is outside 0.001-100000; the input is unknown"
    assert re.search(outside, caplog.text)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.physics.temperature=500", "temperature=500 K is not one of the protocol's temperatures [300.0]"),
        ("+model.physics.protocl=quick", "model.physics.protocl: not a setting of +features=kappa_bte"),
        ("+model.physics.set.mesh_lenght=10", "unknown kappa setting(s) mesh_lenght"),
        ("model.physics.potential=mace", "unknown potential 'mace'"),
        ("model.physics.kind=phonons", "model.physics.kind='phonons' is not one of eos, kappa_bte"),
        ("model.physics.max_primitive_atoms=0", "max_primitive_atoms=0: a whole number >= 1"),
        ("model.physics.max_fc3_atoms=-5", "max_fc3_atoms=-5: a whole number >= 1"),
    ],
)
def test_bad_kappa_feature_settings_are_refused_before_any_data(tmp_path, override, message):
    cfg = compose_train(tmp_path, "+features=kappa_bte", override)
    with pytest.raises(ConfigValueError, match="invalid config") as error:
        check_run_config(cfg)
    assert message in str(error.value)


def test_a_changed_temperature_list_is_accepted_with_its_temperature(tmp_path):
    cfg = compose_train(tmp_path, "+features=kappa_bte", "+model.physics.set.temperatures=[300,600]",
                        "model.physics.temperature=600")  # fmt: skip
    check_run_config(cfg)
    assert KappaFeatureSettings.from_dict(cfg.model.physics).settings.temperatures == (300.0, 600.0)
    settings = KappaFeatureSettings.from_dict({"set": ["temperatures=[300,600]"], "temperature": 600})
    assert settings.temperature == 600.0
    assert settings.settings.temperatures == (300.0, 600.0)
