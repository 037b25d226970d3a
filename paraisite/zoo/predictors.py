"""One interface over the zoo's models: a CGCNN pretrained model, one LTC checkpoint, an LTC ensemble bundle.

A :class:`Predictor` gives a picklable ``graph_builder`` (structure -> graph, run in worker processes) and
``predict(graphs)``: named value columns (units in the names) plus, where the model carries an applicability
reference, kNN latent distances and percentiles (:mod:`paraisite.evaluation.applicability`). :func:`load_predictor`
resolves ``--model``: a zoo name, a ``.ckpt`` file, a run directory or a bundle directory.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from hydra.utils import instantiate
from pymatgen.core import Element, Structure
from torch import nn

from paraisite.checkpoints import CheckpointTrustError, resolve_run_checkpoint
from paraisite.evaluation.applicability import ApplicabilityReference, applicability_from_checkpoint
from paraisite.evaluation.intervals import FidelityIntervals, LogIntervals, read_calibration
from paraisite.evaluation.metrics import DEFAULT_FIDELITY, DISTORTED_SOURCES_KEY, FIDELITIES_KEY
from paraisite.evaluation.uncertainty import Calibration
from paraisite.models.cgcnn import CGCNNPretrained, load_cgcnn_pretrained
from paraisite.zoo.bundle import MANIFEST, Bundle, installed_bundle_dir, is_bundle, read_bundle
from paraisite.zoo.catalog import catalog
from paraisite.zoo.columns import LTC_COLUMNS, LTC_ENSEMBLE_COLUMNS, LTC_INTERVAL_COLUMNS
from paraisite.zoo.files import check_pinned_manifest
from paraisite.zoo.published import fetch_bundle, published_bundles, site_table_errors
from paraisite.zoo.shipped import shipped_bundle_dir

if TYPE_CHECKING:
    from paraisite.models.regressor import LTCRegressor

log = logging.getLogger(__name__)


class ModelUnavailableError(LookupError):
    """A zoo model is neither published nor installed locally; the message says how to get it."""


@dataclass
class Predictions:
    """Model outputs for a batch of graphs.

    Attributes:
        outputs: value column -> ``[B]`` array.
        knn_distance: ``[B]`` latent kNN distances, ``None`` without a latent reference.
        percentile: ``[B]`` percentiles (0-100) of those distances in the training distribution.
        member_tc: ``[M, B]`` TC (W/mK) of each member of an LTC model, ``None`` for other models.
    """

    outputs: dict[str, np.ndarray]
    knn_distance: np.ndarray | None = None
    percentile: np.ndarray | None = None
    member_tc: np.ndarray | None = None


class Predictor(ABC):
    """A model ready to predict structures.

    Attributes:
        name: what ``--model`` resolved to (zoo name or path).
        columns: value columns of :meth:`predict`; the first one ranks a scan.
        training_elements: elements of the training data (``None`` if unknown).
        domain_flag: whether rows get an ``in_domain`` column (off for a model whose out-of-family evidence found
            no signal that it is made of separating good predictions from bad ones).
    """

    name: str
    columns: tuple[str, ...]
    training_elements: frozenset[str] | None
    domain_flag: bool = True

    @abstractmethod
    def graph_builder(self) -> Callable[[Structure, str], Any]:
        """A picklable ``build(structure, name) -> graph``; errors name the structure and the problem."""

    @abstractmethod
    def predict(self, graphs: Sequence[Any]) -> Predictions:
        """Predictions for graphs made by :meth:`graph_builder`."""

    def unseen_elements(self, elements: frozenset[str]) -> list[str] | None:
        """Sorted elements absent from the training data, or ``None`` if the training elements are unknown."""
        return None if self.training_elements is None else sorted(elements - self.training_elements)

    def feature_names(self) -> tuple[str, ...]:
        """Names of the per-crystal features its graphs carry as ``extra_features`` (none: the graph alone)."""
        return ()


class CGCNNPredictor(Predictor):
    """A published CGCNN model: values in the model's units, plus GPa for the log10 moduli; P(metal)."""

    def __init__(self, name: str, pretrained: CGCNNPretrained, columns: tuple[str, ...]) -> None:
        """Wrap ``pretrained``; ``columns`` are its catalog columns (two for log10 models: log10, physical)."""
        self.name = name
        self.pretrained = pretrained
        self.columns = columns
        known = np.flatnonzero(pretrained.featurizer.known_elements)
        self.training_elements = frozenset(Element.from_Z(int(z)).symbol for z in known if z > 0)

    def graph_builder(self) -> Callable[[Structure, str], Any]:
        """The CGCNN featuriser (8 Å, 12 neighbours)."""
        return self.pretrained.featurizer

    def predict(self, graphs: Sequence[Any]) -> Predictions:
        """One batch through :meth:`CGCNNPretrained.predict_graphs`."""
        raw = self.pretrained.predict_graphs(graphs, batch_size=max(1, len(graphs)))
        values = {self.columns[0]: raw}
        if self.pretrained.info.log10:
            values[self.columns[1]] = self.pretrained.to_physical_units(raw)
        return Predictions(values)


@contextmanager
def captured_outputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the output of each call of ``module`` (here: the backbone's, the latent of the applicability reference).

    The backbone's output, not the head's input: a model with physics features (``+features=eos``) feeds the head
    more than the backbone's features, while its reference holds backbone outputs (``collect_reference``).
    """
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: captured.append(output.detach()))
    try:
        yield captured
    finally:
        handle.remove()


class LTCPredictor(Predictor):
    """One LTC checkpoint (column ``tc_W_per_mK``) or an ensemble (mean, population std and std/mean in W/mK).

    Applicability: elements are the union of the members' training elements; kNN distances and percentiles are
    computed per member in its own latent space and averaged. Without a reference in every member, the
    applicability columns stay empty. A ``calibration`` (ensembles) adds the 95 % interval columns
    ``tc_low_W_per_mK``, ``tc_high_W_per_mK`` and ``interval_level``.
    """

    #: Nominal level of the interval columns.
    interval_level = 0.95

    def __init__(
        self,
        name: str,
        models: Sequence[LTCRegressor],
        references: Sequence[ApplicabilityReference | None],
        ensemble: bool,
        calibration: Calibration | LogIntervals | FidelityIntervals | None = None,
        distorted: Sequence[list[str] | None] | None = None,
        fidelities: Sequence[list[str] | None] | None = None,
    ) -> None:
        """Members share one graph-builder config (refused otherwise); ``references`` align with ``models``.

        ``distorted``: per member, the training sources whose labels its checkpoint records as distorted
        (:func:`~paraisite.evaluation.metrics.distorted_sources`), ``None`` where it does not say.
        ``fidelities``: per member, the fidelity names of a multi-fidelity model (all members the same), else None.
        """
        known = {tuple(f) if f else None for f in (fidelities or [None])}
        if len(known) != 1:
            raise ValueError(f"{name}: ensemble members know different fidelities: {sorted(map(str, known))}")
        levels = known.pop()
        #: Fidelity names of a multi-fidelity model (None: one fidelity), and the one predicted (:meth:`use_fidelity`).
        self.fidelities: list[str] | None = list(levels) if levels else None
        self.fidelity: str | None = None
        if self.fidelities is not None:
            self.use_fidelity(DEFAULT_FIDELITY if DEFAULT_FIDELITY in self.fidelities else self.fidelities[-1])
        graphs = [model.hparams.graph for model in models]
        if any(graph != graphs[0] for graph in graphs):
            raise ValueError(f"{name}: ensemble members use different graph settings: {graphs}")
        self.name = name
        warn_distorted_labels(name, models, distorted or [None] * len(models))
        self.models = [model.eval() for model in models]
        self.builder = physics_builder(name, models, instantiate(graphs[0]))
        self.ensemble = ensemble
        self.calibration = calibration if ensemble else None
        self.columns = LTC_ENSEMBLE_COLUMNS if ensemble else LTC_COLUMNS
        if self.calibration is not None:
            self.columns += LTC_INTERVAL_COLUMNS
        present = [ref for ref in references if ref is not None]
        self.references = present if len(present) == len(references) else None
        if self.references is None:
            log.warning("%s: no applicability reference in (every) checkpoint; applicability columns stay empty", name)
            self.training_elements = None
        else:
            self.training_elements = frozenset().union(*(ref.elements for ref in self.references))

    def use_fidelity(self, name: str) -> None:
        """Predict at fidelity ``name`` (a multi-fidelity model); refused for names it does not know."""
        if self.fidelities is None:
            raise ValueError(f"{self.name} is a single-fidelity model: --fidelity applies to multi-fidelity models")
        if name not in self.fidelities:
            raise ValueError(f"{self.name} knows the fidelities {', '.join(self.fidelities)}, not {name!r}")
        self.fidelity = name

    def graph_builder(self) -> Callable[[Structure, str], Any]:
        """The members' graph builder (from their checkpoints' graph config)."""
        return self.builder.build

    def feature_names(self) -> tuple[str, ...]:
        """The physics features of a model trained with them (``+features=eos``), else none."""
        return tuple(getattr(self.builder, "feature_names", ()))

    @torch.no_grad()
    def predict(self, graphs: Sequence[Any]) -> Predictions:
        """TC of each member in W/mK; the members' backbone outputs for the applicability reference."""
        from matgl.graph.data import collate_fn_graph  # matgl (and Lightning) only for LTC models: a faster CGCNN start

        from paraisite.data.graphs import collate_item

        graph, lattice, state_attr, _ = collate_fn_graph([collate_item(stored) for stored in graphs])
        if self.fidelities is not None and self.fidelity is not None:
            from paraisite.data.datamodule import fidelity_state

            state_attr = fidelity_state(self.fidelities.index(self.fidelity), state_attr)
        member_tc, member_latents = [], []
        for model in self.models:
            with captured_outputs(model.backbone) as latents:
                member_tc.append(model.predict_tc(graph, lattice, state_attr).double().cpu().numpy())
            member_latents.append(latents[0].reshape(len(graphs), -1))
        tc = np.stack(member_tc)
        if self.ensemble:
            mean, std = tc.mean(axis=0), tc.std(axis=0)
            values = dict(zip(LTC_ENSEMBLE_COLUMNS, (mean, std, std / mean), strict=True))
            calibration = self.calibration
            if isinstance(calibration, FidelityIntervals):  # one calibration per fidelity: the one predicted
                calibration = calibration.get(self.fidelity or "")
            if calibration is not None:
                low, high = calibration.interval(tc, self.interval_level)
                level = np.full_like(mean, self.interval_level)
                values.update(zip(LTC_INTERVAL_COLUMNS, (low, high, level), strict=True))
        else:
            values = {LTC_COLUMNS[0]: tc[0]}
        if self.references is None or not all(ref.has_latents for ref in self.references):
            return Predictions(values, member_tc=tc)
        distances = [ref.knn_distance(z) for ref, z in zip(self.references, member_latents, strict=True)]
        percentiles = [ref.percentile(d) for ref, d in zip(self.references, distances, strict=True)]
        return Predictions(values, np.mean(distances, axis=0), np.mean(percentiles, axis=0), member_tc=tc)


def warn_distorted_labels(name: str, models: Sequence[LTCRegressor], distorted: Sequence[list[str] | None]) -> None:
    """Warn when a member learned labels on protocol=paper's distorted scale.

    That is a MIX or Step III model of that protocol, or one whose checkpoint does not record its sources (older
    checkpoints). Single-source Step I and II models of that protocol learned the true TC: no warning.
    """
    paper = [
        sources
        for model, sources in zip(models, distorted, strict=True)
        if model.hparams.get("label_scaling") == "paper"
    ]
    named = sorted({source for sources in paper if sources for source in sources})
    if not named and all(sources is not None for sources in paper):
        return
    which = f"its labels of {', '.join(named)} were" if named else "its labels may have been"
    log.warning(
        "%s: trained with protocol=paper, the original code's label scaling; %s standardised with other statistics "
        "than the model's, so it predicts on that distorted scale, not the true TC (the paper's Step III on "
        "Dataset1 scores 0.81 MAPE against the true TC, 0.28 as the paper scored it); predict with protocol=clean "
        "models",
        name,
        which,
    )


def physics_builder(name: str, models: Sequence[LTCRegressor], builder: Any) -> Any:
    """``builder``, or for models trained with physics features (``+features=eos``, ``kappa_bte``) one computing them.

    The features of a new crystal come from its own energy-volume scan or BTE kappa (:mod:`paraisite.kappa.features`),
    with the settings stored in the checkpoint; the members must share them.
    """
    stored = [model.hparams.get("physics") for model in models]
    if all(s is None for s in stored):
        return builder
    from paraisite.kappa.features import feature_settings, graph_builder

    settings = [None if s is None else feature_settings(s) for s in stored]
    if any(s != settings[0] for s in settings) or settings[0] is None:
        raise ValueError(f"{name}: ensemble members use different physics features: {settings}")
    return graph_builder(builder, settings[0])


def load_checkpoints(
    name: str,
    paths: Sequence[Path],
    ensemble: bool,
    sha256s: Sequence[str] | None = None,
    calibration: Calibration | LogIntervals | FidelityIntervals | None = None,
) -> LTCPredictor:
    """LTC checkpoints (with their applicability references, if any) as one predictor.

    Each file is read once and loaded by :func:`paraisite.models.regressor.load_ltc_checkpoint` (weights only,
    allowed classes only); ``sha256s`` (a bundle's manifest) are checked on the very bytes that are loaded.
    """
    from paraisite.models.regressor import load_ltc_checkpoint  # Lightning: only for LTC models, not for CGCNN

    models, references, distorted, fidelities = [], [], [], []
    for index, path in enumerate(paths):
        model, checkpoint = load_ltc_checkpoint(path, expected_sha256=None if sha256s is None else sha256s[index])
        models.append(model)
        references.append(applicability_from_checkpoint(checkpoint, path))
        distorted.append(recorded_distorted_sources(checkpoint, path))
        recorded = checkpoint.get(FIDELITIES_KEY)
        fidelities.append([str(f) for f in recorded] if isinstance(recorded, list) else None)
    return LTCPredictor(name, models, references, ensemble, calibration, distorted, fidelities)


def recorded_distorted_sources(checkpoint: dict[str, Any], source: str | os.PathLike) -> list[str] | None:
    """The checkpoint's list of distorted training sources; ``None`` if it has none (older checkpoints).

    Raises:
        paraisite.checkpoints.CheckpointTrustError: the entry is not a list of names.
    """
    entry = checkpoint.get(DISTORTED_SOURCES_KEY)
    if entry is None:
        return None
    if not isinstance(entry, list) or not all(isinstance(item, str) for item in entry):
        raise CheckpointTrustError(f"{source}: {DISTORTED_SOURCES_KEY} is not a list of source names")
    return list(entry)


def _bundle_predictor(name: str, bundle: Bundle) -> LTCPredictor:
    stored = bundle.manifest.get("calibration")
    calibration = None if stored is None else read_calibration(stored, str(bundle.root / "manifest.json"))
    sha256s = [member.sha256 for member in bundle.members]
    predictor = load_checkpoints(name, bundle.member_paths, True, sha256s, calibration)
    domain_flag = bundle.manifest.get("domain_flag", True)
    if not isinstance(domain_flag, bool):
        raise ValueError(f"{bundle.root / MANIFEST}: domain_flag is {domain_flag!r}, not true or false")
    predictor.domain_flag = domain_flag
    return predictor


def zoo_bundle(name: str, unavailable_message: str) -> Bundle:
    """The verified bundle of zoo ensemble ``name``.

    Looked up in this order: a bundle the user installed in ``<cache>/zoo/<name>`` (their explicit choice), the
    ensemble shipped in the package, a published release archive (fetched and verified).
    """
    installed, shipped = installed_bundle_dir(name), shipped_bundle_dir(name)
    if is_bundle(installed):
        log.info("%s: using the bundle installed in %s", name, installed)
        return read_bundle(installed)
    if is_bundle(shipped):
        check_pinned_manifest(shipped / MANIFEST)
        return read_bundle(shipped)
    published = published_bundles().get(name)
    if published is not None:
        return fetch_bundle(published)
    if name in (bad_rows := site_table_errors()):
        raise ValueError(bad_rows[name])
    raise ModelUnavailableError(f"{unavailable_message} (looked for {installed})")


def load_predictor(model: str | os.PathLike) -> Predictor:
    """Resolve ``--model``: a zoo name, an ensemble bundle directory, a run directory or a ``.ckpt`` file.

    Raises:
        ModelUnavailableError: a zoo ensemble that is neither published nor installed in ``<cache>/zoo``.
        paraisite.data.registry.RegistryError: a published bundle archive is missing or fails its checksum.
        FileNotFoundError: neither a zoo name nor an existing path.
        paraisite.zoo.bundle.BundleIntegrityError: a bundle member does not match its sha256.
    """
    spec = str(model)
    entries = catalog()
    if spec in entries:
        entry = entries[spec]
        if entry.family == "cgcnn":
            return CGCNNPredictor(entry.name, load_cgcnn_pretrained(entry.origin), entry.columns)
        return _bundle_predictor(entry.name, zoo_bundle(entry.name, entry.unavailable_message))
    path = Path(spec)
    if is_bundle(path):
        return _bundle_predictor(spec, read_bundle(path))
    if not path.exists():
        raise FileNotFoundError(
            f"--model {spec}: neither a zoo name (see `paraisite zoo list`) nor an existing checkpoint, "
            "run directory or bundle directory"
        )
    return load_checkpoints(spec, [resolve_run_checkpoint(path)], ensemble=False)
