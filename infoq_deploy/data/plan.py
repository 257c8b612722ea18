"""Which samples each stage uses, recorded so that a later stage reloads exactly them.

A stage run as its own subcommand (another process, maybe another day) finds in the
quantized-model file how its calibration, evaluation and training sets were drawn: the
source as `load_data` takes it, the subset (limit, seed, which half of a split) and the
content hash. `load_ref` redraws the set and refuses it when the bytes changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from infoq_deploy.core.errors import UserError
from infoq_deploy.data.load import Dataset, load_data, split
from infoq_deploy.importing.model import Preprocess

PARTS = ("all", "first half", "second half")


def absolute_spec(spec: str | None) -> str | None:
    """``spec`` with a local file made absolute, so the record holds from any directory.

    Specs that are not local paths (``builtin:NAME``, ``zoo:NAME``, ``torchvision:NAME``)
    are kept as given; so is ``file.py:factory`` apart from its file part.
    """
    if spec is None:
        return None
    text = str(spec)
    if ".py:" in text:
        file, factory = text.rsplit(":", 1)
        return f"{Path(file).resolve()}:{factory}" if Path(file).is_file() else text
    return str(Path(text).resolve()) if Path(text).exists() else text


@dataclass(frozen=True)
class DataRef:
    source: str  # as load_data takes it
    labels: str | None
    limit: int | None
    seed: int
    part: str  # one of PARTS: "first half"/"second half" of a seeded class-balanced split
    n: int
    sha256: str

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> DataRef:
        return DataRef(**{k: d[k] for k in DataRef.__dataclass_fields__})


def load_ref(ref: DataRef, preprocess: Preprocess, role: str) -> Dataset:
    """The samples ``ref`` names, or UserError when they are no longer the recorded ones."""
    ds = load_data(ref.source, preprocess, limit=ref.limit, seed=ref.seed, labels=ref.labels)
    if ref.part != "all":
        first, second = split(ds, len(ds) // 2, seed=ref.seed)
        ds = first if ref.part == "first half" else second
    if ds.sha256 != ref.sha256:
        raise UserError(
            f"the {role} data {ref.source} is not what it was when this model was quantized (content hash differs); "
            f"pass the {role} data explicitly"
        )
    return ds


def load_one(source: str, preprocess: Preprocess, *, limit: int | None, seed: int,
             labels: str | None = None) -> tuple[Dataset, DataRef]:
    ds = load_data(source, preprocess, limit=limit, seed=seed, labels=labels)
    ref = DataRef(source=absolute_spec(source), labels=absolute_spec(labels), limit=limit, seed=seed, part="all",
                  n=len(ds), sha256=ds.sha256)
    return ds, ref


@dataclass
class DataPlan:
    calibration: Dataset
    evaluation: Dataset | None
    train: Dataset
    refs: dict[str, DataRef]  # "calibration", "evaluation" (when there is one), "train"
    notes: list[str]


def plan_datasets(preprocess: Preprocess, *, data: str | None, eval_data: str | None = None,
                  train_data: str | None = None, labels: str | None = None, calib_size: int | None = None,
                  eval_size: int | None = None, train_size: int | None = None, seed: int = 0,
                  require_eval: bool = True) -> DataPlan:
    """Calibration, evaluation and fine-tuning sets; evaluation never overlaps calibration.

    Without ``eval_data`` half of ``data`` is held out (seeded, class-balanced). With
    ``require_eval=False`` and no ``eval_data`` nothing is held out and there is no
    evaluation set.
    """
    if data is None:
        raise UserError("no calibration data; pass --data (an image folder, a .tar.gz of one, .npz/.pt or builtin:NAME)")
    calib, calib_ref = load_one(data, preprocess, limit=calib_size, seed=seed, labels=labels)
    refs, notes = {"calibration": calib_ref}, []
    evaluation = None
    if eval_data is not None:
        evaluation, refs["evaluation"] = load_one(eval_data, preprocess, limit=eval_size, seed=seed)
    elif require_eval:
        if len(calib) < 4:
            raise UserError(f"{data} holds {len(calib)} samples, too few to hold some out; pass --eval-data")
        calib, evaluation = split(calib, len(calib) // 2, seed=seed)
        refs["calibration"] = DataRef(**dict(asdict(calib_ref), part="first half", n=len(calib), sha256=calib.sha256))
        refs["evaluation"] = DataRef(**dict(asdict(calib_ref), part="second half", n=len(evaluation),
                                            sha256=evaluation.sha256))
        notes.append(f"no --eval-data: half of {data} ({len(evaluation)} samples) was held out for evaluation")
    if evaluation is not None and evaluation.y is None:
        raise UserError("the evaluation data has no labels, so accuracy cannot be measured; pass labelled --eval-data")
    if train_data is None:
        train, refs["train"] = calib, refs["calibration"]
    else:
        train, refs["train"] = load_one(train_data, preprocess, limit=train_size, seed=seed)
    return DataPlan(calibration=calib, evaluation=evaluation, train=train, refs=refs, notes=notes)
