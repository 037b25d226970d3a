"""The model zoo: one entry per ready-to-use model, each with a model card.

Two families:

- ``cgcnn-*``: the 8 published CGCNN models of ``txie-93/cgcnn/pre-trained`` (Xie & Grossman 2018, Materials
  Project data), fetched through the registry (pinned sha256, mirror support).
- ``ltc-step3-*``: ParAIsite ensembles (9 seeds) of Step III models for lattice thermal conductivity, trained by
  this project and distributed as bundles (:mod:`paraisite.zoo.bundle`): release archives pinned by sha256 in
  ``published.tsv`` and fetched through the registry and its mirror (:mod:`paraisite.zoo.published`). An entry
  without a published row resolves to a bundle installed locally in ``<cache>/zoo/<name>`` by
  ``paraisite zoo export ... --install``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO
from paraisite.models.cgcnn import CGCNN_MODELS, read_cgcnn_checkpoint
from paraisite.zoo.published import PublishedBundle, published_bundles

CGCNN_PAPER = "Xie & Grossman, Phys. Rev. Lett. 120, 145301 (2018)"
MATERIALS_PROJECT = "Materials Project: Jain et al., APL Materials 1, 011002 (2013)"
MEGNET_PAPER = "MEGNet: Chen, Ye, Zuo, Zheng & Ong, Chem. Mater. 31, 3564 (2019)"
PARAISITE_PAPER = "ParAIsite paper (reference in github.com/liudakl/ParAIsite)"
AFLOW_AGL = "AFLOW AGL: Toher et al., Phys. Rev. B 90, 174107 (2014)"
ENSEMBLE_SEEDS = 9

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
#: Validation MAPE, mean (sample std) over 9 seeds each scored on its own split, of the quick-profile ensembles
#: this project trained on 2 CPU cores (``experiments/zoo-quick``): measured, but not the full-profile models.
QUICK_ENSEMBLE_MAPE: dict[str, str] = {"Dataset1": "0.446 (0.110)", "Dataset2": "0.300 (0.099)", "MIX": "0.450 (0.072)"}
#: Single-checkpoint and ensemble LTC columns.
LTC_COLUMNS = ("tc_W_per_mK",)
LTC_ENSEMBLE_COLUMNS = ("tc_mean_W_per_mK", "tc_std_W_per_mK", "tc_rel_std")
#: Fine-tuning datasets of the ensembles: short name for the table, description for the card.
LTC_DATASETS = {
    "Dataset1": ("Dataset1 (L96)", "Dataset1 (L96): 95 binary compounds, ab-initio LTC"),
    "Dataset2": ("Dataset2 (HH143)", "Dataset2 (HH143): 143 half-Heuslers, ab-initio LTC"),
    "MIX": ("MIX (Dataset1 + Dataset2)", "MIX: Dataset1 + Dataset2, 238 crystals, ab-initio LTC"),
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

    @property
    def step(self) -> str:
        """Step of an ensemble (``step3``)."""
        return self.origin.split("/")[0]

    @property
    def dataset(self) -> str:
        """Fine-tuning dataset of an ensemble (``Dataset1``)."""
        return self.origin.split("/")[1]

    @property
    def how_to_obtain(self) -> str:
        """How to get an ensemble that is not published yet."""
        return (
            "train it with `make reproduce`, then export and install it with `paraisite zoo export <sweep dir> "
            f"--step {self.step} --dataset {self.dataset} --name {self.name} --install`"
        )

    @property
    def unavailable_message(self) -> str:
        """The error when an ensemble is neither published nor installed."""
        return f"{self.name}: not yet published: {self.how_to_obtain}"


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


def _ltc_entries() -> list[ZooEntry]:
    published = published_bundles()
    return [
        ZooEntry(
            name=name,
            family="ltc-ensemble",
            property="lattice thermal conductivity",
            units="W/mK",
            columns=LTC_ENSEMBLE_COLUMNS,
            data_reference=f"{short}; AFLOW AGL (Step II)",
            model_reference="ParAIsite Step III; MEGNet (Chen et al. 2019)",
            published_error=(
                published[name].measured_error
                if name in published
                else f"not yet published; quick-profile ensemble: MAPE {QUICK_ENSEMBLE_MAPE[dataset]}"
            ),
            origin=f"step3/{dataset}",
        )
        for dataset, (short, _description) in LTC_DATASETS.items()
        for name in [f"ltc-step3-{dataset.lower()}"]
    ]


CATALOG: dict[str, ZooEntry] = {entry.name: entry for entry in (*_cgcnn_entries(), *_ltc_entries())}


def get_entry(name: str) -> ZooEntry:
    """The entry of a zoo name; unknown names list the valid ones."""
    if name not in CATALOG:
        raise KeyError(f"unknown zoo model {name!r}; valid names: {', '.join(CATALOG)}")
    return CATALOG[name]


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


def _ltc_status(published: PublishedBundle | None, how_to_obtain: str) -> str:
    if published is None:
        return f"Not yet published: {how_to_obtain}."
    asset = published.asset
    return (
        f"Published as release asset {asset.url} (sha256 {asset.sha256}, {asset.size} bytes; mirror path "
        f"`<mirror>/{asset.key}`). Validation {published.measured_error} ({published.protocol} protocol): each "
        "member on its own seed's validation split."
    )


def _ltc_card(entry: ZooEntry) -> str:
    status = _ltc_status(published_bundles().get(entry.name), entry.how_to_obtain)
    return f"""# {entry.name}

**Status.** {status}

**What.** An ensemble of {ENSEMBLE_SEEDS} ParAIsite Step III models (seeds 1-{ENSEMBLE_SEEDS}) predicting the
lattice thermal conductivity (W/mK) of a crystal. Each member is a MEGNet backbone ({MEGNET_PAPER}) initialised
from the published MEGNet-MP-2018.6.1-Eform weights, trained on AFLOW AGL conductivities (Step II), then fine-tuned
with an MLP head on {entry.dataset} (Step III), with the split of its seed.

**Errors.** Measured for the quick-profile ensemble (9 seeds, 25 epochs, AFLOW subsampled to 400 crystals;
`experiments/zoo-quick`): validation MAPE {QUICK_ENSEMBLE_MAPE[entry.dataset]}, mean (std) over the members, each on
its own seed's 20 % split. A published full-profile ensemble states its own figure under Status.

**Output.** `tc_mean_W_per_mK` (mean over the members), `tc_std_W_per_mK` (population std over the members, the
paper's scan statistic: model spread, not measurement noise) and `tc_rel_std` = std / mean.

**Training data.** {LTC_DATASETS[entry.dataset][1]}, after AFLOW AGL lattice thermal conductivities (Step II,
{AFLOW_AGL}); the published MEGNet weights were trained on formation energies of the {MATERIALS_PROJECT}.

**Bundle.** A directory with `manifest.json` (name, step, dataset, protocol, profile, paraisite version, and per
member: file, sha256, seed, validation MAPE) and the members' `.ckpt` files. Every sha256 is verified before
loading; a mismatch is refused.

**How to cite.** {PARAISITE_PAPER}; {MEGNET_PAPER}; and the data: {LTC_DATASETS[entry.dataset][1]} (as
distributed by liudakl/ParAIsite), {AFLOW_AGL}.

**Limitations.** Trained on a few hundred crystals at most: check `unseen_elements` and `latent_percentile`. The
applicability reference is each member's fine-tuning training split (elements: union over members; distances and
percentiles: mean over members). The targets are log10(TC + 1): relative errors matter more than absolute ones.
"""
