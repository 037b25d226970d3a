"""Dead-unit diagnostic of LTC models: which hidden units of the MLP head still fire, and whether predictions vary.

For each model (a run's best checkpoint, or member k of an ensemble job's ``last.ckpt``) it runs the first
``--batches`` training batches of that seed's split and prints, per ReLU layer of the head, the fraction of units
active (> 0) on at least one crystal, and the spread of the predicted TC. A member whose predictions do not vary
has collapsed to a constant. Written to JSON with ``--out``.

    python experiments/diagnostics/head_activity.py logs/full-cpu-clean/step2/AFLOW --out head_activity.json
    python experiments/diagnostics/head_activity.py logs/full-cpu-clean/step2/AFLOW --ensemble-state last.ckpt
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf

from paraisite.checkpoints import load_checkpoint, resolve_run_checkpoint
from paraisite.data import registry
from paraisite.data.datamodule import LTCDataModule
from paraisite.models.regressor import load_ltc_checkpoint


def member_state(state: dict[str, torch.Tensor], member: int) -> dict[str, torch.Tensor]:
    """Member ``member``'s LTCRegressor state from a stacked ensemble state dict."""
    out = {}
    for key, value in state.items():
        if ".stacked." in key:
            prefix, name = key.split(".stacked.")
            out[f"{prefix.split('.')[0]}.{name.replace('__', '.')}"] = value[member]
    out["scaler.mean"], out["scaler.std"] = state["target_mean"][member, 0], state["target_std"][member, 0]
    return out


def activity(model: torch.nn.Module, batches: list) -> dict[str, float | list[float]]:
    """Fraction of head units active on at least one crystal, per ReLU layer, and the predictions' spread."""
    outputs: dict[int, list[torch.Tensor]] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, i=i: outputs.setdefault(i, []).append(out.detach()))
        for i, layer in enumerate(model.head.layers)
        if isinstance(layer, torch.nn.ReLU)
    ]
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model.predict_tc(g, lattice, state).flatten() for g, lattice, state, _ in batches])
    for hook in hooks:
        hook.remove()
    alive = [float((torch.cat(v) > 0).any(0).float().mean()) for _, v in sorted(outputs.items())]
    return {
        "alive_fraction": [round(a, 4) for a in alive],
        "tc_std": float(predicted.std()),
        "tc_mean": float(predicted.mean()),
    }


def main() -> None:
    """Print (and write) the head activity of every seed's model in a job folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path, help="a <group>/<step>/<Dataset> folder with seed<k> runs")
    parser.add_argument("--ensemble-state", type=Path, help="an ensemble job's last.ckpt: score its members instead")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = sorted(args.job.glob("seed[0-9]*"), key=lambda p: int(re.sub(r"\D", "", p.name)))
    state = load_checkpoint(args.ensemble_state)["state_dict"] if args.ensemble_state else None
    report = {}
    for member, run in enumerate(runs):
        cfg = OmegaConf.load(run / "config_resolved.yaml")
        model, _ = load_ltc_checkpoint(
            resolve_run_checkpoint(run) if (run / "metrics.json").is_file() else run / "checkpoints" / "best.ckpt"
        )
        if state is not None:
            model.load_state_dict(member_state(state, member))
        with registry.configured(cfg.paths.get("cache_dir"), cfg.paths.get("mirror_dir")):
            datamodule = LTCDataModule(str(cfg.data.name), list(cfg.data.sources), seed=int(cfg.seed))
            datamodule.setup()
            batches = [b for _, b in zip(range(args.batches), datamodule.train_dataloader(), strict=False)]
        report[run.name] = activity(model, batches)
        print(run.name, report[run.name], flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
