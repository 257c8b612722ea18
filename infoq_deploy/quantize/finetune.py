"""Quantization-aware fine-tuning, LSQ style: weights and quantizer scales learn together.

The Brevitas model keeps its scales as ``nn.Parameter``s (``...scaling_impl.value``);
LSQ (Esser et al., 2020) trains them by straight-through gradients with the same
optimizer as the weights. Choices, and why:

- Adam, not SGD: the gradients of scales and of weights differ by orders of
  magnitude (LSQ needs a hand-tuned gradient scale 1/sqrt(N*Qp) to make SGD work);
  Adam normalises every parameter's step by its own gradient statistics, so no
  per-layer gradient scaling is needed and one learning rate works across layers.
- Scales get a relative learning rate (``scale_lr`` x the scale's mean size): Brevitas
  stores a scale as its clipping range, ~0.1 for weights and ~1..20 for activations,
  and Adam's step is about the learning rate in absolute terms, so no single absolute
  rate suits both.
- Brevitas rebuilds its quantizers (fresh scale Parameters) inside ``load_state_dict``:
  an optimizer made before a load would train orphaned tensors, so on resume the
  model is loaded first and the optimizer made after.
- No weight decay on scales or biases (decaying a scale shrinks the clipping range,
  which is not what it should learn); decoupled (AdamW) decay on weights, off by
  default because a short fine-tune from trained weights gains nothing from it.
- Cosine decay per epoch, ``lr_e = lr * (1 + cos(pi * e / epochs)) / 2``, in closed
  form: an epoch's learning rate depends only on (epoch, epochs), so a resumed run
  and an uninterrupted one take identical steps.
- Determinism: the shuffle and augmentation of epoch ``e`` come from a generator
  seeded with ``(seed, e)``, and the global RNG (dropout) is re-seeded from the same
  pair inside a forked RNG state; a checkpoint therefore only needs the epoch.
- Augmentation (``augment="auto"``): for 3x32x32 inputs (CIFAR-style) a random
  crop after 4-pixel zero padding of the normalised image (i.e. padding with the
  mean colour) and a horizontal flip with p=0.5; none for other shapes.
- Defaults (Adam lr 1e-4 for weights, scales 1e-3 of their own size per step), measured
  on the zoo ResNet-20, CIFAR-10 JPEG, po2 scales, 3-bit weights / 4-bit activations
  inside, 8/8 first and last; 10,000 training images, batch 128, accuracy on 2,000 test
  images (float 80.3%): PTQ 23.5% -> 64.5% after one epoch -> 69.2% after two. Ten times
  both rates (1e-3 / 1e-2) diverged: 18.6% after one epoch.
- The starting (calibrated, PTQ) model counts as epoch 0 when picking the best, so
  fine-tuning never hands back a model worse on the evaluation set than it got.
- Under ``torchrun`` (``core/distributed.py``): DistributedDataParallel over the same
  Brevitas model, so the learned scales are trained and all-reduced like every other
  parameter. Every rank draws the same shuffle and augmentation and takes its contiguous
  slice of each batch, its summed loss scaled by ranks / batch, so DDP's mean of the ranks'
  gradients is the gradient of the whole batch: the same steps as one process, up to the
  order of floating-point sums. Evaluation is split over the ranks and the counts summed;
  rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from infoq_deploy.core import devices, distributed, torch_files
from infoq_deploy.core.atomic import atomic_path
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.evaluate import accuracy, predict
from infoq_deploy.data.load import Dataset

CHECKPOINT_FORMAT = "infoq-deploy/finetune-checkpoint/1"
AUGMENTS = ("auto", "none", "crop-flip")
_PAD = 4


@dataclass
class FinetuneConfig:
    epochs: int
    lr: float = 1e-4  # Adam, for weights and biases
    scale_lr: float | None = 1e-3  # Adam, for quantizer scales, relative to each scale's size; None = lr, absolute
    batch_size: int = 128
    weight_decay: float = 0.0  # decoupled, weights only
    augment: str = "auto"  # "auto" | "none" | "crop-flip"
    seed: int = 0

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise UserError(f"fine-tuning epochs must be a whole number >= 0, got {self.epochs!r}")
        for name in ("lr", "scale_lr"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise UserError(f"fine-tuning {name} must be a positive number, got {v!r}")
        if self.batch_size < 1:
            raise UserError(f"fine-tuning batch size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if self.augment not in AUGMENTS:
            raise UserError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")


@dataclass
class FinetuneResult:
    epochs_run: int  # epochs trained in this call plus any resumed ones; 0 = no fine-tuning
    best_epoch: int  # 0 = the starting model was never beaten
    best_accuracy: float | None  # on the eval set; None when epochs == 0 (nothing evaluated)
    history: list[dict]  # per epoch: epoch, lr, loss, train_acc, eval_acc, seconds
    checkpoint: Path | None  # best.pt; None when epochs == 0
    start_accuracy: float | None = None  # the model as given, on the eval set
    resumed_from: int = 0  # epochs already done in last.pt when resuming
    note: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["checkpoint"] = None if self.checkpoint is None else str(self.checkpoint)
        return d


# ---------------------------------------------------------------- parameters

def is_scale_param(name: str) -> bool:
    """A Brevitas learned scale, e.g. ``weight_quant.tensor_quant.scaling_impl.value``."""
    return "scaling_impl" in name and name.rsplit(".", 1)[-1] in ("value", "learned_value")


def scale_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad and is_scale_param(n)}


def _param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """Weights (decayed), biases/other quantizer state, and one group per scale tensor.

    Each scale gets ``scale_lr * mean|value|``: Brevitas stores a scale as its clipping
    range (max|w| ~ 0.1 for weights, max|x| ~ 1..20 for activations), and Adam's step is
    about the learning rate in absolute terms, so a relative rate moves every scale by
    the same fraction of itself per step.
    """
    scales, decayed, plain = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_scale_param(name):
            scales.append((name, p))
        elif "_quant." in name or p.dim() <= 1:  # other quantizer state, biases
            plain.append(p)
        else:
            decayed.append(p)
    groups = [
        {"name": "weights", "params": decayed, "base_lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"name": "biases", "params": plain, "base_lr": cfg.lr, "weight_decay": 0.0},
    ]
    for name, p in scales:
        size = float(p.detach().abs().mean())
        lr = cfg.scale_lr * size if cfg.scale_lr is not None and size > 0 else cfg.lr
        groups.append({"name": name, "params": [p], "base_lr": lr, "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = g["base_lr"]
    return groups


def _optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _settle_runtime_stats(model: nn.Module) -> None:
    """Freeze activation scales still collecting runtime statistics into learned values.

    Brevitas' ParameterFromRuntimeStats keeps collecting statistics for its first
    training steps; a checkpoint saved mid-collection reloads as "finished", so a
    resumed run would diverge. Fine-tuning starts from the calibrated values instead.
    """
    for name, m in model.named_modules():
        if hasattr(m, "collect_stats_steps") and hasattr(m, "counter") and hasattr(m, "init_scale"):
            if m.counter == 0:
                raise ValueError(f"quantizer {name} was never calibrated; calibrate the model before fine-tuning")
            if m.counter <= m.collect_stats_steps:
                m.init_scale()


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


# ---------------------------------------------------------------- data

def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


def _augment_mode(cfg: FinetuneConfig, x: torch.Tensor) -> str:
    if cfg.augment != "auto":
        return cfg.augment
    return "crop-flip" if tuple(x.shape[1:]) == (3, 32, 32) else "none"


def crop_flip(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop of the 4-pixel zero-padded batch back to its size, then a random h-flip."""
    n, c, h, w = xb.shape
    dy = torch.randint(0, 2 * _PAD + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * _PAD + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    padded = F.pad(xb, (_PAD, _PAD, _PAD, _PAD))
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = dx[:, None] + torch.arange(w)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


# ---------------------------------------------------------------- checkpoints

def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path) -> dict:
    return torch_files.load(path, what="a fine-tuning checkpoint", fix="delete it or pick another run directory")


def _config_key(cfg: FinetuneConfig) -> dict:
    # epochs is left out: extending a finished run is a legitimate resume
    d = asdict(cfg)
    d.pop("epochs")
    return d


def _check_checkpoint(ckpt: dict, path: Path, identity: dict, cfg: FinetuneConfig) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an infoq-deploy fine-tuning checkpoint; delete it or pick another run directory")
    if ckpt.get("identity") != identity:
        raise UserError(
            f"checkpoint {path} was written for another model/allocation; delete it or pick another run directory"
        )
    if ckpt.get("config") != _config_key(cfg):
        raise UserError(
            f"checkpoint {path} was written with other fine-tuning settings ({ckpt.get('config')}); "
            "resume with the same settings, or delete it to start over"
        )


# ---------------------------------------------------------------- training

def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, train: Dataset, cfg: FinetuneConfig,
                 epoch: int, augment: str, progress: bool) -> tuple[float, float]:
    """One epoch; ``model`` is the Brevitas model, or its DDP wrapper under torchrun."""
    w = distributed.world()
    n = len(train)
    seed = _epoch_seed(cfg.seed, epoch)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    device = devices.of(model)
    total_loss, correct, seen = 0.0, 0, 0
    n_batches = math.ceil(n / cfg.batch_size)
    bar = tqdm(total=n_batches, desc=f"fine-tune epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not progress, leave=False, dynamic_ncols=True, file=sys.stderr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb, yb = train.x[idx], train.y[idx]
            if augment == "crop-flip":
                xb = crop_flip(xb, g)  # the whole batch on every rank: the generator stays in step
            split = w.distributed and len(idx) >= w.size
            if split:  # this rank's slice; a batch smaller than the world is run whole by every rank
                part = torch.arange(len(idx)).tensor_split(w.size)[w.rank]
                xb, yb = xb[part], yb[part]
            xb, yb = xb.to(device), yb.to(device)
            out = model(xb)
            logits = out if isinstance(out, torch.Tensor) else out.value
            if split:  # DDP averages the ranks' gradients: ranks / batch makes that the whole batch's mean
                loss = F.cross_entropy(logits, yb, reduction="sum") * (w.size / len(idx))
                batch_loss = loss.item() * len(idx) / w.size
            else:
                loss = F.cross_entropy(logits, yb)
                batch_loss = loss.item() * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if split or w.main:  # a batch every rank ran whole is counted once
                total_loss += batch_loss
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += len(yb)
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}", acc=f"{correct / max(seen, 1):.4f}")
    bar.close()
    if w.distributed:
        total_loss, correct, seen = distributed.all_sum([total_loss, correct, seen])
    return total_loss / seen, correct / seen


def _accuracy(qmodel: nn.Module, data: Dataset) -> float:
    """Top-1 on ``data``; under torchrun each rank predicts its contiguous share and the counts are summed."""
    w = distributed.world()
    if not w.distributed:
        return accuracy(qmodel, data.x, data.y)
    part = torch.arange(len(data)).tensor_split(w.size)[w.rank]
    right = 0
    if len(part):
        x, y = data.x[part], data.y[part]
        right = int((predict(qmodel, x).argmax(1) == y).sum())
    right, = distributed.all_sum([right])
    return right / len(data)


def _check_data(train: Dataset, eval: Dataset) -> None:
    if train.y is None or len(train) == 0:
        raise UserError(f"fine-tuning needs labelled training images, but {train.source} has none; give a labelled training set")
    if eval.y is None or len(eval) == 0:
        raise UserError(f"fine-tuning needs labelled evaluation images, but {eval.source} has none; give a labelled evaluation set")
    if tuple(train.x.shape[1:]) != tuple(eval.x.shape[1:]):
        raise UserError(
            f"training images are {tuple(train.x.shape[1:])} but evaluation images are {tuple(eval.x.shape[1:])}; "
            "load both with the model's preprocessing"
        )


def finetune(qmodel: nn.Module, train: Dataset, eval: Dataset, cfg: FinetuneConfig, ckpt_dir: Path,
             identity: dict, resume: bool = False, progress: bool = True,
             device: torch.device | str = "cpu") -> FinetuneResult:
    """Fine-tune ``qmodel`` in place; on return it holds the best weights seen on ``eval``.

    ``ckpt_dir/last.pt`` is written after every epoch and ``ckpt_dir/best.pt`` whenever
    eval accuracy improves. ``resume=True`` continues from ``last.pt`` when there is one
    (starting fresh otherwise); the result equals that of an uninterrupted run. Training runs on
    ``device`` (``core/devices.py``); ``qmodel`` is handed back on the CPU.
    """
    cfg.validate()
    if cfg.epochs == 0:
        return FinetuneResult(epochs_run=0, best_epoch=0, best_accuracy=None, history=[], checkpoint=None,
                              note="epochs=0: no fine-tuning")
    _check_data(train, eval)
    ckpt_dir = Path(ckpt_dir)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    _settle_runtime_stats(qmodel)
    augment = _augment_mode(cfg, train.x)
    device = torch.device(device)
    qmodel.to(device)  # before the optimizer: its state lives on its parameters' device

    w = distributed.world()
    if resume and last_path.is_file():
        ckpt = _load(last_path)
        _check_checkpoint(ckpt, last_path, identity, cfg)
        # Brevitas rebuilds its quantizers (new scale Parameters) on load_state_dict,
        # so the optimizer must be made after loading, never before.
        qmodel.load_state_dict(ckpt["model"])
        qmodel.to(device)  # the scale Parameters Brevitas rebuilt in the load
        opt = _optimizer(qmodel, cfg)
        opt.load_state_dict(ckpt["optimizer"])  # also restores each group's base_lr
        start_epoch = int(ckpt["epoch"])
        history = list(ckpt["history"])
        best_epoch, best_acc = int(ckpt["best_epoch"]), float(ckpt["best_accuracy"])
        start_acc = float(ckpt["start_accuracy"])
        if not best_path.is_file():
            raise UserError(f"{best_path} is missing although {last_path} is there; delete {ckpt_dir} to start over")
    else:
        opt = _optimizer(qmodel, cfg)
        start_epoch, history = 0, []
        start_acc = _accuracy(qmodel, eval)
        best_epoch, best_acc = 0, start_acc
        distributed.barrier()  # every rank has looked for last.pt before rank 0 removes it
        if w.main:
            last_path.unlink(missing_ok=True)  # an older run's last.pt must not pair with this best.pt
            _save({"format": CHECKPOINT_FORMAT, "identity": identity, "epoch": 0, "accuracy": best_acc,
                   "model": qmodel.state_dict()}, best_path)

    # under torchrun: DDP made after any load (Brevitas rebuilds its scale Parameters there);
    # it starts every rank from rank 0's parameters and all-reduces the gradients
    model = torch.nn.parallel.DistributedDataParallel(
        qmodel, device_ids=[device.index] if device.type == "cuda" else None) if w.distributed else qmodel
    progress = progress and w.main
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = cosine_lr(group["base_lr"], epoch, cfg.epochs)
        loss, train_acc = _train_epoch(model, opt, train, cfg, epoch, augment, progress)
        eval_acc = _accuracy(qmodel, eval)
        history.append({"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": loss, "train_acc": train_acc,
                        "eval_acc": eval_acc, "seconds": round(time.perf_counter() - t0, 3)})
        if progress:
            tqdm.write(f"fine-tune epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}, "
                       f"train acc {train_acc:.4f}, eval acc {eval_acc:.4f}", file=sys.stderr)
        if eval_acc > best_acc:
            best_epoch, best_acc = epoch + 1, eval_acc
            if w.main:
                _save({"format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch + 1, "accuracy": eval_acc,
                       "model": qmodel.state_dict()}, best_path)
        if not w.main:
            continue
        # last.pt after best.pt: a crash between the two leaves a last.pt that is
        # at most one epoch behind, never a best.pt older than last.pt claims.
        _save({
            "format": CHECKPOINT_FORMAT, "identity": identity, "config": _config_key(cfg),
            "epoch": epoch + 1, "model": qmodel.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": {"kind": "cosine-per-epoch", "epochs": cfg.epochs,
                          "base_lrs": [g["base_lr"] for g in opt.param_groups]},
            "rng": {"seed": cfg.seed, "derivation": "generator and torch seed = seed * 1000003 + epoch"},
            "history": history, "best_epoch": best_epoch, "best_accuracy": best_acc, "start_accuracy": start_acc,
        }, last_path)

    distributed.barrier()  # rank 0 has written best.pt
    best = _load(best_path)
    qmodel.load_state_dict(best["model"])
    qmodel.cpu()
    note = "the starting model stayed best on the evaluation set" if best_epoch == 0 else ""
    return FinetuneResult(epochs_run=len(history), best_epoch=best_epoch, best_accuracy=best_acc, history=history,
                          checkpoint=best_path, start_accuracy=start_acc, resumed_from=start_epoch, note=note)
