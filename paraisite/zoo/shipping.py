"""LTC ensembles shipped inside the package (``paraisite/zoo/models/<name>/``), and the evidence in their cards.

A shipped ensemble is an ordinary bundle (:mod:`paraisite.zoo.bundle`: ``manifest.json`` with each member's
sha256, verified on every load) whose members are *compact* (:func:`quantise_state_dict`; a third of the float32
size): the MLP head's matrices in int8 with one scale per 32 input columns, the backbone in float16, plus the
hyper-parameters and the applicability reference (latents in float16).
:func:`paraisite.models.regressor.load_ltc_checkpoint` restores float32 weights. The manifest also carries what was
measured when the ensemble was packed (:func:`ship_ensemble`):

- ``figures``: each member's validation MAPE with float32 and with the stored weights (their change);
- ``calibration``: the conformal interval quantiles (:mod:`paraisite.evaluation.uncertainty`);
- ``uncertainty``: spread-error correlation and interval coverage before/after calibration, on the members'
  own validation rows and on datasets no member trained on;
- ``domain``: the error of rows flagged in and out of domain on those held-out rows.
"""

from __future__ import annotations

import io
import json
import logging
import lzma
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pymatgen.core import Composition

from paraisite.checkpoints import INT8_KEY, load_checkpoint
from paraisite.data import registry
from paraisite.data.cache import atomic_write
from paraisite.evaluation.applicability import APPLICABILITY_KEY
from paraisite.evaluation.intervals import read_calibration
from paraisite.evaluation.uncertainty import (
    HeldOutRows,
    fit_calibration,
    from_log,
    to_log,
    uncertainty_report,
)
from paraisite.safety import check_relative_name
from paraisite.zoo.bundle import (
    INFERENCE_KEYS,
    MANIFEST,
    BundleError,
    checked_runs,
    manifest_head,
)
from paraisite.zoo.files import DEFAULT_MAX_PERCENTILE, pin_manifest
from paraisite.zoo.predictors import LTCPredictor, load_checkpoints
from paraisite.zoo.shipped import SHIPPED_DIR, shipped_bundle_dir

log = logging.getLogger(__name__)

#: Weight tensors with at least this many elements (and 2 dimensions) are stored as int8.
MIN_QUANTISED = 1024
#: Input columns sharing one int8 scale.
GROUP_SIZE = 32
#: Tensors stored as int8: the MLP head (its int8 weights change a member's validation MAPE by < 0.0005; int8 MEGNet
#: weights changed a Dataset1 member's by up to 0.0055, so the backbone is stored as float16: < 0.0005 too).
INT8_PREFIXES = ("head.",)
#: Out of family, ``in_domain`` is written only if a signal it uses flags rows with this many times the others' error.
DOMAIN_MIN_RATIO = 2.0
#: The domain signals (``build_tables.py`` names) that ``in_domain`` is made of.
DOMAIN_FLAG_SIGNALS = ("unseen element", "latent kNN percentile")
#: In-domain rule evaluated for the card: no unseen element and latent percentile at most this (the scan default).
DEFAULT_DOMAIN_PERCENTILE = DEFAULT_MAX_PERCENTILE


def quantise_state_dict(
    state_dict: dict[str, torch.Tensor], int8_prefixes: Sequence[str] = INT8_PREFIXES
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Compact weights: int8 matrices under ``int8_prefixes``, other large tensors float16, small ones float32.

    An int8 matrix is cut, row by row, into groups of :data:`GROUP_SIZE` input columns; a group is stored as
    ``round(w / scale)`` in [-127, 127] with ``scale = max |w| / 127`` over the group (symmetric, round to nearest),
    so ``q * scale`` differs from ``w`` by at most half a step of its group. Tensors with fewer than
    :data:`MIN_QUANTISED` elements (biases, target statistics) stay float32.

    Returns ``(tensors, {name: {"q": int8 [R, C], "scale": float32 [R, ceil(C / GROUP_SIZE)], "group": GROUP_SIZE}})``.
    """
    kept, quantised = {}, {}
    for name, tensor in state_dict.items():
        weights = tensor.detach().cpu()
        large = weights.is_floating_point() and weights.numel() >= MIN_QUANTISED
        if large and weights.ndim == 2 and name.startswith(tuple(int8_prefixes)):
            weights = weights.float()
            rows, columns = weights.shape
            groups = -(-columns // GROUP_SIZE)
            padded = torch.nn.functional.pad(weights, (0, groups * GROUP_SIZE - columns)).reshape(rows, groups, -1)
            scale = padded.abs().amax(dim=2) / 127.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.clamp(torch.round(padded / scale[:, :, None]), -127, 127).to(torch.int8)
            quantised[name] = {"q": q.reshape(rows, -1)[:, :columns].contiguous(), "scale": scale, "group": GROUP_SIZE}
        elif large:
            kept[name] = weights.half()
        else:
            kept[name] = weights.float() if weights.is_floating_point() else weights
    return kept, quantised


def write_compact_member(source: Path, target: Path) -> None:
    """A training checkpoint as a compact shipped member (int8 head, float16 backbone and applicability latents).

    A ``target`` ending in ``.xz`` is xz-compressed (about 10 % smaller than the plain file).
    """
    checkpoint = load_checkpoint(source)
    compact = {  # the paraisite_* entries too (fidelities, distorted sources), as write_inference_checkpoint keeps
        key: value
        for key, value in checkpoint.items()
        if (key in INFERENCE_KEYS or key.startswith("paraisite_")) and key != "state_dict"
    }
    compact["state_dict"], compact[INT8_KEY] = quantise_state_dict(checkpoint["state_dict"])
    reference = checkpoint.get(APPLICABILITY_KEY)
    if reference is not None:
        reference = dict(reference)
        if reference.get("latents") is not None:
            reference["latents"] = reference["latents"].half()
        compact[APPLICABILITY_KEY] = reference
    if target.suffix == ".xz":
        buffer = io.BytesIO()
        torch.save(compact, buffer)
        packed = lzma.compress(buffer.getvalue(), format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
        atomic_write(target, lambda tmp: tmp.write_bytes(packed))
    else:
        atomic_write(target, lambda tmp: torch.save(compact, tmp))


def member_splits(run_dirs: Sequence[Path]) -> list[tuple[set[str], set[str]]]:
    """``source:id`` of each run's training and validation crystals (its config's split, rebuilt from its seed)."""
    splits = []
    for run_dir in run_dirs:
        config = run_dir / "config_resolved.yaml"
        if not config.is_file():
            raise BundleError(f"{run_dir}: no config_resolved.yaml, so its training split cannot be rebuilt")
        cfg = OmegaConf.load(config)
        datamodule = instantiate(cfg.data)
        datamodule.setup()
        splits.append(
            (
                {f"{s.source}:{s.id}" for s in datamodule.train_set.samples},
                {f"{s.source}:{s.id}" for s in datamodule.val_set.samples},
            )
        )
    return splits


def held_out_rows(
    predictor: LTCPredictor,
    name: str,
    sources: Sequence[str],
    trained: Sequence[set[str]],
    batch_size: int = 64,
) -> HeldOutRows:
    """Members' predictions on every usable crystal of ``sources``; ``trained`` marks what each member saw."""
    from paraisite.data.graphs import load_graph_set  # matgl: only when packing, not when listing the zoo
    from paraisite.data.sources import source_spec

    builder = predictor.builder
    fidelity = predictor.fidelity
    ids, true_tc, member_tc, percentiles, unseen = [], [], [], [], []
    try:
        for source in sources:
            graph_set = load_graph_set(source, builder)
            if predictor.fidelities is not None:  # a multi-fidelity model predicts each source at its own fidelity
                predictor.use_fidelity(source_spec(source).fidelity)
            for start in range(0, len(graph_set), batch_size):
                stop = min(start + batch_size, len(graph_set))
                prediction = predictor.predict(graph_set.graphs[start:stop])
                assert prediction.member_tc is not None, "an LTCPredictor gives every member's TC"
                member_tc.append(prediction.member_tc)
                if prediction.percentile is not None:
                    percentiles.append(prediction.percentile)
            ids += [f"{source}:{i}" for i in graph_set.ids]
            true_tc.append(graph_set.tc.double().numpy())
            for formula in graph_set.formulas:
                elements = frozenset(element.symbol for element in Composition(formula).elements)
                unseen.append(bool(predictor.unseen_elements(elements)))
    finally:  # the predictor predicts at its own fidelity again, whatever happened
        if fidelity is not None:
            predictor.use_fidelity(fidelity)
    held_out = np.array([[row not in seen for row in ids] for seen in trained])
    return HeldOutRows(
        name,
        ids,
        to_log(np.concatenate(true_tc)),
        to_log(np.concatenate(member_tc, axis=1)),
        held_out,
        np.concatenate(percentiles) if percentiles else None,
        np.array(unseen),
    )


def domain_report(rows: HeldOutRows, max_percentile: float = DEFAULT_DOMAIN_PERCENTILE) -> dict[str, float]:
    """Error of rows in and out of domain (no unseen element and percentile <= ``max_percentile``)."""
    inside = ~rows.unseen
    if rows.percentile is not None:
        inside &= rows.percentile <= max_percentile
    error = rows.abs_error
    report = {
        "max_percentile": max_percentile,
        "rows_in": float(inside.sum()),
        "rows_out": float((~inside).sum()),
        "mape_in": rows.mape(inside),
        "mape_out": rows.mape(~inside),
        "median_abs_error_log10_in": float(np.median(error[inside])) if inside.any() else float("nan"),
        "median_abs_error_log10_out": float(np.median(error[~inside])) if (~inside).any() else float("nan"),
    }
    report["mape_ratio_out_in"] = report["mape_out"] / report["mape_in"] if report["mape_in"] else float("nan")
    return report


def run_sources(run_dir: Path) -> list[str]:
    """The sources a run trained on (its ``config_resolved.yaml``; ``[]`` if it does not say)."""
    config = OmegaConf.load(run_dir / "config_resolved.yaml")
    sources = OmegaConf.select(config, "data.sources")
    return [str(source) for source in sources] if sources else []


def dataset_sources(name: str) -> list[str]:
    """Sources of a dataset config (``MIX`` -> ``dataset1, dataset2``)."""
    from paraisite.config import load_group_option

    return list(load_group_option("data", name.lower()).sources)


def ship_ensemble(
    sweep_dir: str | os.PathLike,
    step: str,
    dataset: str,
    name: str,
    cross_datasets: Iterable[str],
    output: str | os.PathLike | None = None,
    description: str = "",
    evidence: str | os.PathLike | None = None,
    intervals: str | os.PathLike | None = None,
) -> Path:
    """Pack the completed runs of ``step`` on ``dataset`` as a compact shipped ensemble, with measured figures.

    Steps: write compact members; score each member on its own validation split with float32 and with the stored
    weights; fit the interval calibration on the out-of-bag own-validation rows; report coverage there
    (cross-fitted) and on each of ``cross_datasets`` (datasets no member trained on), and the in/out-of-domain
    errors. Returns the manifest path (``output`` defaults to :func:`shipped_bundle_dir`). ``evidence``: a directory
    for the per-row CSVs behind those figures (``<name>--<set>.csv``, e.g. ``...--dataset1-cross-dataset.csv``).

    ``intervals``: a JSON file of intervals calibrated out of family (``experiments/ltc-mf/build_tables.py`` writes
    one from grouped cross-validation: per fidelity, :class:`~paraisite.evaluation.intervals.LogIntervals` with its
    cross-fitted coverage, and the domain signals measured there). They replace the own-validation calibration;
    the ``in_domain`` column is kept only if a signal it uses (unseen elements, latent percentile) flagged rows with
    at least :data:`DOMAIN_MIN_RATIO` times the error of the others (``domain_flag``).
    """
    out_of_family = None if intervals is None else read_out_of_family(Path(intervals))
    check_relative_name(name, what="zoo ship --name", parts=1)  # as `zoo export`: a plain name, never a path
    sweep_dir = Path(sweep_dir)
    runs = checked_runs(sweep_dir, step, dataset)  # the same checks as `zoo export`: seeds unique, one protocol
    target = Path(output) if output is not None else shipped_bundle_dir(name)
    if target.exists() and any(target.iterdir()):
        raise BundleError(f"{target}: exists and is not empty; remove it first")
    target.mkdir(parents=True, exist_ok=True)
    from paraisite.checkpoints import resolve_run_checkpoint

    run_dirs = [run_dir for run_dir, _ in runs]
    sources = [resolve_run_checkpoint(run_dir) for run_dir in run_dirs]
    members: list[dict[str, Any]] = []  # the manifest's member entries (JSON)
    for (_, metrics), source in zip(runs, sources, strict=True):
        file = f"seed{metrics['seed']}.ckpt.xz"
        write_compact_member(source, target / file)
        members.append(
            {
                "file": file,
                "sha256": registry.sha256sum(target / file),
                "seed": int(metrics["seed"]),
                "val_mape": None,
                "source_sha256": registry.sha256sum(source),
            }
        )
    splits = member_splits(run_dirs)
    trained = [train for train, _ in splits]
    full = load_checkpoints(name, sources, ensemble=True)
    compact = load_checkpoints(name, [target / m["file"] for m in members], ensemble=True)
    own_sources = run_sources(run_dirs[0]) or dataset_sources(dataset)
    own_full = held_out_rows(full, f"{dataset} (own validation)", own_sources, trained)
    own = held_out_rows(compact, f"{dataset} (own validation)", own_sources, trained)
    per_member: list[dict[str, Any]] = []
    for index, member in enumerate(members):
        mask = np.array([row in splits[index][1] for row in own.ids])
        mape_full = _member_mape(own_full, index, mask)
        mape_stored = _member_mape(own, index, mask)
        member["val_mape"] = mape_stored
        per_member.append({"seed": member["seed"], "val_mape_float32": mape_full, "val_mape_stored": mape_stored})
    usable = own.usable()
    uncertainty: dict[str, Any] = {}
    calibration = None  # out-of-family intervals, when given, replace the own-validation calibration: not fitted
    if out_of_family is None:
        calibration = fit_calibration(usable)
        if not all(math.isfinite(q) for q in calibration.quantiles.values()):
            raise BundleError(
                f"{sweep_dir}: only {len(usable.ids)} {dataset} crystals are held out from some member; a 95 % "
                "conformal interval needs at least 19"
            )
        uncertainty[usable.name] = uncertainty_report(usable, calibration, own=True)
    domain = {}
    evidence_rows = [usable]
    for other in cross_datasets:
        rows = held_out_rows(compact, f"{other} (cross-dataset)", dataset_sources(other), trained).usable()
        if calibration is not None:
            uncertainty[rows.name] = uncertainty_report(rows, calibration, own=False)
        domain[rows.name] = domain_report(rows)
        evidence_rows.append(rows)
    if evidence is not None:
        Path(evidence).mkdir(parents=True, exist_ok=True)
        for rows in evidence_rows:
            slug = "-".join(rows.name.lower().replace("(", "").replace(")", "").split())
            rows.to_csv(Path(evidence) / f"{name}--{slug}.csv")
    stored = [m["val_mape_stored"] for m in per_member]
    floats = [m["val_mape_float32"] for m in per_member]
    first = runs[0][1]
    manifest = {
        **manifest_head(name, step, dataset, first, epochs=first.get("epochs")),
        "trained_at_revision": first.get("git_revision"),
        "description": description,
        "weights": f"head: int8 matrices, one float32 scale per {GROUP_SIZE} input columns; backbone: float16; "
        "tensors under 1024 elements: float32",
        "figures": {
            "val_mape_mean": float(np.mean(stored)),
            "val_mape_std": float(np.std(stored, ddof=1)) if len(stored) > 1 else 0.0,
            "val_mape_float32_mean": float(np.mean(floats)),
            "max_abs_change": float(np.max(np.abs(np.subtract(stored, floats)))),
            "members": per_member,
        },
        "calibration": calibration.to_dict() if calibration is not None else None,
        "uncertainty": uncertainty,
        "domain": domain,
        "members": members,
    }
    if out_of_family is not None:
        manifest.update(
            calibration=out_of_family["calibration"],
            out_of_family=out_of_family["figures"],
            domain_flag=out_of_family["domain_flag"],
        )
    manifest_path = target / MANIFEST
    atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    if target.resolve().parent == SHIPPED_DIR:  # into the package: pinned there, so an edited manifest is refused
        pin_manifest(manifest_path)
    return manifest_path


def read_out_of_family(path: Path) -> dict[str, Any]:
    """Out-of-family intervals and domain signals (see :func:`ship_ensemble`), checked; errors name the file."""
    try:
        data = json.loads(path.read_text())
        calibration = {"space": data["space"], "by_fidelity": data["by_fidelity"]}
        read_calibration(calibration, str(path))
        signals = dict(data.get("domain_signals") or {})
        ratios = [float(signals[name]["ratio"]) for name in DOMAIN_FLAG_SIGNALS if name in signals]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BundleError(f"{path}: not an out-of-family interval file ({type(error).__name__}: {error})") from None
    coverage = {
        name: entry.get("cross_fitted", {}) | {"rows": entry["rows"]} for name, entry in data["by_fidelity"].items()
    }
    return {
        "calibration": calibration,
        "figures": {"source": path.as_posix(), "intervals": coverage, "domain_signals": signals},
        "domain_flag": any(math.isfinite(r) and r >= DOMAIN_MIN_RATIO for r in ratios),
    }


def _member_mape(rows: HeldOutRows, member: int, mask: np.ndarray) -> float:
    """MAPE of TC of one member on the rows of ``mask`` (its own validation split)."""
    true_tc, pred_tc = from_log(rows.true_y[mask]), from_log(rows.member_y[member, mask])
    return float(np.mean(np.abs(pred_tc - true_tc) / true_tc))
