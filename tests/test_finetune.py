"""LSQ-style fine-tuning on a tiny CNN and learnable synthetic data (two blobs, left or right)."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

import infoq_deploy.quantize.finetune as ft
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.evaluate import accuracy, predict
from infoq_deploy.core.quantizer import QuantSpec
from infoq_deploy.data.load import Dataset
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate
from infoq_deploy.quantize.finetune import FinetuneConfig, crop_flip, finetune, scale_parameters

SIZE = 8
IDENTITY = {"model_fingerprint": "toy-cnn", "allocation_hash": "w2a2", "target": "test"}
# a tiny model needs a bolder step than the defaults made for trained ImageNet/CIFAR nets
CFG = dict(lr=1e-2, scale_lr=1e-2, batch_size=32)


def blobs(n: int, seed: int, noise: float = 0.4) -> Dataset:
    """A Gaussian blob left (class 0) or right (class 1) of an 8x8 RGB image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    cx = torch.where(y == 1, 5.5, 1.5) + 0.7 * torch.randn(n, generator=g)
    cy = 3.5 + 0.7 * torch.randn(n, generator=g)
    blob = torch.exp(-((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) / 3.0)
    x = blob[:, None].repeat(1, 3, 1, 1) + noise * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return Dataset(x=x, y=y, classes=["left", "right"], source=f"blobs:{seed}", sha256=str(seed))


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )
    train, evals = blobs(256, 1), blobs(256, 2)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(15):
        for i in range(0, len(train), 64):
            loss = nn.functional.cross_entropy(net(train.x[i:i + 64]), train.y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    gm = torch.fx.symbolic_trace(net.eval())
    return gm, build_layer_table(gm, (3, SIZE, SIZE)), train, evals


def quantized(toy, w_bits=2, a_bits=2):
    gm, layers, train, _ = toy
    q = build_quant_model(gm, layers, {l.name: (w_bits, a_bits) for l in layers}, QuantSpec())
    calibrate(q, train.x)
    return q


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accuracy_and_predict_agree_with_a_direct_computation(toy):
    gm, _, _, evals = toy
    logits = gm(evals.x).detach()
    assert torch.allclose(predict(gm, evals.x, batch_size=37), logits, atol=1e-6)
    expected = (logits.argmax(1) == evals.y).float().mean().item()
    assert accuracy(gm, evals.x, evals.y, batch_size=37) == pytest.approx(expected)


def test_finetuning_recovers_accuracy_and_learns_scales(toy, tmp_path, capsys):
    gm, _, train, evals = toy
    float_acc = accuracy(gm, evals.x, evals.y)
    q = quantized(toy)
    ptq_acc = accuracy(q, evals.x, evals.y)
    assert ptq_acc < float_acc - 0.1, "the quantized toy must start clearly below float for this test to mean anything"

    scales = {n: p.detach().clone() for n, p in scale_parameters(q).items()}
    assert any("weight_quant" in n for n in scales) and any("input_quant" in n for n in scales)

    result = finetune(q, train, evals, FinetuneConfig(epochs=4, **CFG), tmp_path, IDENTITY, progress=True)
    captured = capsys.readouterr()
    assert "fine-tune epoch 4/4" in captured.err and captured.out == ""  # progress on stderr only

    assert result.start_accuracy == pytest.approx(ptq_acc)
    assert result.best_accuracy > ptq_acc + 0.1
    assert result.epochs_run == 4 and len(result.history) == 4
    assert accuracy(q, evals.x, evals.y) == pytest.approx(result.best_accuracy)  # the model holds the best weights
    moved = [n for n, p in scale_parameters(q).items() if not torch.equal(p.detach(), scales[n])]
    assert any("weight_quant" in n for n in moved), "no weight scale was trained: LSQ is not live"
    assert any("input_quant" in n for n in moved), "no activation scale was trained: LSQ is not live"
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(CFG["lr"]) and all(a > b for a, b in zip(lrs, lrs[1:]))  # cosine decay


def test_resume_equals_uninterrupted_run(toy, tmp_path):
    _, _, train, evals = toy
    cfg = dict(CFG, augment="crop-flip")  # augmentation's RNG must resume too
    straight = quantized(toy)
    r_straight = finetune(straight, train, evals, FinetuneConfig(epochs=2, **cfg), tmp_path / "a", IDENTITY,
                          progress=False)

    first = quantized(toy)
    finetune(first, train, evals, FinetuneConfig(epochs=1, **cfg), tmp_path / "b", IDENTITY, progress=False)
    resumed = quantized(toy)  # a fresh process would rebuild the model from scratch
    r_resumed = finetune(resumed, train, evals, FinetuneConfig(epochs=2, **cfg), tmp_path / "b", IDENTITY,
                         resume=True, progress=False)

    assert r_resumed.resumed_from == 1
    assert same_state(straight.state_dict(), resumed.state_dict())
    last_a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    last_b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert same_state(last_a["model"], last_b["model"])
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(r_straight.history) == strip(r_resumed.history)
    assert (r_straight.best_epoch, r_straight.best_accuracy) == (r_resumed.best_epoch, r_resumed.best_accuracy)


def test_resume_refuses_another_models_checkpoint(toy, tmp_path):
    _, _, train, evals = toy
    finetune(quantized(toy), train, evals, FinetuneConfig(epochs=1, **CFG), tmp_path, IDENTITY, progress=False)
    other = dict(IDENTITY, allocation_hash="w4a4")
    with pytest.raises(UserError, match="another model/allocation"):
        finetune(quantized(toy), train, evals, FinetuneConfig(epochs=2, **CFG), tmp_path, other, resume=True,
                 progress=False)
    with pytest.raises(UserError, match="other fine-tuning settings"):
        finetune(quantized(toy), train, evals, FinetuneConfig(epochs=2, **dict(CFG, lr=1e-3)), tmp_path, IDENTITY,
                 resume=True, progress=False)


def test_best_checkpoint_is_kept_and_restored(toy, tmp_path, monkeypatch):
    _, _, train, evals = toy
    reference = quantized(toy)
    finetune(reference, train, evals, FinetuneConfig(epochs=1, **CFG), tmp_path / "ref", IDENTITY, progress=False)

    # Scripted evaluation: start 0.5, epoch 1 best (0.9), epoch 2 worse (0.6).
    scripted = iter([0.5, 0.9, 0.6])
    monkeypatch.setattr(ft, "accuracy", lambda *a, **k: next(scripted))
    q = quantized(toy)
    result = finetune(q, train, evals, FinetuneConfig(epochs=2, **CFG), tmp_path / "run", IDENTITY, progress=False)

    assert (result.best_epoch, result.best_accuracy) == (1, 0.9)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert best["epoch"] == 1 and last["epoch"] == 2
    assert not same_state(best["model"], last["model"])
    # the model was handed back with epoch 1's weights, which a 1-epoch run reproduces
    assert same_state(q.state_dict(), best["model"])
    assert same_state(q.state_dict(), reference.state_dict())


def test_zero_epochs_trains_nothing(toy, tmp_path):
    _, _, train, evals = toy
    q = quantized(toy)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    result = finetune(q, train, evals, FinetuneConfig(epochs=0), tmp_path / "ck", IDENTITY, progress=False)
    assert result.epochs_run == 0 and result.checkpoint is None and "no fine-tuning" in result.note
    assert same_state(before, q.state_dict())
    assert not (tmp_path / "ck").exists()


def test_unlabelled_training_data_is_refused(toy, tmp_path):
    _, _, train, evals = toy
    unlabelled = Dataset(x=train.x, y=None, classes=None, source="folder:unlabelled", sha256="")
    with pytest.raises(UserError, match="labelled training images"):
        finetune(quantized(toy), unlabelled, evals, FinetuneConfig(epochs=1), tmp_path, IDENTITY, progress=False)


def test_crop_flip_is_seeded_and_keeps_pixels():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    a = crop_flip(x, torch.Generator().manual_seed(3))
    b = crop_flip(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    for i in range(2):  # every pixel is an input pixel of the same image or padding
        assert set(a[i].unique().tolist()) <= set(x[i].unique().tolist()) | {0.0}
