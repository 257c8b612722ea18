"""Data loading: every source kind, the subset rules, and each bad-input message."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infoq_deploy.core.errors import UserError
from infoq_deploy.data import load as data_mod
from infoq_deploy.data.load import (
    BUILTIN_CALIB,
    BUILTIN_EVAL,
    FASHION_CLASSES,
    IMG_EXTENSIONS,
    content_hash,
    load_data,
    split,
    stratified_indices,
)
from infoq_deploy.importing.model import Preprocess

SHARED = Path(os.environ.get("INFOQ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

RGB8 = Preprocess(input_shape=(3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), num_classes=3)
GRAY8 = Preprocess(input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,), grayscale=True)
CLASSES = ["cat", "ant", "bee"]  # deliberately unsorted: loaders must sort
PER_CLASS = 4


def _pixel(cls_i: int, j: int) -> int:
    # A distinct constant value per image identifies it after loading.
    return 10 + 20 * cls_i + 3 * j


def _make_folder(root: Path, size=(8, 8), ext=".png") -> Path:
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for j in range(PER_CLASS):
            v = _pixel(sorted(CLASSES).index(cls), j)
            Image.new("RGB", size, (v, v + 1, v + 2)).save(root / cls / f"{j:02d}{ext}")
    return root


def _ids(ds) -> list[int]:
    """Recover each loaded image's _pixel value from its normalised red channel."""
    r = ds.x[:, 0, 0, 0] * RGB8.std[0] + RGB8.mean[0]
    return [int(round(float(v) * 255)) for v in r]


def _realdata(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"real data {p} is missing: this test needs ../shared/data "
                    f"(or INFOQ_SHARED_DATA pointing at it)")
    return p


# --------------------------------------------------------------------------- sources


def test_image_folder_classes_sorted_labels_and_values(tmp_path):
    ds = load_data(_make_folder(tmp_path / "f"), RGB8)
    assert ds.classes == sorted(CLASSES)
    assert ds.x.shape == (3 * PER_CLASS, 3, 8, 8) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64
    assert ds.y.tolist() == [c for c in range(3) for _ in range(PER_CLASS)]
    assert _ids(ds) == [_pixel(c, j) for c in range(3) for j in range(PER_CLASS)]
    # Green channel: pixel+1, scaled and normalised with channel 1's statistics.
    expect_g = (torch.tensor(_pixel(0, 0) + 1.0) / 255 - 0.4) / 0.25
    assert torch.allclose(ds.x[0, 1], expect_g.expand(8, 8))
    assert len(ds.sha256) == 64


def test_image_folder_matches_torchvision(tmp_path):
    from torchvision import datasets, transforms
    root = tmp_path / "tv"
    rng = np.random.default_rng(0)
    for cls in ("b", "a"):
        (root / cls).mkdir(parents=True)
        for j in range(3):
            arr = rng.integers(0, 256, size=(13 + j, 17, 3), dtype=np.uint8)  # odd, non-square sizes
            Image.fromarray(arr).save(root / cls / f"{j}.png")
    pp = Preprocess(input_shape=(3, 9, 9), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                    resize=11, crop=9, interpolation="bicubic")
    tf = transforms.Compose([transforms.Resize(11, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(9), transforms.ToTensor(),
                             transforms.Normalize(pp.mean, pp.std)])
    ref = datasets.ImageFolder(str(root), transform=tf)
    ds = load_data(root, pp)
    assert ds.classes == ref.classes
    assert ds.y.tolist() == [t for _, t in ref.samples]
    assert torch.equal(ds.x, torch.stack([ref[i][0] for i in range(len(ref))]))


def test_grayscale_folder_and_flat_unlabelled_folder(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for j in range(3):
        Image.new("RGB", (8, 8), (60 * j, 60 * j, 60 * j)).save(root / f"im{j}.jpeg")
    ds = load_data(root, GRAY8)
    assert ds.y is None and ds.classes is None
    assert ds.x.shape == (3, 1, 8, 8)
    assert "unlabelled" in ds.source


def test_labels_csv_layout_with_synset_names(tmp_path):
    root = tmp_path / "imnet" / "val"
    (root / "images").mkdir(parents=True)
    rows = [("z.JPEG", 2), ("a.JPEG", 0), ("m.JPEG", 1)]
    for i, (f, _) in enumerate(rows):
        Image.new("RGB", (12, 10), (10 * i, 0, 0)).save(root / "images" / f, format="JPEG")
    (root / "labels.csv").write_text("file,class_index\n" + "".join(f"{f},{c}\n" for f, c in rows))
    (root.parent / "synset_words.txt").write_text("n01 tench, Tinca\nn02 goldfish\nn03 shark\n")
    pp = Preprocess(input_shape=(3, 8, 8), mean=(0.5,), std=(0.5,), resize=9, crop=8, num_classes=3)
    ds = load_data(root, pp)
    assert ds.y.tolist() == [2, 0, 1]  # csv order
    assert ds.classes == ["tench, Tinca", "goldfish", "shark"]
    assert ds.x.shape == (3, 3, 8, 8)


def _make_tar(path: Path, folder: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname="train")
        junk = b"not an image"
        info = tarfile.TarInfo("train/README.txt")
        info.size = len(junk)
        tf.addfile(info, io.BytesIO(junk))
    return path


def test_tar_archive_equals_folder(tmp_path):
    folder = _make_folder(tmp_path / "f")
    archive = _make_tar(tmp_path / "train.tar.gz", folder)
    a, f = load_data(archive, RGB8), load_data(folder, RGB8)
    assert a.classes == f.classes
    assert torch.equal(a.x, f.x) and torch.equal(a.y, f.y)
    assert a.sha256 == f.sha256


def test_tar_archive_limit_is_stratified_and_matches_folder_subset(tmp_path):
    folder = _make_folder(tmp_path / "f")
    archive = _make_tar(tmp_path / "train.tgz", folder)
    a = load_data(archive, RGB8, limit=6, seed=3)
    f = load_data(folder, RGB8, limit=6, seed=3)
    assert torch.bincount(a.y).tolist() == [2, 2, 2]
    assert torch.equal(a.x, f.x)


def test_npz_uint8_nhw_and_float_nchw(tmp_path):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "u.npz", x=u8, y=y)
    np.savez(tmp_path / "f.npz", x=(u8[:, None] / 255.0).astype(np.float64))
    du = load_data(tmp_path / "u.npz", GRAY8)
    df = load_data(tmp_path / "f.npz", GRAY8)
    assert du.y.tolist() == y.tolist() and df.y is None
    expect = (torch.from_numpy(u8).float()[:, None] / 255 - 0.5) / 0.25
    assert torch.allclose(du.x, expect, atol=1e-6)
    assert torch.allclose(df.x, expect, atol=1e-5)


def test_pt_file(tmp_path):
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    torch.save({"x": x, "y": torch.tensor([2, 1, 0, 2])}, tmp_path / "d.pt")
    ds = load_data(tmp_path / "d.pt", RGB8)
    assert ds.y.tolist() == [2, 1, 0, 2]
    assert torch.allclose(ds.x[:, 2], (x[:, 2].float() / 255 - 0.3) / 0.3, atol=1e-6)


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".csv"])
def test_labels_override(tmp_path, suffix):
    folder = _make_folder(tmp_path / "f")
    new = [(i * 7) % 3 for i in range(3 * PER_CLASS)]
    p = tmp_path / f"lab{suffix}"
    if suffix == ".npy":
        np.save(p, np.array(new))
    elif suffix == ".txt":
        p.write_text("\n".join(map(str, new)) + "\n")
    else:
        p.write_text("file,class_index\n" + "".join(f"f{i},{v}\n" for i, v in enumerate(new)))
    ds = load_data(folder, RGB8, labels=p)
    assert ds.y.tolist() == new
    assert ds.sha256 != load_data(folder, RGB8).sha256  # labels are part of the cache key


def test_builtin_fashion_subsets():
    calib = load_data(BUILTIN_CALIB, _fashion_pp())
    ev = load_data(BUILTIN_EVAL, _fashion_pp())
    assert calib.x.shape == ev.x.shape == (1000, 1, 28, 28)
    assert torch.bincount(calib.y).tolist() == [100] * 10
    assert torch.bincount(ev.y).tolist() == [100] * 10
    assert calib.classes == FASHION_CLASSES
    assert calib.sha256 != ev.sha256
    assert load_data("builtin:fashion-mnist:calib", _fashion_pp()).sha256 == calib.sha256


def _fashion_pp() -> Preprocess:
    from infoq_deploy.models.fashion_cnn import PREPROCESS
    return PREPROCESS


@pytest.mark.realdata
def test_fashion_mnist_idx_test_set():
    if not (data_mod.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST IDX files are missing: run `apt-get install dataset-fashion-mnist`")
    ds = load_data("fashion-mnist:test", _fashion_pp(), limit=500, seed=0)
    assert ds.x.shape == (500, 1, 28, 28)
    assert torch.bincount(ds.y).tolist() == [50] * 10


# --------------------------------------------------------------------------- subsets


def test_limit_subset_is_seeded_sorted_and_stratified(tmp_path):
    folder = _make_folder(tmp_path / "f")
    a = load_data(folder, RGB8, limit=6, seed=5)
    b = load_data(folder, RGB8, limit=6, seed=5)
    assert torch.equal(a.x, b.x) and a.sha256 == b.sha256
    ids = _ids(a)
    assert ids == sorted(ids)  # source order kept
    assert torch.bincount(a.y).tolist() == [2, 2, 2]
    others = {tuple(_ids(load_data(folder, RGB8, limit=6, seed=s))) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_limit_unlabelled_tensor_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(20, dtype=np.uint8)[:, None, None].repeat(8, 1).repeat(8, 2))
    a = load_data(tmp_path / "d.npz", GRAY8, limit=7, seed=1)
    vals = [int(round(float(v * 0.25 + 0.5) * 255)) for v in a.x[:, 0, 0, 0]]
    assert len(set(vals)) == 7 and vals == sorted(vals)
    assert torch.equal(a.x, load_data(tmp_path / "d.npz", GRAY8, limit=7, seed=1).x)


def test_stratified_indices_uneven_classes():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(y, 10, seed=0)
    assert np.bincount(y[idx]).tolist() == [5, 3, 2]
    assert len(set(idx.tolist())) == 10 and list(idx) == sorted(idx)


def test_split_disjoint_seeded_stratified(tmp_path):
    ds = load_data(_make_folder(tmp_path / "f"), RGB8)
    a, b = split(ds, 3, seed=0)
    ia, ib = _ids(a), _ids(b)
    assert len(a) == 3 and len(b) == len(ds) - 3
    assert not set(ia) & set(ib) and sorted(ia + ib) == sorted(_ids(ds))
    assert torch.bincount(a.y).tolist() == [1, 1, 1]
    assert _ids(split(ds, 3, seed=0)[0]) == ia
    assert a.sha256 == content_hash(a.x, a.y) != ds.sha256
    with pytest.raises(UserError, match="between 1 and 11"):
        split(ds, 12, seed=0)


# --------------------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(tmp_path / "nope", RGB8)


def test_empty_folder_names_extensions(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no images found") as e:
        load_data(tmp_path / "empty", RGB8)
    assert all(ext in str(e.value) for ext in IMG_EXTENSIONS)


def test_archive_without_images(tmp_path):
    p = tmp_path / "a.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        info = tarfile.TarInfo("train/x/readme.txt")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserError, match=r"no images found in the archive .*\.png"):
        load_data(p, RGB8)


def test_unreadable_image_named(tmp_path):
    folder = _make_folder(tmp_path / "f")
    (folder / "ant" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(UserError, match=r"cannot read image .*broken\.jpg"):
        load_data(folder, RGB8)


def test_unreadable_image_in_archive_named(tmp_path):
    p = tmp_path / "a.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        info = tarfile.TarInfo("train/ant/bad.png")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"12345"))
    with pytest.raises(UserError, match=r"cannot read image .*train/ant/bad\.png"):
        load_data(p, RGB8)


def test_label_out_of_range_names_range_and_value(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 3, 8, 8), np.uint8), y=np.array([0, 7, 1]))
    with pytest.raises(UserError, match=r"label 7, outside 0\.\.2"):
        load_data(tmp_path / "d.npz", RGB8)
    np.savez(tmp_path / "n.npz", x=np.zeros((2, 3, 8, 8), np.uint8), y=np.array([0, -1]))
    with pytest.raises(UserError, match=r"label -1, outside 0\.\.2"):
        load_data(tmp_path / "n.npz", RGB8)


def test_override_label_out_of_range_names_file(tmp_path):
    folder = _make_folder(tmp_path / "f")
    p = tmp_path / "l.txt"
    p.write_text(" ".join(["0"] * 11 + ["3"]))
    with pytest.raises(UserError, match=r"l\.txt has label 3, outside 0\.\.2"):
        load_data(folder, RGB8, labels=p)


def test_wrong_channel_count(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="8 channels but the model takes 3.*channels-last"):
        load_data(tmp_path / "d.npz", RGB8)
    with pytest.raises(UserError, match="model takes 3-channel input"):
        load_data(_make_folder(tmp_path / "f"), Preprocess((3, 8, 8), (0.5,), (0.5,), grayscale=True))


def test_wrong_spatial_size(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 9, 8), np.uint8))
    with pytest.raises(UserError, match="9x8 but the model takes 8x8"):
        load_data(tmp_path / "d.npz", RGB8)
    with pytest.raises(UserError, match=r"is 10x10 \(after the model's resize and crop, if any\) but the model takes 8x8"):
        load_data(_make_folder(tmp_path / "f", size=(10, 10)), RGB8)
    with pytest.raises(UserError, match="smaller than the centre crop 12"):
        load_data(_make_folder(tmp_path / "g"), Preprocess((3, 12, 12), (0.5,), (0.5,), crop=12))


def test_nan_and_unscaled_float_refused(tmp_path):
    x = np.full((2, 3, 8, 8), 0.5, np.float32)
    x[1, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    with pytest.raises(UserError, match="1 NaN/inf"):
        load_data(tmp_path / "nan.npz", RGB8)
    torch.save({"x": torch.full((2, 3, 8, 8), float("inf"))}, tmp_path / "inf.pt")
    with pytest.raises(UserError, match="NaN/inf"):
        load_data(tmp_path / "inf.pt", RGB8)
    np.savez(tmp_path / "norm.npz", x=np.full((2, 3, 8, 8), -1.5, np.float32))
    with pytest.raises(UserError, match=r"must hold raw pixels in \[0, 1\]"):
        load_data(tmp_path / "norm.npz", RGB8)


def test_limit_larger_than_data(tmp_path):
    with pytest.raises(UserError, match="limit 13 is larger than the 12 images"):
        load_data(_make_folder(tmp_path / "f"), RGB8, limit=13)
    with pytest.raises(UserError, match="positive"):
        load_data(tmp_path, RGB8, limit=0)


def test_labels_count_mismatch(tmp_path):
    folder = _make_folder(tmp_path / "f")
    p = tmp_path / "l.npy"
    np.save(p, np.zeros(5, np.int64))
    with pytest.raises(UserError, match="has 5 labels but .* holds 12 images"):
        load_data(folder, RGB8, labels=p)
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 3, 8, 8), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(UserError, match="one label per image"):
        load_data(tmp_path / "d.npz", RGB8)


def test_tensor_file_format_errors(tmp_path):
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(UserError, match="no array 'x' .*images"):
        load_data(tmp_path / "k.npz", RGB8)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.pt cannot be read as plain tensors"):
        load_data(tmp_path / "bad.pt", RGB8)
    with pytest.raises(UserError, match="unknown built-in"):
        load_data("builtin:mnist", RGB8)


def test_missing_fashion_mnist_says_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist:test", _fashion_pp())


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_cifar10_test_folder_loads_1000_per_class():
    pp = Preprocess((3, 32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), num_classes=10)
    ds = load_data(_realdata("cifar10", "test"), pp)
    assert ds.x.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.y, minlength=10).tolist() == [1000] * 10
    assert ds.classes[:3] == ["airplane", "automobile", "bird"]
    assert torch.isfinite(ds.x).all()


@pytest.mark.realdata
def test_cifar10_train_archive_stratified_limit():
    pp = Preprocess((3, 32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), num_classes=10)
    ds = load_data(_realdata("cifar10", "train.tar.gz"), pp, limit=500, seed=0)
    assert ds.x.shape == (500, 3, 32, 32)
    assert torch.bincount(ds.y, minlength=10).tolist() == [50] * 10
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer",
                          "dog", "frog", "horse", "ship", "truck"]
