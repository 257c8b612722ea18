"""The quantized-model file: what `quantize` and `finetune` hand to the later stages.

A torch file (read with ``weights_only=True``: tensors and plain containers, no code)
holding the Brevitas model's state dict and everything needed to rebuild the module
around it: how to import the float model again (checked by its fingerprint), the target,
the allocation, and each activation quantizer's signedness (set by calibration and not
part of a state dict). It also carries the run so far, so that `report` needs no other
input: accuracies measured, the samples used (`infoq_deploy.data.plan.DataRef`), the fine-tuning
history, stage timings and notes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from infoq_deploy import __version__
from infoq_deploy.allocate.ilp import allocation_bits, check_rules, recost, validate_allocation
from infoq_deploy.core import torch_files
from infoq_deploy.core.atomic import atomic_path
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.targets import Target, load_target, target_ref
from infoq_deploy.data.plan import DataRef, absolute_spec
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.model import ImportedModel
from infoq_deploy.importing.sources import load_model
from infoq_deploy.quantize.ptq import PtqConfig

FORMAT = "infoq-deploy/quantized-model/1"
STAGES = ("ptq", "finetuned")
# What a file must hold, and as what (a damaged or hand-made file is refused, not half-read).
_RECORD = {"source": dict, "model_fingerprint": str, "target": str, "target_name": str, "quant_spec": dict,
           "allocation": dict, "act_signed": dict, "state_dict": dict, "state_sha256": str, "stage": str,
           "accuracies": dict, "data": dict, "model_info": dict, "timings": dict, "notes": list}


@dataclass
class ModelSource:
    """How to import the float model again: the arguments `load_model` took."""

    spec: str
    weights: str | None = None
    input_shape: tuple[int, int, int] | None = None
    data_root: str | None = None

    def to_json(self) -> dict:
        return {"spec": self.spec, "weights": self.weights,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "data_root": self.data_root}

    @staticmethod
    def of(spec: str, weights=None, input_shape=None, data_root=None) -> ModelSource:
        return ModelSource(spec=absolute_spec(spec), weights=absolute_spec(weights),
                           input_shape=None if input_shape is None else tuple(input_shape),
                           data_root=absolute_spec(data_root))


@dataclass
class QuantizedModel:
    qmodel: torch.fx.GraphModule  # calibrated Brevitas model
    model: ImportedModel  # the float model as imported (BatchNorm not folded)
    source: ModelSource
    target: Target
    allocation: dict  # the allocation document (allocation.json)
    stage: str = "ptq"  # "ptq" | "finetuned"
    accuracies: dict[str, float] = field(default_factory=dict)  # float, ptq, finetuned, on data["evaluation"]
    data: dict[str, DataRef] = field(default_factory=dict)  # calibration, evaluation, train
    model_info: dict = field(default_factory=dict)  # inspect_json of the deployed graph, for the report
    finetune: dict | None = None  # FinetuneResult.to_json()
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ptq: dict = field(default_factory=dict)  # quantize.ptq.PtqConfig.to_json(): the algorithm that rounded it

    @property
    def bits(self) -> dict[str, tuple[int, int]]:
        return allocation_bits(self.allocation)

    def state_sha256(self) -> str:
        """Identifies the quantized model, what `verify` checked and `report` matches: its bit-widths
        (which Brevitas keeps out of the state dict, so two allocations can share one) and its
        weights and scales."""
        from infoq_deploy.quantize.brevitas_model import read_bits, read_join_quantizers

        h = hashlib.sha256()
        h.update(json.dumps([sorted(read_bits(self.qmodel).items()), sorted(read_join_quantizers(self.qmodel).items())])
                 .encode())
        for name, t in sorted(self.qmodel.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def save_quantized(path: str | Path, qm: QuantizedModel) -> None:
    from infoq_deploy.quantize.brevitas_model import (
        act_signedness,  # Brevitas is imported on use: `inspect` needs none of it
    )

    if qm.stage not in STAGES:
        raise ValueError(f"stage {qm.stage!r} is not one of {STAGES}")
    obj = {
        "format": FORMAT,
        "tool_version": __version__,
        "source": qm.source.to_json(),
        "model_fingerprint": qm.model.fingerprint,
        "target": target_ref(qm.target),
        "target_name": qm.target.name,
        "quant_spec": dataclasses.asdict(qm.target.quant_spec()),
        "allocation": qm.allocation,
        "act_signed": act_signedness(qm.qmodel),
        "state_dict": qm.qmodel.state_dict(),
        "state_sha256": qm.state_sha256(),
        "stage": qm.stage,
        "accuracies": dict(qm.accuracies),
        "data": {k: v.to_json() for k, v in qm.data.items()},
        "model_info": qm.model_info,
        "finetune": qm.finetune,
        "timings": dict(qm.timings),
        "notes": list(qm.notes),
        "ptq": dict(qm.ptq),
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_quantized(path: str | Path) -> dict:
    """The file's record without rebuilding the model (tensors included)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"quantized model file {path} does not exist; run `infoq-deploy quantize` first or fix the path")
    obj = torch_files.load(path, what="a quantized model",
                           fix="pass the .pt file `infoq-deploy quantize` or `finetune` wrote")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not an infoq-deploy quantized model file; pass the .pt file "
                        "`infoq-deploy quantize` or `finetune` wrote")
    for key, kind in _RECORD.items():
        if not isinstance(obj.get(key), kind):
            raise UserError(f"{path} is damaged: its '{key}' is missing or not a {kind.__name__}; "
                            "quantize the model again")
    if obj["stage"] not in STAGES:
        raise UserError(f"{path} is damaged: its stage {obj['stage']!r} is not one of {', '.join(STAGES)}; "
                        "quantize the model again")
    return obj


def load_quantized(path: str | Path) -> QuantizedModel:
    """Rebuild the Brevitas model a `save_quantized` file describes, exactly."""
    obj = read_quantized(path)
    try:
        return _rebuild(obj, path)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        # the record's parts do not fit together: a damaged or hand-edited file, not our bug to show
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        "quantize the model again") from None


def _rebuild(obj: dict, path) -> QuantizedModel:
    from infoq_deploy.quantize.brevitas_model import build_quant_model, read_bits, restore_calibration

    src = obj["source"]
    source = ModelSource(spec=src["spec"], weights=src["weights"],
                         input_shape=None if src["input_shape"] is None else tuple(src["input_shape"]),
                         data_root=src["data_root"])
    model = load_model(source.spec, weights=source.weights, input_shape=source.input_shape, data_root=source.data_root)
    if model.fingerprint != obj["model_fingerprint"]:
        raise UserError(f"{source.spec} no longer loads the model {path} was quantized from (its weights or "
                        "definition changed); quantize it again")
    ptq = PtqConfig.from_json(obj.get("ptq"))
    target = load_target(obj["target"]).with_scale_rule(ptq.scale_rule)
    spec = dataclasses.asdict(target.quant_spec())
    if "scale_rule" not in obj["quant_spec"]:  # written before scale rules: minmax, as from_json says
        spec.pop("scale_rule")
    if target.name != obj["target_name"] or spec != obj["quant_spec"]:
        raise UserError(f"target {obj['target']} has changed since {path} was written (its quantizer differs); "
                        "quantize again")
    deployed = deployable(model)
    allocation = validate_allocation(obj["allocation"], f"the allocation inside {path}")
    check_rules(allocation, deployed.layers, target, f"the allocation inside {path}")
    allocation = recost(allocation, deployed.layers, target)
    bits = allocation_bits(allocation)
    qmodel = build_quant_model(deployed.graph, deployed.layers, bits, target.quant_spec(),
                               pool_inputs=target.activations.pool_inputs)
    restore_calibration(qmodel, obj["act_signed"])
    qmodel.load_state_dict(obj["state_dict"])
    qmodel.eval()
    if read_bits(qmodel) != bits:
        raise RuntimeError(f"the model rebuilt from {path} does not carry its allocation; this is a bug")
    qm = QuantizedModel(
        qmodel=qmodel, model=model, source=source, target=target, allocation=allocation, stage=obj["stage"],
        accuracies=dict(obj["accuracies"]), data={k: DataRef.from_json(v) for k, v in obj["data"].items()},
        model_info=obj["model_info"], finetune=obj["finetune"], timings=dict(obj["timings"]), notes=list(obj["notes"]),
        ptq=ptq.to_json() if obj.get("ptq") else {},
    )
    if qm.state_sha256() != obj["state_sha256"]:
        raise UserError(f"the model rebuilt from {path} differs from the one saved (the file is damaged or "
                        "from another version of infoq-deploy); quantize again")
    return qm
