"""LightningDataModule for LTC datasets: sources from config, seeded per-source split, cached graphs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from matgl.graph.data import collate_fn_graph
from torch.utils.data import DataLoader, Dataset

from paraisite.data.graphs import GraphBuilder, GraphSet, MEGNetGraphBuilder, collate_item, load_graph_set
from paraisite.data.sampling import EpochShuffleSampler
from paraisite.data.target import target_statistics

log = logging.getLogger(__name__)

TARGET_STATS_CHOICES = ("train", "dataset")

#: ``provider(source, ids) -> [len(ids), k]`` extra per-crystal features (NaN where unknown), e.g. the physics
#: descriptors of :mod:`paraisite.models.physics`; the training wiring attaches it (``LTCDataModule.attach_features``).
FeatureProvider = Callable[[str, list[str]], np.ndarray]


@dataclass(frozen=True)
class Sample:
    """Where a graph came from: source, index in its graph set, id and formula."""

    source: str
    index: int
    id: str
    formula: str


class GraphDataset(Dataset):
    """Items ``(graph, lattice, state_attr, {"tc": TC})`` for matgl's ``collate_fn_graph``.

    Each graph also carries ``sample_index`` (position in this dataset) and ``label_stats`` ([1, 2]: mean
    and std of log10(TC+1) over its whole source), which the paper protocol's label scaling needs, and, when
    ``features`` are given (source -> ``[len(graph set), k]``), ``extra_features`` ([1, k], raw, NaN where unknown).
    """

    def __init__(
        self,
        graph_sets: dict[str, GraphSet],
        samples: Sequence[Sample],
        source_stats: dict[str, dict[str, float]],
        features: dict[str, torch.Tensor] | None = None,
        fidelity: dict[str, int] | None = None,
        selected: Sequence[str] | None = None,
    ) -> None:
        self.graph_sets = graph_sets
        self.samples = list(samples)
        self.source_stats = {k: torch.tensor([[v["mean"], v["std"]]]) for k, v in source_stats.items()}
        self.features = features
        #: Fidelity index of each source (see :func:`fidelity_state`); None: the graphs' own state is kept.
        self.fidelity = fidelity
        #: Predict every sample at this fidelity index instead of its own (evaluation at several fidelities).
        self.force_fidelity: int | None = None
        #: Sources whose rows choose the best checkpoint (``select_mask`` 1); None: every row.
        self.selected = None if selected is None else set(selected)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple:
        sample = self.samples[idx]
        graph_set = self.graph_sets[sample.source]
        item = collate_item(graph_set.graphs[sample.index], graph_set.tc[sample.index].float())
        graph = item[0]
        graph.sample_index = torch.tensor([idx])
        graph.label_stats = self.source_stats[sample.source]
        graph.select_mask = torch.tensor([float(self.selected is None or sample.source in self.selected)])
        if self.features is not None:
            graph.extra_features = self.features[sample.source][sample.index].reshape(1, -1)
        if self.fidelity is not None:
            level = self.fidelity[sample.source] if self.force_fidelity is None else self.force_fidelity
            item = (item[0], item[1], fidelity_state(level, item[2]), *item[3:])
        return item

    def feature_rows(self) -> torch.Tensor:
        """``[len, k]`` extra features of every sample, in order (requires ``features``)."""
        if self.features is None:
            raise RuntimeError("this dataset carries no extra features")
        return torch.stack([self.features[s.source][s.index] for s in self.samples])

    @property
    def tc(self) -> torch.Tensor:
        """Targets (W/mK) of every sample, in order."""
        return torch.stack([self.graph_sets[s.source].tc[s.index] for s in self.samples])


def fidelity_state(level: int, state_attr: torch.Tensor) -> torch.Tensor:
    """The global state of a graph at fidelity ``level``.

    Level 0 is the graph's default state (all zeros, what the published MEGNet was trained with); level ``k >= 1``
    sets component ``k - 1`` to 1.

    Followed by the state encoder's first Linear layer, this is as expressive as a learned embedding of the
    fidelities, and it keeps the published architecture (and weights) unchanged.
    """
    state = torch.zeros_like(state_attr)
    if level > 0:
        if level > state.shape[-1]:
            raise ValueError(f"fidelity {level} needs a global state of at least {level} values, got {state.shape[-1]}")
        state[..., level - 1] = 1.0
    return state


def _holdout_settings(holdout: Any, sources: Sequence[str]) -> dict[str, Any]:
    """Checked ``holdout`` settings: ``folds`` >= 2, ``0 <= fold < folds``, ``seed``, ``over``.

    ``over``: the sources that define the groups and folds (default the datamodule's own), so that every stage of a
    chain can share one set of folds.
    """
    settings = dict(holdout)
    unknown = set(settings) - {"folds", "fold", "seed", "over"}
    if unknown:
        raise ValueError(f"unknown holdout key(s) {sorted(unknown)}; valid: folds, fold, seed, over")
    folds, fold, seed = int(settings.get("folds", 5)), int(settings["fold"]), int(settings.get("seed", 0))
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"holdout needs folds >= 2 and 0 <= fold < folds, got folds={folds}, fold={fold}")
    over = [str(s) for s in (settings.get("over") or sources)]
    return {"folds": folds, "fold": fold, "seed": seed, "over": over}


def _oversample_settings(oversample: Any, sources: Sequence[str]) -> dict[str, int]:
    """``{source: k}`` checked: known sources, whole factors >= 1."""
    if not oversample:
        return {}
    settings = {}
    for source, factor in dict(oversample).items():
        if source not in sources:
            raise ValueError(f"data.oversample: {source!r} is not one of the sources {list(sources)}")
        if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 100:
            raise ValueError(f"data.oversample.{source}={factor!r}: a whole number from 1 to 100")
        settings[str(source)] = factor
    return settings


def feature_statistics(rows: torch.Tensor) -> dict[str, list[float]]:
    """Per-column mean and std of ``[n, k]`` features, NaN left out; a column without spread gets std 1."""
    rows = rows.double()
    known = ~torch.isnan(rows)
    count = known.sum(0).clamp_min(1)
    mean = torch.where(known, rows, 0.0).sum(0) / count
    var = (torch.where(known, rows - mean, 0.0) ** 2).sum(0) / count
    std = torch.sqrt(var)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return {"mean": mean.tolist(), "std": std.tolist()}


def split_indices(count: int, seed: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """The paper's split (DGL ``split_dataset(shuffle=True, random_state=seed)``).

    ``np.random.RandomState(seed).permutation(count)``; the first ``int(train_fraction * count)`` indices
    train, the rest validate. With the same seed this reproduces the original code's splits exactly.
    """
    order = np.random.RandomState(seed).permutation(count).tolist()
    num_train = int(np.float64(1.0 - val_fraction) * count)
    return order[:num_train], order[num_train:]


class LTCDataModule(pl.LightningDataModule):
    """One or more LTC sources, split 80/20 per source with ``seed`` and concatenated (MIX = Dataset1 + Dataset2).

    Args:
        name: dataset name shown in logs and tables (``Dataset1``, ``MIX``, ...).
        sources: source names (``dataset1``, ``dataset2``, ``aflow``).
        seed: split seed (the paper used the run index 1..9).
        val_fraction: validation share of each source.
        batch_size: structures per batch.
        num_workers: DataLoader workers.
        target_stats: ``train`` (statistics of log10(TC+1) over the training split, leak-free) or
            ``dataset`` (over the whole dataset, the paper's choice).
        max_per_source: keep a seeded random subset of at most this many structures per source (quick runs).
        graph_builder: structure -> graph; MEGNet's radius graph at 4 A by default.
        on_isolated: ``drop`` or ``raise`` for structures without a usable graph.
        on_bad_structure: ``skip`` or ``raise`` for unreadable structure files.
        fidelities: fidelity names in encoding order (``[agl, ab-initio, measured]``): each sample's global state
            then says the fidelity of its source (:func:`fidelity_state`). None: the graphs' own state.
        holdout: grouped cross-validation, ``{folds, fold, seed}``: the crystals of fold ``fold`` (groups of near
            twins, :mod:`paraisite.data.groups`, never split) leave training and validation, in every source, and
            form ``test_set``. Folds balance the crystals of the last source first.
        select_on: sources whose validation rows choose the best checkpoint (None: all).
        oversample: ``{source: k}``: each training row of ``source`` is seen ``k`` times per epoch (a scarce
            fidelity weighted up); validation rows and the target statistics are unchanged.
    """

    def __init__(
        self,
        name: str,
        sources: Sequence[str],
        seed: int = 1,
        val_fraction: float = 0.2,
        batch_size: int = 8,
        num_workers: int = 0,
        target_stats: str = "train",
        max_per_source: int | None = None,
        graph_builder: GraphBuilder | None = None,
        on_isolated: str = "drop",
        on_bad_structure: str = "skip",
        fidelities: Sequence[str] | None = None,
        holdout: dict[str, int] | None = None,
        select_on: Sequence[str] | None = None,
        oversample: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if target_stats not in TARGET_STATS_CHOICES:
            raise ValueError(f"target_stats={target_stats!r}; valid: {', '.join(TARGET_STATS_CHOICES)}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.name = name
        self.sources = list(sources)
        self.seed = int(seed)
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.target_stats_mode = target_stats
        self.max_per_source = max_per_source
        self.graph_builder = graph_builder or MEGNetGraphBuilder()
        self.on_isolated = on_isolated
        self.on_bad_structure = on_bad_structure
        self.fidelities = None if fidelities is None else [str(f) for f in fidelities]
        self.holdout = None if holdout is None else _holdout_settings(holdout, self.sources)
        self.select_on = None if select_on is None else [str(s) for s in select_on]
        self.oversample = _oversample_settings(oversample, self.sources)
        self.train_set: GraphDataset | None = None
        self.val_set: GraphDataset | None = None
        self.test_set: GraphDataset | None = None
        #: Group of every crystal id (with ``holdout``; see :mod:`paraisite.data.groups`).
        self.groups: dict[str, str] = {}
        self.target_stats: dict[str, float] | None = None
        self.source_stats: dict[str, dict[str, float]] = {}
        self.feature_provider: FeatureProvider | None = None
        #: ``{"mean": [...], "std": [...]}`` of the extra features over the training split (NaN left out).
        self.feature_stats: dict[str, list[float]] | None = None

    def attach_features(self, provider: FeatureProvider) -> None:
        """Give every sample extra features from ``provider`` (called in :meth:`setup` for the kept crystals)."""
        if self.train_set is not None:
            raise RuntimeError("attach features before setup()")
        self.feature_provider = provider

    def setup(self, stage: str | None = None) -> None:
        """Load (or build) the graphs and make the split; idempotent."""
        if self.train_set is not None:
            return
        graph_sets: dict[str, GraphSet] = {}
        source_stats: dict[str, dict[str, float]] = {}
        features: dict[str, torch.Tensor] | None = None if self.feature_provider is None else {}
        train: list[Sample] = []
        val: list[Sample] = []
        test: list[Sample] = []
        held_out = self._held_out_ids()
        for source in self.sources:
            graph_set = load_graph_set(source, self.graph_builder, self.on_isolated, self.on_bad_structure)
            graph_sets[source] = graph_set
            test += [Sample(source, i, graph_set.ids[i], graph_set.formulas[i]) for i in range(len(graph_set))
                     if graph_set.ids[i] in held_out]  # fmt: skip
            indices = [i for i in range(len(graph_set)) if graph_set.ids[i] not in held_out]
            if self.max_per_source is not None and len(indices) > self.max_per_source:
                generator = torch.Generator().manual_seed(self.seed)
                indices = sorted(torch.randperm(len(indices), generator=generator)[: self.max_per_source].tolist())
            source_stats[source] = target_statistics(graph_set.tc[indices])
            if features is not None and self.feature_provider is not None:
                values = torch.as_tensor(self.feature_provider(source, [graph_set.ids[i] for i in indices]))
                features[source] = torch.full((len(graph_set), values.shape[1]), float("nan"), dtype=torch.float32)
                features[source][indices] = values.float()
            train_pos, val_pos = split_indices(len(indices), self.seed, self.val_fraction)

            def samples(positions: list[int], graph_set: GraphSet = graph_set, indices: list[int] = indices):
                picked = [indices[p] for p in positions]
                return [Sample(graph_set.source, i, graph_set.ids[i], graph_set.formulas[i]) for i in picked]

            train += samples(train_pos) * self.oversample.get(source, 1)
            val += samples(val_pos)
        self.source_stats = source_stats
        fidelity = self._fidelity_of_sources()
        self.train_set = GraphDataset(graph_sets, train, source_stats, features, fidelity)
        unique_train = GraphDataset(graph_sets, list(dict.fromkeys(train)), source_stats, features, fidelity)
        self.val_set = GraphDataset(graph_sets, val, source_stats, features, fidelity, self.select_on)
        if self.holdout is not None:
            self.test_set = GraphDataset(graph_sets, test, source_stats, features, fidelity)
        if features is not None:
            self.feature_stats = feature_statistics(unique_train.feature_rows())
        every = unique_train.tc if self.target_stats_mode == "train" else torch.cat([unique_train.tc, self.val_set.tc])
        self.target_stats = target_statistics(every)
        log.info(
            "%s (seed %d): %d train / %d val, log10(TC+1) mean %.4f std %.4f from %s",
            self.name, self.seed, len(train), len(val), self.target_stats["mean"], self.target_stats["std"],
            "the training split" if self.target_stats_mode == "train" else "the whole dataset",
        )  # fmt: skip

    def _fidelity_of_sources(self) -> dict[str, int] | None:
        if self.fidelities is None:
            return None
        from paraisite.data.sources import source_spec

        levels = {}
        for source in self.sources:
            name = source_spec(source).fidelity
            if name not in self.fidelities:
                raise ValueError(f"source {source!r} has fidelity {name!r}, not in fidelities {self.fidelities}")
            levels[source] = self.fidelities.index(name)
        return levels

    def _held_out_ids(self) -> set[str]:
        """Ids of the crystals of the held-out fold (empty without ``holdout``)."""
        if self.holdout is None:
            return set()
        from paraisite.data.groups import assign_folds, crystal_groups, source_families

        folds, fold, over = self.holdout["folds"], self.holdout["fold"], self.holdout["over"]
        families = {}
        for source in over:
            families.update(source_families(source))
        groups = crystal_groups((key, formula, family) for key, (formula, family) in families.items())
        balanced = source_families(over[-1])
        assigned = assign_folds(groups, folds, self.holdout.get("seed", 0), dict.fromkeys(balanced, 1.0))
        self.groups = groups
        return {key for key, f in assigned.items() if f == fold}

    def test_dataloader(self) -> DataLoader:
        """The held-out fold's crystals, every source, in a fixed order."""
        return self._loader(self.test_set, shuffle=False)

    def _loader(self, dataset: GraphDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            collate_fn=collate_fn_graph,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled per epoch from ``(seed, epoch)`` (see :class:`EpochShuffleSampler`)."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self.val_set, shuffle=False)

    def describe(self) -> dict[str, Any]:
        """Sizes and statistics, for logs and metrics.json."""
        extra: dict[str, Any] = {} if self.feature_stats is None else {"feature_stats": self.feature_stats}
        if self.holdout is not None:
            extra = {**extra, "holdout": {**self.holdout, "test": len(self.test_set or [])}}
        if self.fidelities is not None:
            extra = {**extra, "fidelities": self.fidelities}
        return {
            **extra,
            "name": self.name,
            "sources": self.sources,
            "seed": self.seed,
            "train": len(self.train_set or []),
            "val": len(self.val_set or []),
            "target_stats": self.target_stats,
            "target_stats_from": self.target_stats_mode,
            "source_stats": self.source_stats,
        }
