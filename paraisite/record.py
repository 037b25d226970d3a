"""The run record (``metrics.json`` of a run, ``ensemble.json`` of an ensemble job) and where runs live in a sweep.

One dataclass (:class:`RunRecord`), one writer (:func:`write_run_record`), one reader (:func:`read_run_record`)
and one layout function (:func:`run_path`), used by training, the table, the zoo and ``paraisite status``.

A record is in one of three states:

- ``running``: written before training starts (``config_sha256``, ``pid``, ``started``, ``seed`` or ``seeds``);
- ``completed``: a run's full record (``task_name``, ``data``, ``best``, ``cross``, provenance, ...), or an ensemble
  job's summary (``seeds``, ``best_mape`` per member seed, ``epochs``, ``seconds``);
- ``failed``: ``error`` and ``traceback``.

Every record written carries ``schema_version`` (:data:`SCHEMA_VERSION`). A record without one was written before
it existed and is read as version 1, which has the same fields. A record of a newer version is refused, naming
the file: reading it needs a newer paraisite.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paraisite.safety import atomic_write

#: Version of the record's fields; raise it when a field changes meaning or a reader needs a new one.
SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "failed")
#: Fields a completed run (not an ensemble job's summary) must have: the table and the zoo read them.
COMPLETED_RUN_FIELDS = ("data", "task_name", "best")


class RunRecordError(ValueError):
    """A record that cannot be read: unreadable, not an object, malformed, or of a newer schema.

    Attributes:
        path: the file.
        problem: what is wrong, without the path (e.g. ``malformed metrics.json: missing 'data'``).
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True)
class RunRecord:
    """What a run (or an ensemble job) records about itself; the fields in the order they are written.

    Only ``status`` is always present; which other fields are depends on the state (see the module's doc).
    """

    status: str
    task_name: str | None = None
    seed: int | None = None
    seeds: list[int] | None = None
    data: dict[str, Any] | None = None
    backbone: str | None = None
    protocol: str | None = None
    profile: str | None = None
    group: str | None = None
    init: dict[str, Any] | None = None
    epochs: int | None = None
    final: dict[str, Any] | None = None
    config_sha256: str | None = None
    ensemble: dict[str, Any] | None = None
    git_revision: str | None = None
    git_dirty: bool | None = None
    python: str | None = None
    versions: dict[str, Any] | None = None
    best_checkpoint: str | None = None
    best: dict[str, Any] | None = None
    cross: dict[str, Any] | None = None
    holdout: dict[str, Any] | None = None
    best_mape: dict[str, Any] | None = None
    seconds: float | None = None
    pid: int | None = None
    started: float | None = None
    error: str | None = None
    traceback: str | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = _FIELD_TYPES[field.name]
            if value is not None and not _is_instance(value, expected):
                raise ValueError(f"{field.name} is {type(value).__name__} {value!r}, not {_type_name(expected)}")
        if self.seeds is not None and not all(_is_instance(seed, int) for seed in self.seeds):
            raise ValueError(f"seeds {self.seeds!r} are not all integers")
        if self.status == "completed" and not self.is_ensemble_job:
            missing = [name for name in COMPLETED_RUN_FIELDS if getattr(self, name) is None]
            if missing:
                raise ValueError("missing " + ", ".join(repr(name) for name in missing))
            if not isinstance(self.data, dict) or not isinstance(self.data.get("name"), str):
                raise ValueError("data has no dataset 'name'")

    @property
    def is_ensemble_job(self) -> bool:
        """Whether this is the record of an ensemble job (``ensemble.json``), not of one run."""
        return self.seeds is not None and self.seed is None

    @property
    def dataset(self) -> str | None:
        """The name of the dataset the run trained on."""
        return self.data.get("name") if self.data else None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object: ``schema_version`` first, then the fields that are set, in order."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        version = fields.pop("schema_version")
        return {"schema_version": version, **{name: value for name, value in fields.items() if value is not None}}

    @classmethod
    def from_json(cls, value: Any, source: str | os.PathLike = "metrics.json") -> RunRecord:
        """A record from a parsed JSON value; ``source`` names the file in errors.

        Raises:
            RunRecordError: not an object, a newer or invalid ``schema_version``, unknown or missing keys, or a
                value of the wrong type.
        """
        name = Path(source).name
        if not isinstance(value, dict):
            raise RunRecordError(source, f"{name} does not hold a JSON object")
        version = value.get("schema_version", 1)  # written before schema_version existed: version 1
        if not _is_instance(version, int) or version < 1:
            raise RunRecordError(source, f"malformed {name}: schema_version {version!r} is not an integer >= 1")
        if version > SCHEMA_VERSION:
            raise RunRecordError(
                source,
                f"{name} has schema_version {version}, newer than this paraisite reads ({SCHEMA_VERSION}); "
                "upgrade paraisite to read it",
            )
        unknown = sorted(set(value) - _FIELD_NAMES)
        if unknown:
            raise RunRecordError(source, f"malformed {name}: unknown key(s) " + ", ".join(map(repr, unknown)))
        fields = dict(value)
        if isinstance(fields.get("seeds"), str):  # an older writer stored a failed job's seeds as their text
            fields["seeds"] = _seeds_from_text(fields["seeds"])
        try:
            return cls(**fields)
        except (TypeError, ValueError) as error:
            raise RunRecordError(source, f"malformed {name}: {error}") from None


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "status": str,
    "task_name": str,
    "seed": int,
    "seeds": list,
    "data": dict,
    "backbone": str,
    "protocol": str,
    "profile": str,
    "group": str,
    "init": dict,
    "epochs": int,
    "final": dict,
    "config_sha256": str,
    "ensemble": dict,
    "git_revision": str,
    "git_dirty": bool,
    "python": str,
    "versions": dict,
    "best_checkpoint": str,
    "best": dict,
    "cross": dict,
    "holdout": dict,
    "best_mape": dict,
    "seconds": (int, float),
    "pid": int,
    "started": (int, float),
    "error": str,
    "traceback": str,
    "schema_version": int,
}
_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(RunRecord))


def _is_instance(value: Any, expected: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that a bool is not taken for a number."""
    if isinstance(value, bool):
        return expected is bool or (isinstance(expected, tuple) and bool in expected)
    return isinstance(value, expected)


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def _seeds_from_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # refused by the type check, with its value


def read_run_record(path: str | os.PathLike) -> RunRecord:
    """The record in ``path`` (``metrics.json`` or ``ensemble.json``).

    Raises:
        FileNotFoundError: there is no such file.
        RunRecordError: the file cannot be read or parsed, or its record is invalid (see
            :meth:`RunRecord.from_json`); the error names the file and the problem.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunRecordError(path, f"unreadable {path.name}: {error}") from None
    return RunRecord.from_json(value, source=path)


def write_run_record(path: str | os.PathLike, record: RunRecord) -> None:
    """Write ``record`` to ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    text = json.dumps(record.to_json(), indent=2, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def process_alive(pid: Any, started: float | None = None) -> bool:
    """Whether the process a record names still runs on this machine (its ``pid``; ``None`` or junk: no).

    With ``started`` (the record's start time) a process that began after it is another one with a recycled id
    (after a reboot, or in a record restored from another machine): no. Start times come from ``/proc``; where it
    cannot be read, the id alone decides.
    """
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    if started is None:
        return True
    began = process_start_time(int(pid))
    return began is None or began <= started + 1.0


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc``; ``None`` where that is unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name in parentheses
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")


def run_label(seed: int, seeds: Sequence[int] | None = None) -> str:
    """Directory name of a run: ``seed<k>``, or ``seeds<a>-<b>-...`` for an ensemble job (members: ``seed<k>``)."""
    if seeds:
        return "seeds" + "-".join(str(int(s)) for s in seeds)
    return f"seed{int(seed)}"


def run_path(step: str, dataset: str, seed: int, seeds: Sequence[int] | None = None) -> str:
    """Where a run lives inside its sweep directory (``<log_dir>/<group>``): ``<step>/<Dataset>/seed<N>``.

    An ensemble job (``seeds``) is ``<step>/<Dataset>/seeds<a>-<b>-...``; its members are written as the plain
    runs of their seeds beside it. The Hydra sweep layout (``conf/hydra/default.yaml``) and Step III's
    ``init_from`` (``conf/experiment/step3.yaml``) use this function through the ``run_path`` resolver.
    """
    return f"{step}/{dataset}/{run_label(seed, seeds)}"
