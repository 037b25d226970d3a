"""Applicability domain: is a structure like the ones a model was trained on?

Two checks per structure:

- ``unseen_elements``: elements of the structure absent from the training data;
- ``latent_knn_distance``: mean Euclidean distance from the structure's latent vector (the backbone output of an
  LTC model) to its ``k`` nearest training vectors, in the training set's standardised latent space (each feature
  centred and divided by its training std). ``latent_percentile`` places that distance in the training
  distribution of the same statistic, computed leave-one-out (each training vector against the others): 50 is a
  typical training structure, 100 is farther than every training structure.

For LTC checkpoints the reference (training elements and latent vectors) travels inside the checkpoint file under
the top-level key :data:`APPLICABILITY_KEY` (plain tensors, lists and numbers, readable with
``torch.load(..., weights_only=True)``); training stores :func:`collect_reference`'s payload there
(:func:`paraisite.checkpoints.add_checkpoint_entries`), :func:`load_applicability` reads it.
The reference is the split the model was last trained on (for Step III: the fine-tuning dataset's training split).
Training attaches it to each best checkpoint; the zoo's predictors read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate

from paraisite.checkpoints import load_checkpoint

APPLICABILITY_KEY = "paraisite_applicability"
REFERENCE_FORMAT = 1
#: Neighbours averaged in the kNN distance.
DEFAULT_NEIGHBOURS = 5


@dataclass(frozen=True)
class _LatentStatistics:
    """What kNN distances need from the ``[N, D]`` training latents.

    Attributes:
        centre: ``[D]`` mean of each feature.
        scale: ``[D]`` std of each feature (1 where it is 0).
        reference: ``[N, D]`` the training latents standardised with ``centre`` and ``scale``.
        training_distances: ``[N]`` sorted leave-one-out kNN distances of the training latents.
    """

    centre: torch.Tensor
    scale: torch.Tensor
    reference: torch.Tensor
    training_distances: np.ndarray

    def standardised(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents.double() - self.centre) / self.scale


@dataclass
class ApplicabilityReference:
    """Training elements and latent vectors of a model, and the kNN statistics derived from them.

    Args:
        elements: chemical symbols present in the training structures.
        latents: ``[N, D]`` training latent vectors (``None`` when only elements are known).
        neighbours: ``k`` of the kNN distance (capped at ``N - 1``).
    """

    elements: frozenset[str]
    latents: torch.Tensor | None = None
    neighbours: int = DEFAULT_NEIGHBOURS
    _statistics: _LatentStatistics | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.elements = frozenset(self.elements)
        if self.latents is None:
            return
        latents = self.latents.double()
        if latents.ndim != 2 or latents.shape[0] < 2:
            raise ValueError(f"need [N >= 2, D] training latents for kNN distances, got shape {tuple(latents.shape)}")
        self.neighbours = max(1, min(self.neighbours, latents.shape[0] - 1))
        centre = latents.mean(dim=0)
        scale = latents.std(dim=0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        reference = (latents - centre) / scale
        distances = torch.cdist(reference, reference)
        distances.fill_diagonal_(float("inf"))  # leave one out
        self._statistics = _LatentStatistics(centre, scale, reference, np.sort(self._knn_mean(distances)))

    @property
    def has_latents(self) -> bool:
        """Whether latent distances can be computed."""
        return self._statistics is not None

    def _latent_statistics(self) -> _LatentStatistics:
        if self._statistics is None:
            raise ValueError("this applicability reference has no training latents")
        return self._statistics

    def _knn_mean(self, distances: torch.Tensor) -> np.ndarray:
        return distances.topk(self.neighbours, dim=1, largest=False).values.mean(dim=1).numpy()

    def knn_distance(self, latents: torch.Tensor) -> np.ndarray:
        """``[M]`` mean distances of ``[M, D]`` latent vectors to their ``k`` nearest training vectors."""
        statistics = self._latent_statistics()
        return self._knn_mean(torch.cdist(statistics.standardised(latents.cpu()), statistics.reference))

    def percentile(self, distances: np.ndarray) -> np.ndarray:
        """Percentage (0-100) of training structures whose leave-one-out kNN distance is <= each distance."""
        training_distances = self._latent_statistics().training_distances
        ranks = np.searchsorted(training_distances, distances, side="right")
        return 100.0 * ranks / training_distances.size

    def unseen(self, elements: set[str] | frozenset[str]) -> list[str]:
        """Sorted elements of ``elements`` absent from the training data."""
        return sorted(set(elements) - self.elements)

    def to_payload(self) -> dict[str, Any]:
        """Plain containers and tensors, for ``torch.save`` inside a checkpoint."""
        return {
            "format": REFERENCE_FORMAT,
            "elements": sorted(self.elements),
            "latents": None if self.latents is None else self.latents.float().cpu(),
            "neighbours": self.neighbours,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any], source: str) -> ApplicabilityReference:
        """Inverse of :meth:`to_payload`; ``source`` names the file in errors."""
        if payload.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"{source}: applicability reference format {payload.get('format')!r} is not supported")
        return cls(frozenset(payload["elements"]), payload["latents"], int(payload["neighbours"]))


@torch.no_grad()
def collect_reference(model: Any, loader: Any, neighbours: int = DEFAULT_NEIGHBOURS) -> ApplicabilityReference:
    """The reference of an LTC model from its training batches ``(graph, lattice, state_attr, labels)``.

    Latent vectors are ``model.backbone(graph, lattice, state_attr)`` in eval mode; elements are read from the
    graphs' ``node_type`` through the element list of the model's graph builder (``model.hparams.graph``).
    """
    element_types = instantiate(model.hparams.graph).element_types
    was_training = model.training
    model.eval()
    device = model.device
    latents, type_indices = [], set()
    try:
        for graph, lattice, state_attr, _labels in loader:
            features = model.backbone(graph.to(device), lattice.to(device), state_attr.to(device))
            latents.append(features.float().cpu())
            type_indices.update(graph.node_type.unique().tolist())
    finally:
        model.train(was_training)
    elements = frozenset(element_types[i] for i in type_indices)
    return ApplicabilityReference(elements, torch.cat(latents), neighbours)


def applicability_from_checkpoint(
    checkpoint: dict[str, Any], source: str | os.PathLike
) -> ApplicabilityReference | None:
    """The reference stored in a loaded checkpoint dictionary, or ``None`` if it has none."""
    payload = checkpoint.get(APPLICABILITY_KEY)
    return None if payload is None else ApplicabilityReference.from_payload(payload, str(source))


def load_applicability(checkpoint_path: str | os.PathLike) -> ApplicabilityReference | None:
    """The reference stored in a checkpoint file (loaded by :func:`paraisite.checkpoints.load_checkpoint`)."""
    return applicability_from_checkpoint(load_checkpoint(checkpoint_path), checkpoint_path)
