"""Thread and worker defaults measured idle and beside one busy process; print and write JSON.

Usage: ``python benchmarks/busy_defaults.py [--epochs 10] [--files 1000] [--repeats 2] [--model ltc-step2-dataset2]
[--make-train] [--out experiments/busy-defaults/busy_defaults.json]`` (``PARAISITE_MIRROR`` set offline).

Two jobs, each run as the user runs it (a fresh ``paraisite-train`` / ``paraisite predict`` process, wall time):

- ``train``: ``make train``'s job (``paraisite-train`` with its defaults: Dataset2, pretrained MEGNet, MLP head, CPU)
  shrunk to ``--epochs`` epochs, once per torch thread count (``threads=N``);
- ``predict``: the first ``--files`` AFLOW CIFs of the mirror (sorted by name) with ``--model``, once per
  (``--workers``, ``OMP_NUM_THREADS``) setting.

- ``make-train`` (with ``--make-train``): ``make train``'s job itself, nothing overridden (its 100 epochs, the default
  thread rule: ``threads`` is recorded as ``"default"``).

Each setting runs ``idle`` (nothing started by the benchmark) and ``busy`` (beside one pure-Python spin loop, one core's
worth of load), interleaved: every repeat runs every (condition, setting) pair, the condition order alternating. The
machine is not assumed idle: each run records the 1-minute load average before it and the CPU time the rest of the
machine used during it (``other_cpus``: machine busy time minus the job's and the spinner's, in cores), so a
background job shows in the figures. One warm-up run of each job (untimed) fills the data and graph caches first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paraisite.cpus import default_threads, usable_cpus

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SPIN = "while True:\n    pass\n"


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float:
    """CPU-seconds (user + system) one live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str], spinner: subprocess.Popen | None, log: Path) -> dict:
    """Run ``command`` to its end; wall seconds, load before, and the CPU the rest of the machine used meanwhile."""
    load = os.getloadavg()[0]
    machine, own = machine_busy_seconds(), children_seconds()
    spin = process_seconds(spinner.pid) if spinner else 0.0
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - start
    job = children_seconds() - own
    spun = (process_seconds(spinner.pid) - spin) if spinner else 0.0
    others = machine_busy_seconds() - machine - job - spun
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... exited {code}; see {log}")
    return {
        "seconds": round(wall, 2),
        "job_cpu_seconds": round(job, 1),
        "spinner_cpus": round(spun / wall, 2),
        "other_cpus": round(max(0.0, others) / wall, 2),
        "load_1min_before": round(load, 2),
    }


def train_command(work: Path, threads: int | None, epochs: int | None, name: str) -> list[str]:
    """``paraisite-train`` with its defaults; ``None``: that setting not overridden (``make train``'s own)."""
    overrides = [] if epochs is None else [f"trainer.max_epochs={epochs}"]
    overrides += [] if threads is None else [f"threads={threads}"]
    return [
        str(BIN / "paraisite-train"),
        *overrides,
        "logger=csv",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={work / name}",
    ]


def predict_command(work: Path, model: str, files: list[str], workers: int, name: str) -> list[str]:
    return [
        str(BIN / "paraisite"),
        "predict",
        "--model",
        model,
        *files,
        "-o",
        str(work / f"{name}.csv"),
        "--workers",
        str(workers),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="ltc-step2-dataset2")
    parser.add_argument("--make-train", action="store_true", help="also time make train's own job (100 epochs)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/busy-defaults/busy_defaults.json")
    args = parser.parse_args()
    mirror = os.environ.get("PARAISITE_MIRROR")
    if not mirror:
        sys.exit("set PARAISITE_MIRROR to the upstream mirror (the AFLOW CIFs are read from it)")
    cifs = sorted(Path(mirror, "liudakl/ParAIsite/main/src/aflow_cif").glob("*.cif"))[: args.files]
    files = [str(p) for p in cifs]
    cpus = usable_cpus()
    thread_options = sorted({1, default_threads(), cpus})
    train_settings = [{"threads": t} for t in thread_options]
    predict_settings = [{"workers": 0, "threads": t} for t in thread_options]
    predict_settings += [{"workers": w, "threads": 1} for w in sorted({2, cpus}) if w > 1]
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    base_env["PYTHONPATH"] = str(ROOT)
    results: dict = {
        "what": __doc__,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "usable_cpus": cpus,
            "default_threads": default_threads(),
        },
        "note": "the machine is shared: a background training may run during both conditions (see other_cpus, "
        "load_1min_before); 'idle' means no load started by this benchmark",
        "epochs": args.epochs,
        "files": len(files),
        "model": args.model,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("warm-up (untimed)", flush=True)
        timed(train_command(work, 1, 1, "warm"), {**base_env, "OMP_NUM_THREADS": "1"}, None, work / "warm.log")
        timed(
            predict_command(work, args.model, files[:50], 0, "warm"),
            {**base_env, "OMP_NUM_THREADS": "1"},
            None,
            work / "warm-predict.log",
        )
        count = 0
        for repeat in range(args.repeats):
            conditions = ["idle", "busy"] if repeat % 2 == 0 else ["busy", "idle"]
            for condition in conditions:
                spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if condition == "busy" else None
                try:
                    time.sleep(1.0 if spinner else 0.0)
                    jobs = [("train", s) for s in train_settings] + [("predict", s) for s in predict_settings]
                    jobs += [("make-train", {"threads": "default"})] if args.make_train else []
                    for job, setting in jobs:
                        count += 1
                        name = f"{job}-{count}"
                        env = {**base_env, "OMP_NUM_THREADS": str(setting["threads"])}
                        if job == "make-train":  # as the user runs it: no OMP_NUM_THREADS, no override
                            env = dict(base_env)
                            command = train_command(work, None, None, name)
                        elif job == "train":
                            command = train_command(work, setting["threads"], args.epochs, name)
                        else:
                            command = predict_command(work, args.model, files, setting["workers"], name)
                        figures = timed(command, env, spinner, work / f"{name}.log")
                        run = {"job": job, "condition": condition, "repeat": repeat, **setting, **figures}
                        results["runs"].append(run)
                        print(json.dumps(run), flush=True)
                        write(args.out, results)  # kept so far, should the benchmark be stopped
                finally:
                    if spinner:
                        spinner.kill()
                        spinner.wait()
    write(args.out, results)
    print(json.dumps(results["summary"], indent=1))


def write(path: Path, results: dict) -> None:
    """``results`` with its summary as JSON at ``path``."""
    results["summary"] = summarise(results["runs"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def summarise(runs: list[dict]) -> list[dict]:
    """Per (job, setting): the best and worst seconds idle and busy, and busy / idle (best of each)."""
    keys = sorted({(r["job"], r.get("workers", -1), r["threads"]) for r in runs})
    rows = []
    for job, workers, threads in keys:
        row: dict = {"job": job, "threads": threads}
        if workers >= 0:
            row["workers"] = workers
        for condition in ("idle", "busy"):
            times = [
                r["seconds"]
                for r in runs
                if (r["job"], r.get("workers", -1), r["threads"], r["condition"]) == (job, workers, threads, condition)
            ]
            row[condition] = times
        if row["idle"] and row["busy"]:
            row["busy_over_idle"] = round(min(row["busy"]) / min(row["idle"]), 2)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
