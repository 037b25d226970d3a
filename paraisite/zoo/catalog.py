"""The model zoo: one entry per ready-to-use model, each with a model card.

Two families:

- ``cgcnn-*``: the 8 published CGCNN models of ``txie-93/cgcnn/pre-trained`` (Xie & Grossman 2018, Materials
  Project data), fetched through the registry (pinned sha256, mirror support).
- ``ltc-*``: ParAIsite ensembles (9 seeds) for lattice thermal conductivity, trained by this project. The LTC models
  shipped in the package are the Step II ensembles ``ltc-step2-*`` (``paraisite/zoo/models/<name>/``,
  :mod:`paraisite.zoo.shipped`): a bundle (:mod:`paraisite.zoo.bundle`) plus its ``card.json``
  (:mod:`paraisite.zoo.cards`), the card data measured when it was shipped, so a new shipped model is listed and
  described with no code edit. The Step III names (``ltc-step3-*``, from the paper) are planned, not shipped:
  ``planned.json`` holds their measured figures and points them to the shipped Step II ensemble of their dataset.
  Any name may also resolve to a release archive pinned in ``published.tsv`` (:mod:`paraisite.zoo.published`) or to
  a bundle installed in ``<cache>/zoo/<name>`` by ``paraisite zoo export ... --install``.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Literal

from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO
from paraisite.models.cgcnn import CGCNN_MODELS, read_cgcnn_checkpoint
from paraisite.zoo.cards import ModelCard, PlannedModel, planned_models, read_card
from paraisite.zoo.columns import LTC_ENSEMBLE_COLUMNS
from paraisite.zoo.published import PublishedBundle, published_bundles
from paraisite.zoo.shipped import shipped_bundle_dir, shipped_manifests

CGCNN_PAPER = "Xie & Grossman, Phys. Rev. Lett. 120, 145301 (2018)"
MATERIALS_PROJECT = "Materials Project: Jain et al., APL Materials 1, 011002 (2013)"
MEGNET_PAPER = "MEGNet: Chen, Ye, Zuo, Zheng & Ong, Chem. Mater. 31, 3564 (2019)"
PARAISITE_PAPER = "ParAIsite paper (reference in github.com/liudakl/ParAIsite)"
AFLOW_AGL = "AFLOW AGL: Toher et al., Phys. Rev. B 90, 174107 (2014)"
ENSEMBLE_SEEDS = 9
#: Task names of multi-fidelity ensembles (``experiment=mf``, and its measured fine-tuning).
MULTI_FIDELITY_STEPS = ("mf", "mf_ft")

#: CSV value columns of each CGCNN model (units in the names; log10 models give both scales).
CGCNN_COLUMNS: dict[str, tuple[str, ...]] = {
    "formation-energy-per-atom": ("formation_energy_eV_per_atom",),
    "final-energy-per-atom": ("final_energy_eV_per_atom",),
    "band-gap": ("band_gap_eV",),
    "efermi": ("efermi_eV",),
    "bulk-moduli": ("bulk_modulus_log10_GPa", "bulk_modulus_GPa"),
    "shear-moduli": ("shear_modulus_log10_GPa", "shear_modulus_GPa"),
    "poisson-ratio": ("poisson_ratio",),
    "semi-metal-classification": ("p_metal",),
}
#: Test-set MAEs of Table I of the CGCNN paper (the paper's models; the checkpoints' own scores are in the files).
CGCNN_PUBLISHED_MAE: dict[str, str] = {
    "formation-energy-per-atom": "0.039 eV/atom",
    "final-energy-per-atom": "0.072 eV/atom",
    "band-gap": "0.388 eV",
    "efermi": "0.363 eV",
    "bulk-moduli": "0.054 log10(GPa)",
    "shear-moduli": "0.087 log10(GPa)",
    "poisson-ratio": "0.030",
}


@dataclass(frozen=True)
class ZooEntry:
    """A model of the zoo.

    Attributes:
        name: the zoo name (``--model NAME``).
        family: ``cgcnn`` (a published checkpoint) or ``ltc-ensemble`` (a bundle).
        property: what is predicted.
        units: units of the physical prediction.
        columns: CSV value columns.
        data_reference: training data, short (full references in the card).
        model_reference: model reference, short.
        published_error: the published error, or why there is none.
        origin: the CGCNN checkpoint name, or ``step/dataset`` of an ensemble.
    """

    name: str
    family: Literal["cgcnn", "ltc-ensemble"]
    property: str
    units: str
    columns: tuple[str, ...]
    data_reference: str
    model_reference: str
    published_error: str
    origin: str

    @builtins.property  # the field ``property`` shadows the builtin in this class body
    def step(self) -> str:
        """Step of an ensemble (``step3``)."""
        return self.origin.split("/")[0]

    @builtins.property
    def dataset(self) -> str:
        """Fine-tuning dataset of an ensemble (``Dataset1``)."""
        return self.origin.split("/")[1]

    @builtins.property
    def how_to_obtain(self) -> str:
        """How to get an ensemble that is not published yet."""
        return (
            "train it with `make reproduce`, then export and install it with `paraisite zoo export <sweep dir> "
            f"--step {self.step} --dataset {self.dataset} --name {self.name} --install`"
        )

    @builtins.property
    def unpublished_advice(self) -> str:
        """What to do instead of an unpublished ensemble: the shipped one ``planned.json`` names; how to train it."""
        planned = planned_models().get(self.name)
        full = None if planned is None else planned.figure("full")
        if planned is not None and planned.instead and planned.advice:
            return f"{planned.advice}: use `--model {planned.instead}`; or {self.how_to_obtain}"
        if planned is not None and planned.instead and full:
            return (
                f"at the full budget this ensemble scored MAPE {full}, worse than {planned.instead}, which ships "
                f"with paraisite: use `--model {planned.instead}`; or {self.how_to_obtain}"
            )
        return self.how_to_obtain

    @builtins.property
    def unavailable_message(self) -> str:
        """The error when an ensemble is neither published nor installed."""
        planned = planned_models().get(self.name)
        state = "not shipped" if planned is not None and planned.removed else "not yet published"
        return f"{self.name}: {state}: {self.unpublished_advice}"


def _cgcnn_entries() -> list[ZooEntry]:
    return [
        ZooEntry(
            name=f"cgcnn-{name}",
            family="cgcnn",
            property=info.property,
            units=info.units,
            columns=CGCNN_COLUMNS[name],
            data_reference="Materials Project (Jain et al. 2013)",
            model_reference="CGCNN (Xie & Grossman 2018, PRL)",
            published_error=CGCNN_PUBLISHED_MAE.get(name, "see card"),
            origin=name,
        )
        for name, info in CGCNN_MODELS.items()
    ]


def _ltc_entry(name: str, origin: str, measured: str, data_reference: str) -> ZooEntry:
    step = origin.split("/", maxsplit=1)[0]
    steps = {"step1": "ParAIsite Step I", "step2": "ParAIsite Step II", "step3": "ParAIsite Step III"}
    steps |= dict.fromkeys(MULTI_FIDELITY_STEPS, "ParAIsite multi-fidelity")
    return ZooEntry(
        name=name,
        family="ltc-ensemble",
        property="lattice thermal conductivity",
        units="W/mK",
        columns=LTC_ENSEMBLE_COLUMNS,
        data_reference=data_reference,
        model_reference=f"{steps.get(step, step)}; MEGNet (Chen et al. 2019)",
        published_error=measured,
        origin=origin,
    )


def shipped_card(name: str, manifest: dict) -> ModelCard | None:
    """The card data shipped beside ``name``'s manifest (checked against its pin), ``None`` if it has none."""
    return read_card(shipped_bundle_dir(name), manifest)


def _ltc_entries() -> list[ZooEntry]:
    published = published_bundles()
    shipped = shipped_manifests()
    planned = planned_models()
    entries = []
    for name in sorted(set(planned) | set(shipped)):
        manifest, plan = shipped.get(name), planned.get(name)
        card = None if manifest is None else shipped_card(name, manifest)
        if manifest is not None:
            origin = f"{manifest['step']}/{manifest['dataset']}"
            data_reference = card.data_reference if card is not None else str(manifest["dataset"])
        else:
            assert plan is not None, "a name is shipped or planned"
            origin, data_reference = plan.origin, plan.data_reference or plan.origin.split("/")[1]
        full = None if plan is None else plan.figure("full")
        if name in published:
            measured = published[name].measured_error
        elif manifest is not None and card is not None and card.out_of_family_error:
            measured = card.out_of_family_error
        elif manifest is not None:
            measured = card.validation_error if card is not None else shipped_error(manifest)
        elif plan is not None and plan.removed:
            measured = f"not shipped: use {plan.instead}"
        elif plan is not None and full:
            why = f"use {plan.instead}" if plan.advice else f"behind {plan.instead}"
            measured = f"not yet published; full-budget ensemble: MAPE {full}, {why}"
        else:
            measured = "not yet published"
        entries.append(_ltc_entry(name, origin, measured, data_reference))
    return entries


def shipped_error(manifest: dict) -> str:
    """A shipped ensemble's measured validation MAPE: mean (std) over its members, budget and protocol."""
    figures = manifest["figures"]
    return (
        f"MAPE {figures['val_mape_mean']:.3f} ({figures['val_mape_std']:.3f}), {len(manifest['members'])} seeds, "
        f"{manifest['profile']} profile, {manifest['protocol']} protocol"
    )


def catalog() -> dict[str, ZooEntry]:
    """Every zoo entry by name: the CGCNN models, then the LTC ensembles (shipped, published or planned).

    Read on each call (the shipped manifests and the published table), so importing this module does no work.
    """
    return {entry.name: entry for entry in (*_cgcnn_entries(), *_ltc_entries())}


def get_entry(name: str) -> ZooEntry:
    """The entry of a zoo name; unknown names list the valid ones."""
    entries = catalog()
    if name not in entries:
        raise KeyError(f"unknown zoo model {name!r}; valid names: {', '.join(entries)}")
    return entries[name]


def checkpoint_score(entry: ZooEntry) -> str:
    """The validation score stored in a CGCNN checkpoint (``best_mae_error``: MAE, or ROC AUC for classification).

    Fetches the checkpoint through the registry (cache, mirror or network).
    """
    if entry.family != "cgcnn":
        raise ValueError(f"{entry.name}: only CGCNN checkpoints carry a stored score")
    info = CGCNN_MODELS[entry.origin]
    checkpoint = read_cgcnn_checkpoint(registry.fetch(CGCNN_REPO, f"pre-trained/{entry.origin}.pth.tar"))
    score = float(checkpoint["best_mae_error"])
    if info.task == "classification":
        return f"val AUC {score:.3f}"
    return f"val MAE {score:.3f} {info.output_units}"


def model_card(entry: ZooEntry, stored_score: str | None = None) -> str:
    """The model card of an entry, in Markdown; ``stored_score`` from :func:`checkpoint_score` for CGCNN."""
    if entry.family == "cgcnn":
        return _cgcnn_card(entry, stored_score)
    return _ltc_card(entry)


def _cgcnn_card(entry: ZooEntry, stored_score: str | None) -> str:
    info = CGCNN_MODELS[entry.origin]
    published = (
        f"{entry.published_error} (test MAE of the paper's model, Table I of {CGCNN_PAPER})"
        if entry.origin in CGCNN_PUBLISHED_MAE
        else "the paper reports classification accuracy and AUC for its own split; see the paper"
    )
    if info.task == "classification":
        output = "`p_metal`: probability that the crystal is a metal (class 1; semiconductor is class 0)"
    elif info.log10:
        output = f"`{entry.columns[0]}` (what the network outputs) and `{entry.columns[1]}` = 10 ** it"
    else:
        output = f"`{entry.columns[0]}` in {info.units}"
    target = "whether a crystal is a metal or a semiconductor" if info.task == "classification" else info.property
    return f"""# {entry.name}

**What.** The published CGCNN model `{entry.origin}` of `txie-93/cgcnn/pre-trained`: a crystal graph
convolutional network predicting {target} from the crystal structure ({info.task}).

**Output.** {output}.

**Training data.** DFT (PBE) properties of the {MATERIALS_PROJECT}. Its inputs are mostly ICSD structures, i.e.
experimentally synthesised crystals.

**Errors.** Published: {published}. Stored in the checkpoint (best validation score of the original training,
`best_mae_error`): {stored_score or "not read (the checkpoint could not be fetched)"}.

**Graph.** Each atom's 12 nearest neighbours within 8 Å (padded like the original code), atom features from
`atom_init.json`; predictions equal the original `predict.py`'s.

**How to cite.** As the CGCNN authors ask, cite both the data and the model: {MATERIALS_PROJECT}; {CGCNN_PAPER}.

**Limitations.** CGCNN models (and machine-learning models in general) only generalise to crystals from the same
distribution as their training data. Expect significant errors on hypothetical or thermodynamically unstable
crystals. Elements without a vector in `atom_init.json` cannot be predicted at all (error rows).

**Applicability columns.** `unseen_elements` lists elements absent from `atom_init.json`. The training set is not
available offline, so no latent reference exists: `latent_knn_distance` and `latent_percentile` stay empty and
`in_domain` only checks the elements.
"""


def _ltc_status(entry: ZooEntry, shipped: dict | None, published: PublishedBundle | None) -> str:
    if shipped is not None:
        return (
            f"Shipped in the package (`paraisite/zoo/models/{entry.name}/`, every member's sha256 in its manifest, "
            "verified on each load): works offline, nothing to download."
        )
    if published is None:
        plan = planned_models().get(entry.name)
        if plan is not None and plan.removed:
            return f"Not shipped: {entry.unpublished_advice}."
        return f"Not yet published: {entry.unpublished_advice}."
    asset = published.asset
    return (
        f"Published as release asset {asset.url} (sha256 {asset.sha256}, {asset.size} bytes; mirror path "
        f"`<mirror>/{asset.key}`). Validation {published.measured_error} ({published.protocol} protocol): each "
        "member on its own seed's validation split."
    )


def _percent(value: float) -> str:
    return f"{100 * value:.0f} %"


def _errors_text(manifest: dict) -> str:
    """The card's validation errors of a shipped ensemble (each member on its own seed's split)."""
    figures = manifest["figures"]
    return (
        f"**Errors.** Validation MAPE {figures['val_mape_mean']:.3f} ({figures['val_mape_std']:.3f}), mean (std) "
        f"over the {len(manifest['members'])} members, each on its own seed's 20 % split, with the stored weights "
        f"({manifest['profile']} profile, {manifest['epochs']} epochs, {manifest['protocol']} protocol). The "
        "stored weights (int8 head, float16 backbone) change a member's MAPE by at most "
        f"{figures['max_abs_change']:.4f} (float32 mean {figures['val_mape_float32_mean']:.3f})."
    )


def _out_of_family_figures(manifest: dict) -> str:
    """The card's uncertainty and applicability sections of an ensemble calibrated out of family."""
    calibration, evidence = manifest["calibration"]["by_fidelity"], manifest.get("out_of_family", {})
    lines = [
        (
            "**Uncertainty.** `tc_low_W_per_mK`/`tc_high_W_per_mK` bound a 95 % interval in log10(TC): the members' "
            "mean of log10 TC +- q x (their std + a floor), with q and the floor fitted by split-conformal "
            "calibration on crystals of held-out groups (grouped cross-validation: no near twin of a scored crystal "
            f"in training; `{evidence.get('source', 'out-of-family evidence')}`). Its lower end is never 0. "
            "Coverage, each fold calibrated on the other folds:"
        ),
        "",
        "| fidelity | rows | floor (dex) | q (95 %) | 68 % coverage | 95 % coverage | mean 95 % width (dex) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fidelity, item in calibration.items():
        figures = evidence.get("intervals", {}).get(fidelity, {})
        cover = " | ".join(
            _percent(figures[key]) if key in figures else "-" for key in ("coverage_68", "coverage_95")
        )  # fmt: skip
        width = f"{figures['width_95']:.2f}" if "width_95" in figures else "-"
        lines.append(
            f"| {fidelity} | {item['rows']} | {item['floor']} | {item['quantiles']['0.95']:.2f} | {cover} | {width} |"
        )
    signals = evidence.get("domain_signals", {})
    flag = manifest.get("domain_flag", True)
    lines += [
        "",
        (
            "**Applicability.** "
            + (
                "`in_domain` is true when no element is unseen. "
                if flag
                else "No `in_domain` column: out of family, no signal it could use flagged rows with twice the "
                "error of the others, so a flag would give false confidence; the interval is the uncertainty to "
                "use. `unseen_elements` and `latent_percentile` are still reported. "
            )
            + "Measured out of family (rows above the other folds' 80th percentile of the signal flagged out):"
        ),
        "",
        "| signal | flagged out | MAE in (dex) | MAE out (dex) | out / in |",
        "|---|---|---|---|---|",
    ]
    for name, x in signals.items():
        ratio = f"{x['ratio']:.2f}" if x.get("flagged_out") else "never flags"
        lines.append(f"| {name} | {x['flagged_out']} | {x['mae_in']:.3f} | {x['mae_out']:.3f} | {ratio} |")
    return "\n".join(lines)


def _shipped_figures(manifest: dict) -> str:
    """The card's measured sections of a shipped ensemble: errors, uncertainty, applicability."""
    calibration = manifest["calibration"]
    if "by_fidelity" in calibration:
        return f"{_errors_text(manifest)}\n\n{_out_of_family_figures(manifest)}"
    lines = [
        _errors_text(manifest),
        "",
        (
            "**Uncertainty.** `tc_low_W_per_mK`/`tc_high_W_per_mK` bound a 95 % interval: the members' mean of "
            f"log10(TC+1) +- {calibration['quantiles']['0.95']:.2f} x their std, a split-conformal factor fitted on "
            f"{calibration['rows']} out-of-bag validation rows ({calibration['fitted_on']}). Measured on held-out rows:"
        ),
        "",
        "| rows | n | MAPE | Spearman(spread, error) | 68 % cov. raw / calibrated | 95 % cov. raw / calibrated |",
        "|---|---|---|---|---|---|",
    ]
    for name, report in manifest["uncertainty"].items():
        lines.append(
            f"| {name} | {report['rows']:.0f} | {report['mape']:.2f} | {report['spearman_spread_abs_error']:.2f} | "
            f"{_percent(report['coverage_68_gaussian'])} / {_percent(report['coverage_68_calibrated'])} | "
            f"{_percent(report['coverage_95_gaussian'])} / {_percent(report['coverage_95_calibrated'])} |"
        )
    lines += [
        "",
        (
            "Own-validation coverage after calibration is cross-fitted (each fold calibrated on the others). "
            "Cross-dataset rows are crystals of another family: there the intervals are too narrow, which is what "
            "`in_domain` is for."
        ),
    ]
    domain = manifest.get("domain") or {}
    if domain:
        lines += [
            "",
            _domain_rule(next(iter(domain.values()))["max_percentile"]),
            "",
            "| rows | in domain | out of domain | MAPE in | MAPE out | out / in |",
            "|---|---|---|---|---|---|",
        ]
        for name, report in domain.items():
            lines.append(
                f"| {name} | {report['rows_in']:.0f} | {report['rows_out']:.0f} | {report['mape_in']:.2f} | "
                f"{report['mape_out']:.2f} | {report['mape_ratio_out_in']:.2f} |"
            )
    return "\n".join(lines)


def _domain_rule(max_percentile: float) -> str:
    latent = (
        "(the latent percentile is reported, not used: on crystals of other datasets a threshold on it did not "
        "separate good from bad predictions; see `experiments/ltc-zoo/domain.md`)"
        if max_percentile >= 100
        else f"and `latent_percentile` <= {max_percentile:.0f}"
    )
    return (
        f"**Applicability.** `in_domain` is true when no element is unseen {latent}. Errors of the rows it flags, on "
        "crystals of datasets no member trained on (AFLOW errors are against AGL values, a lower-fidelity model):"
    )


def _planned_errors(plan: PlannedModel | None) -> str:
    """The card's errors of a planned (unshipped) ensemble, from ``planned.json``."""
    if plan is None or plan.figure("full") is None:
        return "**Errors.** Not measured yet for this ensemble."
    full = plan.figures["full"]
    text = (
        f"**Errors.** Validation MAPE {plan.figure('full')}, mean (std) over the {full['members']} members, each on "
        f"its own seed's 20 % split, for the full-budget ensemble ({full.get('budget', 'full profile')}; "
        f"`{full.get('source', 'planned.json')}`)"
    )
    quick = plan.figures.get("quick")
    if quick is not None:
        text += (
            f"; {plan.figure('quick')} for the quick-profile one ({quick.get('budget', 'quick profile')}; "
            f"`{quick.get('source', 'planned.json')}`)"
        )
    if plan.instead:
        text += (
            f". It is not shipped: the ensemble `{plan.instead}`, trained with the same budget, scores better. A "
            "published ensemble states its own figure under Status"
        )
    return text + "."


def _ltc_card(entry: ZooEntry) -> str:
    shipped = shipped_manifests().get(entry.name)
    card = None if shipped is None else shipped_card(entry.name, shipped)
    plan = planned_models().get(entry.name)
    status = _ltc_status(entry, shipped, published_bundles().get(entry.name))
    step, dataset = entry.step, entry.dataset
    if step == "step3":
        what = (
            "initialised from the published MEGNet-MP-2018.6.1-Eform weights, trained on AFLOW AGL conductivities "
            f"(Step II), then fine-tuned with an MLP head on {dataset} (Step III)"
        )
    elif step in MULTI_FIDELITY_STEPS:
        what = (
            "initialised from the published MEGNet-MP-2018.6.1-Eform weights and trained on AFLOW AGL, ab-initio "
            "(Dataset1, Dataset2) and measured conductivities together, the fidelity of each value given to the "
            "network as MEGNet's global state"
            + (", then fine-tuned on the measured values" if step == "mf_ft" else "")
            + "; `--fidelity measured|ab-initio|agl` picks which kind of value it predicts (measured by default)"
        )
    else:
        what = f"initialised from the published MEGNet-MP-2018.6.1-Eform weights and trained on {dataset} (Step II)"
    errors = _shipped_figures(shipped) if shipped is not None else _planned_errors(plan)
    if card is not None:
        training, use = card.training_data, [f"**Use it for.** {card.use_for}."]
        if card.not_for:
            use.append(f"**Not for.** {card.not_for}.")
        if card.measured_text:
            use.append(f"**Measured values.** {card.measured_text}.")
        use.append(f"(Card data: `{card.path.name}` beside the manifest.)")
    else:
        training = (plan.training_data if plan is not None else "") or dataset
        instead = f"not shipped: use `{plan.instead}` (see Status)" if plan is not None and plan.instead else ""
        use = [f"**Use it for.** {instead or 'see the errors below'}."]
    uses = "\n\n".join(use)
    return f"""# {entry.name}

**Status.** {status}

{uses}

**What.** An ensemble of {ENSEMBLE_SEEDS} ParAIsite models (seeds 1-{ENSEMBLE_SEEDS}) predicting the lattice thermal
conductivity (W/mK) of a crystal. Each member is a MEGNet backbone ({MEGNET_PAPER}) {what}, with the split of its
seed.

{errors}

**Output.** `tc_W_per_mK` (mean over the members; a single model's column has the same name), `tc_std_W_per_mK`
(population std over the members, the paper's scan statistic: model spread, not measurement noise) and `tc_rel_std`
= std / mean; calibrated ensembles add `tc_low_W_per_mK`, `tc_high_W_per_mK` and `interval_level` (0.95).

**Training data.** {training}; the published MEGNet weights were trained on formation energies of the
{MATERIALS_PROJECT}.

**Bundle.** A directory with `manifest.json` (name, step, dataset, protocol, profile, paraisite version, measured
figures, and per member: file, sha256, seed, validation MAPE) and the members' `.ckpt` files. Every sha256 is verified
before loading; a mismatch is refused.

**How to cite.** {PARAISITE_PAPER}; {MEGNET_PAPER}; and the data: {training} (as distributed by liudakl/ParAIsite),
{AFLOW_AGL}.

**Limitations.** Trained on a few hundred crystals at most (AFLOW: a few thousand low-fidelity values): check
`unseen_elements`, `latent_percentile` and, where the card backs it, `in_domain`. The applicability reference is each
member's training split
(elements: union over members; distances and percentiles: mean over members). The targets are log10(TC + 1):
relative errors matter more than absolute ones.
"""
