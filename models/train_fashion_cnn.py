"""Recipe for the bundled default model: train FashionCNN on Fashion-MNIST.

    OMP_NUM_THREADS=1 python models/train_fashion_cnn.py --epochs 8 --seed 0 --out models/fashion_cnn.pt

Needs ``apt-get install dataset-fashion-mnist``. Writes, beside ``--out``:
the state dict (``fashion_cnn.pt``), the training record (``fashion_cnn.json``)
and the bundled subset ``fashion_calib.npz`` (1,000 calibration images from
the training set, 1,000 evaluation images from the test set, uint8, seeded and
class-stratified). Deterministic on CPU for a given seed and thread count (the
committed weights were trained with OMP_NUM_THREADS=1: on a busy 2-core machine
two OpenMP threads spend most of their time waiting for each other).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from infoq_deploy.models.fashion_cnn import PREPROCESS, build

from infoq_deploy.core.atomic import atomic_path, write_json
from infoq_deploy.data.load import load_data, normalise, read_fashion_mnist, stratified_indices

SUBSET_SIZE = 1000


def augment(x: torch.Tensor, gen: torch.Generator, background: float) -> torch.Tensor:
    """Random shift by up to 2 pixels (padding with the normalised 0) and horizontal flip."""
    b, _, h, w = x.shape
    xp = F.pad(x, (2, 2, 2, 2), value=background)
    dy = torch.randint(0, 5, (b,), generator=gen)
    dx = torch.randint(0, 5, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    x = xp[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(args.seed)
    train_ds = load_data("fashion-mnist:train", PREPROCESS)
    test_ds = load_data("fashion-mnist:test", PREPROCESS)
    background = (0.0 - PREPROCESS.mean[0]) / PREPROCESS.std[0]

    model = build()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(train_ds) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch // 2
    # Linear warm-up then cosine decay to 0, stepped per batch.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train_ds), generator=gen)
        running = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb = augment(train_ds.x[idx], gen, background)
            loss = F.cross_entropy(model(xb), train_ds.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        acc = accuracy(model, test_ds.x, test_ds.y)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {running / len(train_ds):.4f}, "
              f"test acc {acc:.2f}%, {time.time() - t0:.0f}s", flush=True)
    train_seconds = time.time() - t0
    model.eval()
    return {"model": model, "test_accuracy": accuracy(model, test_ds.x, test_ds.y),
            "train_seconds": train_seconds}


def write_subset(path: Path, seed: int) -> dict:
    x_tr, y_tr = read_fashion_mnist("train")
    x_te, y_te = read_fashion_mnist("test")
    ci = stratified_indices(y_tr, SUBSET_SIZE, seed)
    ei = stratified_indices(y_te, SUBSET_SIZE, seed)
    arrays = {"calib_x": x_tr[ci], "calib_y": y_tr[ci], "eval_x": x_te[ei], "eval_y": y_te[ei]}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return arrays


def save_state_dict(state: dict, path: Path) -> None:
    # Through a buffer: torch.save names the zip's root folder after the file,
    # and the atomic temp name is random, so bytes (and sha256) would differ.
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command(argv: list[str] | None) -> str:
    # Thread count changes float summation order, so it is part of the recipe.
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return env + " ".join(["python", "models/train_fashion_cnn.py", *(argv if argv is not None else sys.argv[1:])])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("fashion_cnn.pt"))
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--subset-seed", type=int, default=0, help="seed of the bundled calib/eval draw")
    args = ap.parse_args(argv)

    result = train(args)
    model = result["model"]
    out: Path = args.out
    save_state_dict(model.state_dict(), out)
    subset_path = out.with_name("fashion_calib.npz")
    arrays = write_subset(subset_path, args.subset_seed)
    eval_x = normalise(arrays["eval_x"][:, None], PREPROCESS)
    eval_acc = accuracy(model, eval_x, torch.from_numpy(arrays["eval_y"].astype(np.int64)))

    record = {
        "model": "infoq_deploy.models.fashion_cnn:build",
        "params": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "optimizer": "SGD momentum 0.9 nesterov, no decay on biases/BN; half-epoch linear warm-up, cosine to 0",
        "augmentation": "random shift up to 2 px, horizontal flip",
        "test_accuracy": round(result["test_accuracy"], 2),
        "test_images": 10000,
        "eval_subset_accuracy": round(eval_acc, 2),
        "eval_subset": "builtin:fashion-mnist:eval (eval_x/eval_y, 1,000 test images)",
        "calib_subset": "builtin:fashion-mnist (calib_x/calib_y, 1,000 training images)",
        "subset_seed": args.subset_seed,
        "command": command(argv),
        "weights_sha256": sha256(out),
        "subset_sha256": sha256(subset_path),
        "train_seconds": round(result["train_seconds"], 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out.with_suffix(".json"), record)
    print(json.dumps({k: record[k] for k in ("test_accuracy", "eval_subset_accuracy", "weights_sha256")}))


if __name__ == "__main__":
    main()
