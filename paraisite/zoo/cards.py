"""Card data that travels with a shipped model's weights: ``card.json`` beside its ``manifest.json``.

The card file holds what a model card says that is evidence, not code: what the model is for and not for, its
training data, its measured figures (validation MAPE from the manifest; optionally figures on measured
conductivities from an evidence JSON) and the files those figures come from. ``paraisite zoo ship`` writes it;
``paraisite zoo list`` and ``paraisite zoo card`` read it, so a new model needs no code edit to be described. The
manifest pins the card's sha256 (``card_sha256``), as it pins its members': an edited card is refused.

``planned.json`` (package data) does the same for the zoo names that are planned but not shipped (the Step III
ensembles): their origin, the shipped model to use instead, and their measured figures.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paraisite.data import registry
from paraisite.data.cache import atomic_write
from paraisite.zoo.bundle import MANIFEST

CARD = "card.json"
CARD_FORMAT = 1
#: The zoo's planned (not shipped) names and their figures.
PLANNED_FILE = Path(__file__).resolve().parent / "planned.json"
#: Largest card file accepted.
MAX_CARD_BYTES = 256 * 1024
_TEXT_FIELDS = ("name", "use_for", "not_for", "training_data", "data_reference")
_VALIDATION_FIELDS = {"mape_mean": float, "mape_std": float, "members": int, "profile": str, "protocol": str}
_MEASURED_FIELDS = {
    "subset": str,
    "rows": int,
    "mae_log10": float,
    "mean_signed_log10": float,
    "within_x2": float,
    "constant_mae_log10": float,
}


class CardError(ValueError):
    """A card file is malformed, or differs from what its manifest pins; the message names the file."""


@dataclass(frozen=True)
class ModelCard:
    """The card data of one model (see the module docstring)."""

    path: Path
    name: str
    use_for: str
    not_for: str
    training_data: str
    data_reference: str
    validation: dict[str, Any]
    measured: dict[str, Any] | None
    sources: dict[str, str]

    @property
    def validation_error(self) -> str:
        """The validation figure, short: ``MAPE 0.384 (0.095), 9 seeds, full profile, clean protocol``."""
        v = self.validation
        return (
            f"MAPE {v['mape_mean']:.3f} ({v['mape_std']:.3f}), {v['members']} seeds, {v['profile']} profile, "
            f"{v['protocol']} protocol"
        )

    @property
    def out_of_family_error(self) -> str:
        """The headline of a model judged on measured values out of family (grouped CV), or ``""``."""
        m = self.measured
        if m is None or m["subset"] != "out_of_family":
            return ""
        return (
            f"measured LTC, out of family: MAE {m['mae_log10']:.2f} dex (constant {m['constant_mae_log10']:.2f}), "
            f"{_percent(m['within_x2'])} within x2"
        )

    @property
    def measured_text(self) -> str:
        """How the model reads measured conductivities outside its training data, or ``""`` without that evidence."""
        m = self.measured
        if m is None:
            return ""
        bias = m["mean_signed_log10"]
        factor = 10 ** abs(bias)
        direction = "high" if bias > 0 else "low"
        versus = "worse than" if m["mae_log10"] > m["constant_mae_log10"] else "against"
        return (
            f"On {m['rows']} measured conductivities (`{self.sources.get('measured', m['subset'])}`) it reads them "
            f"{factor:.1f}x {direction} ({bias:+.2f} dex): MAE {m['mae_log10']:.2f} dex, {versus} a constant's "
            f"{m['constant_mae_log10']:.2f}; {_percent(m['within_x2'])} within a factor 2"
        )


def _percent(value: float) -> str:
    return f"{100 * value:.0f} %"


def _fail(path: str | os.PathLike, problem: str) -> CardError:
    return CardError(f"{path}: {problem}; rewrite it with `paraisite zoo ship` (or experiments/ltc-zoo/write_cards.py)")


def _checked(path: Path, section: str, data: Any, fields: dict[str, type]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(path, f"figures.{section} is not a JSON object")
    for key, kind in fields.items():
        value = data.get(key)
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = type(value) is kind
        if not ok:
            raise _fail(path, f"figures.{section}.{key} is {value!r}, not a {kind.__name__}")
    return data


def parse_card(data: bytes, path: Path) -> ModelCard:
    """Check a card file's text: format, the text fields, the validation (and measured) figures, the sources.

    Raises:
        CardError: naming ``path`` and the problem.
    """
    if len(data) > MAX_CARD_BYTES:
        raise _fail(path, f"{len(data)} bytes, over the {MAX_CARD_BYTES}-byte limit")
    try:
        card = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(path, f"not JSON ({error})") from None
    if not isinstance(card, dict):
        raise _fail(path, "not a card (a JSON object is expected)")
    if card.get("format") != CARD_FORMAT:
        raise _fail(path, f"card format {card.get('format')!r}; this version of paraisite reads {CARD_FORMAT}")
    for key in _TEXT_FIELDS:
        if not isinstance(card.get(key), str):
            raise _fail(path, f"{key} is {card.get(key)!r}, not a text")
    figures = card.get("figures")
    if not isinstance(figures, dict):
        raise _fail(path, "figures is not a JSON object")
    validation = _checked(path, "validation", figures.get("validation"), _VALIDATION_FIELDS)
    measured = figures.get("measured")
    if measured is not None:
        measured = _checked(path, "measured", measured, _MEASURED_FIELDS)
    sources = card.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise _fail(path, "sources is not an object of texts")
    return ModelCard(
        path,
        card["name"],
        card["use_for"],
        card["not_for"],
        card["training_data"],
        card["data_reference"],
        validation,
        measured,
        sources,
    )


def read_card(directory: Path, manifest: dict[str, Any]) -> ModelCard | None:
    """The card beside a shipped manifest, checked against the manifest's pin; ``None`` if it has no card.

    Raises:
        CardError: a card the manifest does not pin (or pins with another sha256), a pinned card that is missing,
            a malformed card, or one naming another model.
    """
    path = directory / CARD
    pinned = manifest.get("card_sha256")
    if not path.is_file():
        if pinned is not None:
            raise _fail(path, f"missing, but {directory / MANIFEST} pins a card (sha256 {pinned})")
        return None
    data = path.read_bytes()
    actual = registry.sha256sum(path)
    if pinned != actual:
        said = f"pins sha256 {pinned}" if pinned else "pins no card"
        raise _fail(path, f"edited since it was written: the file has sha256 {actual}, {directory / MANIFEST} {said}")
    card = parse_card(data, path)
    if card.name != manifest["name"]:
        raise _fail(path, f"describes {card.name!r}, but sits beside the manifest of {manifest['name']!r}")
    return card


def card_data(
    manifest: dict[str, Any],
    use_for: str,
    not_for: str = "",
    training_data: str = "",
    data_reference: str = "",
    measured: str | os.PathLike | None = None,
    measured_subset: str = "not_dataset1_compounds",
    measured_source: str | None = None,
) -> dict[str, Any]:
    """The card of a shipped ensemble: validation figures from its manifest, measured ones from an evidence JSON.

    ``measured``: a JSON file ``{model name: {subset: {"count", "mae_log10", "mean_signed_log10", "within_x2",
    "constant_mae_log10", ...}}}`` (``experiments/ltc-mf/shipped_on_measured.py`` writes one); the model's
    ``measured_subset`` is taken. ``measured_source``: the path quoted as its source (default: ``measured``).
    """
    figures = manifest["figures"]
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": manifest["name"],
        "use_for": use_for,
        "not_for": not_for,
        "training_data": training_data or str(manifest["dataset"]),
        "data_reference": data_reference or str(manifest["dataset"]),
        "figures": {
            "validation": {
                "mape_mean": figures["val_mape_mean"],
                "mape_std": figures["val_mape_std"],
                "members": len(manifest["members"]),
                "profile": manifest["profile"],
                "epochs": manifest.get("epochs"),
                "protocol": manifest["protocol"],
            }
        },
        "sources": {"validation": f"{MANIFEST} (figures: each member on its own seed's validation split)"},
    }
    if measured is not None:
        path = Path(measured)
        try:
            evidence = json.loads(path.read_text())[manifest["name"]][measured_subset]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise CardError(f"{path}: no {measured_subset!r} figures of {manifest['name']} ({error!r})") from None
        card["figures"]["measured"] = {
            "subset": measured_subset,
            "rows": int(evidence["count"]),
            **{key: float(evidence[key]) for key in _MEASURED_FIELDS if key not in {"subset", "rows"}},
            "spearman": float(evidence.get("spearman", math.nan)),
        }
        card["sources"]["measured"] = f"{measured_source or path.as_posix()} ({measured_subset})"
    return card


def write_card(directory: Path, card: dict[str, Any]) -> Path:
    """Write ``card.json`` beside ``directory``'s manifest and pin its sha256 there (``card_sha256``).

    The card is checked first (:func:`parse_card`); the manifest keeps its other keys and format.
    """
    text = json.dumps(card, indent=2) + "\n"
    path = directory / CARD
    parse_card(text.encode(), path)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["card_sha256"] = registry.sha256sum(path)
    atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return path


@dataclass(frozen=True)
class PlannedModel:
    """A zoo name that is planned but not shipped: its origin, what to use instead, its measured figures."""

    name: str
    origin: str
    training_data: str
    data_reference: str
    instead: str | None
    figures: dict[str, dict[str, Any]]
    #: Why to use ``instead``, when not for a better validation MAPE on the same data (default advice).
    advice: str | None = None
    #: The ensemble was shipped once and removed from the package.
    removed: bool = False

    def figure(self, which: str) -> str | None:
        """``mean (std)`` of a measured MAPE (``full``, ``quick``), or ``None`` if not measured."""
        f = self.figures.get(which)
        return None if f is None else f"{f['mape_mean']:.3f} ({f['mape_std']:.3f})"


def planned_models(path: Path = PLANNED_FILE) -> dict[str, PlannedModel]:
    """The planned names of ``planned.json``, by name (read once per version of the file).

    Raises:
        CardError: naming the file and the problem.
    """
    try:
        stat = path.stat()
    except OSError as error:
        raise CardError(f"{path}: malformed planned-models file ({type(error).__name__}: {error})") from None
    return dict(_read_planned(path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _read_planned(path: Path, mtime_ns: int, size: int) -> dict[str, PlannedModel]:
    """:func:`planned_models` of one version of the file (``mtime_ns`` and ``size`` only key the cache)."""
    try:
        data = json.loads(path.read_text())
        planned = {}
        for name, entry in data["models"].items():
            figures = entry.get("figures", {})
            for which, figure in figures.items():
                _checked(path, f"{name}.{which}", figure, {"mape_mean": float, "mape_std": float, "members": int})
            planned[name] = PlannedModel(
                name,
                str(entry["origin"]),
                str(entry.get("training_data", "")),
                str(entry.get("data_reference", "")),
                entry.get("instead"),
                figures,
                entry.get("advice"),
                bool(entry.get("removed", False)),
            )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CardError(f"{path}: malformed planned-models file ({type(error).__name__}: {error})") from None
    return planned
