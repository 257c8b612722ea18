"""Data loading: any supported source -> one preprocessed, hashed ``Dataset``.

Sources (``spec``):

- an image folder with class sub-folders (ImageFolder layout: classes are the
  sub-folder names sorted alphabetically, i.e. torchvision's order; images are
  collected recursively inside each class folder). A folder holding images but
  no class sub-folders loads unlabelled (``y`` None).
- an ImageNet-style folder: ``images/`` + ``labels.csv`` with columns
  ``file,class_index`` (order = csv order). Class names come from a
  ``synset_words.txt`` in that folder or its parent, when there is one.
- a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of an image-folder tree: each
  image's class is the name of the folder it lies in (``train/cat/1.jpg`` ->
  ``cat``). Members are read in memory, never extracted; with ``limit`` only
  the drawn images are decoded.
- a tensor file: ``.npz`` (keys ``x`` and optional ``y``) or ``.pt`` (a dict
  with tensors ``x`` and optional ``y``, loaded with ``weights_only=True``).
  ``x`` is N,C,H,W or N,H,W (one channel) at the network's input size already
  (no resize or crop is applied). uint8 is taken as 0..255 pixels; float as
  pixels in [0, 1] -- values outside [0, 1] are refused, because they are
  almost surely already normalised and would be normalised twice.
- built-in names:
    ``builtin:fashion-mnist`` (= ``builtin:fashion-mnist:calib``): the 1,000
      bundled calibration images, drawn (seeded, class-stratified) from the
      Fashion-MNIST *training* set;
    ``builtin:fashion-mnist:eval``: the 1,000 bundled evaluation images, drawn
      from the *test* set. Both live in ``models/fashion_calib.npz``.
    ``fashion-mnist:train`` / ``fashion-mnist:test``: the full 60,000 / 10,000
      images from the Debian package ``dataset-fashion-mnist`` (IDX files).

Every source is scaled to [0, 1] and normalised with the preprocess mean/std,
exactly as torchvision's ``ToTensor`` + ``Normalize`` would. Images are decoded
with PIL (RGB, or L when ``preprocess.grayscale``), the shorter side resized to
``preprocess.resize`` and centre-cropped to ``preprocess.crop`` (torchvision's
rounding).

Image files are those ending in one of ``IMG_EXTENSIONS`` (any case); files
and folders whose name starts with "." are skipped (macOS ``._*`` debris).

``limit`` draws a seeded random subset -- class-stratified whenever labels are
known -- whose indices are sorted so the order follows the source's order.
``labels`` overrides the source's labels with a ``.npy`` / ``.txt`` / ``.csv``
of class indices, one per image in source order (for csv: the ``class_index``
or ``label`` column, else the last one; a non-numeric first row is a header).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from infoq_deploy.core import torch_files
from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.model import Preprocess

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
BUILTIN_CALIB = "builtin:fashion-mnist"
BUILTIN_EVAL = "builtin:fashion-mnist:eval"
_BUILTINS = {
    BUILTIN_CALIB: "calib",
    "builtin:fashion-mnist:calib": "calib",
    BUILTIN_EVAL: "eval",
    "fashion-mnist:train": "train",
    "fashion-mnist:test": "test",
}
_IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# Decoding is mostly C code that releases the GIL; a few threads beyond the
# core count hide file-open latency.
_WORKERS = max(2, min(16, 2 * (os.cpu_count() or 1)))


@dataclass
class Dataset:
    x: torch.Tensor            # N,C,H,W float32, preprocessed (normalised) network input
    y: torch.Tensor | None     # N int64 labels, or None when the source has none
    classes: list[str] | None
    source: str                # what was loaded, for reports
    sha256: str                # content hash of x (and y) bytes: the cache key for profiling

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load_data(spec: str | Path, preprocess: Preprocess, limit: int | None = None, seed: int = 0,
              labels: str | Path | None = None) -> Dataset:
    """Load ``spec`` (see the module docstring) as normalised network input."""
    _check_preprocess(preprocess)
    check_seed(seed)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"the number of samples to draw (--calib-size, --eval-size or --train-size) is {limit!r}; "
                        "pass a positive whole number, or leave it out for all")
    override = _read_labels(Path(labels)) if labels is not None else None

    # Sources call this with their image count and labels (or None) and get the
    # indices to materialise and their final labels (override, range check and
    # ``limit`` applied), so image sources decode only what is kept.
    def choose(n: int, y: np.ndarray | None, classes: list[str] | None = None):
        if n == 0:
            raise UserError(f"{spec} holds no images; point to a source with data.")
        if override is not None:
            if len(override) != n:
                raise UserError(f"the labels file {labels} has {len(override)} labels but {spec} "
                                f"holds {n} images; give exactly one label per image.")
            y = override
        if y is not None:
            _check_label_range(y, preprocess.num_classes or (len(classes) if classes else None),
                               str(labels) if override is not None else str(spec))
        if limit is None:
            idx = np.arange(n)
        elif limit > n:
            raise UserError(f"limit {limit} is larger than the {n} images in {spec}; "
                            f"ask for at most {n}.")
        else:
            idx = stratified_indices(y, limit, seed) if y is not None else _random_indices(n, limit, seed)
        return idx, (None if y is None else y[idx])

    arr, y, classes, desc = _load_raw(spec, preprocess, choose)
    x = normalise(arr, preprocess)
    y_t = None if y is None else torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    if limit is not None:
        desc += f", random subset of {limit} (seed {seed}{', class-stratified' if y is not None else ''})"
    if override is not None:
        desc += f", labels from {labels}"
    return Dataset(x=x, y=y_t, classes=classes, source=desc, sha256=content_hash(x, y_t))


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise UserError(f"the seed is {seed!r}; pass a whole number from 0 to {2**32 - 1} (--seed)")


def split(ds: Dataset, n_first: int, seed: int) -> tuple[Dataset, Dataset]:
    """Two disjoint parts: ``n_first`` seeded (class-stratified when labelled) images, and the rest.

    Each part keeps the original order.
    """
    check_seed(seed)
    n = len(ds)
    if not 1 <= n_first <= n - 1:
        raise UserError(f"cannot split {n} images into {n_first} and {n - n_first}; "
                        f"choose a first part between 1 and {n - 1}.")
    y = None if ds.y is None else ds.y.numpy()
    first = stratified_indices(y, n_first, seed) if y is not None else _random_indices(n, n_first, seed)
    rest = np.setdiff1d(np.arange(n), first)
    return (_take(ds, first, f"split seed {seed}: first {n_first}"),
            _take(ds, rest, f"split seed {seed}: remaining {n - n_first}"))


def stratified_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` sorted indices drawn without replacement, each class in proportion to its count.

    Quotas are rounded by largest remainder (ties to the lower class index), so
    balanced data gives exactly equal counts per class.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(y, return_counts=True)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    extra = n - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    picks = [rng.permutation(np.flatnonzero(y == v))[:k] for v, k in zip(values, take)]
    return np.sort(np.concatenate(picks))


def content_hash(x: torch.Tensor, y: torch.Tensor | None) -> str:
    """sha256 over shapes, dtypes and bytes of ``x`` and ``y``."""
    h = hashlib.sha256()
    for name, t in (("x", x), ("y", y)):
        if t is None:
            continue
        a = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def read_fashion_mnist(part: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST ``"train"`` or ``"test"`` set: uint8 images N,28,28 and uint8 labels N."""
    root = FASHION_MNIST_DIR if root is None else Path(root)
    img_name, lbl_name = _IDX_FILES[part]
    img_path, lbl_path = root / img_name, root / lbl_name
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise UserError(f"Fashion-MNIST file {p} is missing; install it with "
                            f"`apt-get install dataset-fashion-mnist`.")
    x, y = _read_idx(img_path, 3), _read_idx(lbl_path, 1)
    if len(x) != len(y):
        raise UserError(f"{img_path} holds {len(x)} images but {lbl_path} {len(y)} labels; "
                        f"reinstall dataset-fashion-mnist.")
    return x, y


def bundled_fashion_path() -> Path:
    """``models/fashion_calib.npz`` wherever the package is installed."""
    return Path(str(resources.files("infoq_deploy.models") / "fashion_calib.npz"))


# --------------------------------------------------------------------------- sources


def _load_raw(spec: str | Path, pp: Preprocess, choose) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, str]:
    """Dispatch on ``spec``: (uint8 or float array N,C,H,W, labels, classes, description)."""
    if isinstance(spec, str) and spec.split(":", 1)[0] in ("builtin", "fashion-mnist") and ":" in spec:
        if spec not in _BUILTINS:
            raise UserError(f"unknown built-in data set {spec!r}; use one of {', '.join(_BUILTINS)}.")
        return _load_fashion(_BUILTINS[spec], spec, pp, choose)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"data source {path} does not exist; give an image folder, a .tar.gz, "
                        f"a .npz/.pt file or one of {', '.join(_BUILTINS)}.")
    if path.is_dir():
        if (path / "labels.csv").is_file() and (path / "images").is_dir():
            return _load_csv_folder(path, pp, choose)
        return _load_image_folder(path, pp, choose)
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _load_tar(path, pp, choose)
    if name.endswith(".npz"):
        return _load_tensor_arrays(*_read_npz(path), str(path), pp, choose)
    if name.endswith(".pt"):
        return _load_tensor_arrays(*_read_pt(path), str(path), pp, choose)
    raise UserError(f"cannot tell what kind of data {path} is; give an image folder, a .tar.gz/.tgz/.tar "
                    f"archive, a .npz or .pt tensor file, or a built-in name.")


def _load_fashion(part: str, spec: str, pp: Preprocess, choose):
    if part in ("calib", "eval"):
        path = bundled_fashion_path()
        if not path.is_file():
            raise UserError(f"the bundled subset {path} is missing; regenerate it with "
                            f"`python models/train_fashion_cnn.py`.")
        with np.load(path, allow_pickle=False) as z:
            x, y = z[f"{part}_x"], z[f"{part}_y"]
        desc = f"{spec} (bundled Fashion-MNIST {'training' if part == 'calib' else 'test'}-set subset)"
    else:
        x, y = read_fashion_mnist(part)
        desc = f"{spec} ({FASHION_MNIST_DIR})"
    x = _check_array(x, pp, spec)
    idx, y_sel = choose(len(x), y.astype(np.int64), FASHION_CLASSES)
    return x[idx], y_sel, list(FASHION_CLASSES), desc


def _load_tensor_arrays(x: np.ndarray, y: np.ndarray | None, name: str, pp: Preprocess, choose):
    x = _check_array(x, pp, name)
    if y is not None:
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{name}: y must be a 1-D integer array with one label per image "
                            f"({len(x)}), got shape {tuple(y.shape)} of {y.dtype}.")
        y = y.astype(np.int64)
    idx, y_sel = choose(len(x), y)
    return x[idx], y_sel, None, f"tensor file {name}"


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # numpy would try it as a pickle and say so, misleadingly
            raise UserError(f"{path} is not an .npz archive (a zip of .npy arrays); save the images with "
                            "numpy.savez(path, x=images, y=labels).")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise UserError(f"{path} has no array 'x' (it has {', '.join(z.files) or 'none'}); "
                                f"save the images under key 'x' and optional labels under 'y'.")
            return z["x"], (z["y"] if "y" in z.files else None)
    except UserError:
        raise
    except Exception as e:  # zip/format errors, or object arrays refused without pickle
        raise UserError(f"cannot read {path} as a plain-array .npz ({e}); save it with numpy.savez.") from None


def _read_pt(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    obj = torch_files.load(path, what="plain tensors",
                           fix="save a dict of tensors {'x': ..., 'y': ...} with torch.save")
    if not isinstance(obj, dict) or not isinstance(obj.get("x"), torch.Tensor):
        raise UserError(f"{path} must hold a dict with a tensor 'x' (and optional 'y'); "
                        f"save it with torch.save({{'x': images, 'y': labels}}).")
    y = obj.get("y")
    if y is not None and not isinstance(y, torch.Tensor):
        raise UserError(f"{path}: 'y' must be a tensor of class indices.")

    def to_np(t: torch.Tensor) -> np.ndarray:
        return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()
    return to_np(obj["x"]), (None if y is None else to_np(y))


def _load_image_folder(root: Path, pp: Preprocess, choose):
    class_dirs = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for i, cls in enumerate(class_dirs):
        # torchvision's make_dataset order: sorted walk, sorted file names.
        for dirpath, _, fnames in sorted(os.walk(root / cls, followlinks=True)):
            for f in sorted(fnames):
                if _is_image(f):
                    files.append(Path(dirpath) / f)
                    labels.append(i)
    if files:
        y, classes, kind = np.asarray(labels, dtype=np.int64), class_dirs, f"image folder {root} ({len(class_dirs)} classes)"
    else:
        files = [root / f for f in sorted(os.listdir(root)) if _is_image(f) and (root / f).is_file()]
        y, classes, kind = None, None, f"image folder {root} (unlabelled)"
    if not files:
        raise UserError(f"no images found in {root} (looked for {', '.join(IMG_EXTENSIONS)} in class "
                        f"sub-folders and in the folder itself); point to a folder of images.")
    idx, y_sel = choose(len(files), y, classes)
    return _decode_all([files[i] for i in idx], pp), y_sel, classes, kind


def _load_csv_folder(root: Path, pp: Preprocess, choose):
    csv_path = root / "labels.csv"
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
            raise UserError(f"{csv_path} must have the columns file,class_index; fix its header.")
        rows = list(reader)
    files, labels = [], []
    for r in rows:
        p = root / "images" / r["file"]
        if not p.is_file():
            raise UserError(f"{csv_path} lists {r['file']} but {p} does not exist; fix the csv or add the image.")
        files.append(p)
        labels.append(_parse_int(r["class_index"], csv_path))
    if not files:
        raise UserError(f"{csv_path} lists no images; add rows file,class_index.")
    classes = _synset_names(root)
    idx, y_sel = choose(len(files), np.asarray(labels, dtype=np.int64), classes)
    return _decode_all([files[i] for i in idx], pp), y_sel, classes, f"image folder {root} (labels.csv)"


def _synset_names(root: Path) -> list[str] | None:
    for p in (root / "synset_words.txt", root.parent / "synset_words.txt"):
        if p.is_file():
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            return [ln.split(" ", 1)[1] if " " in ln else ln for ln in lines]
    return None


def _load_tar(path: Path, pp: Preprocess, choose):
    try:
        with tarfile.open(path, "r:*") as tf:
            members = sorted((m for m in tf.getmembers() if m.isfile() and _is_image(m.name)),
                             key=lambda m: m.name)
            if not members:
                raise UserError(f"no images found in the archive {path} (looked for "
                                f"{', '.join(IMG_EXTENSIONS)}); give an archive of an image-folder tree.")
            parents = [PurePosixPath(m.name).parent.name for m in members]
            if all(parents):
                classes = sorted(set(parents))
                index = {c: i for i, c in enumerate(classes)}
                y = np.asarray([index[p] for p in parents], dtype=np.int64)
            else:
                classes, y = None, None
            idx, y_sel = choose(len(members), y, classes)
            chosen = [members[i] for i in idx]
            blobs: dict[str, bytes] = {}
            # In archive order: one forward pass through the compressed stream.
            for m in sorted(chosen, key=lambda m: m.offset_data):
                blobs[m.name] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"cannot read the archive {path} ({type(e).__name__}): it is truncated, damaged or not a "
                        "tar archive; download or pack it again (tar czf NAME.tar.gz FOLDER).") from None
    items = [(f"{path}:{m.name}", blobs[m.name]) for m in chosen]
    kind = f"archive {path} ({len(classes)} classes)" if classes else f"archive {path} (unlabelled)"
    return _decode_all(items, pp), y_sel, classes, kind


# --------------------------------------------------------------------------- decoding


def _decode_all(items: list, pp: Preprocess) -> np.ndarray:
    """Decode images (paths, or (name, bytes) pairs) in a thread pool into uint8 N,C,H,W."""
    c, h, w = pp.input_shape
    want_c = 1 if pp.grayscale else 3
    if c != want_c:
        raise UserError(f"the model takes {c}-channel input but the preprocess decodes images as "
                        f"{'grayscale' if pp.grayscale else 'RGB'} ({want_c} channels); set grayscale "
                        f"to {c == 1} in the preprocess.")
    out = np.empty((len(items), c, h, w), dtype=np.uint8)
    resample = Image.Resampling.BICUBIC if pp.interpolation == "bicubic" else Image.Resampling.BILINEAR

    def work(i: int) -> None:
        item = items[i]
        name, fp = (str(item), item) if isinstance(item, Path) else (item[0], io.BytesIO(item[1]))
        try:
            with Image.open(fp) as im:
                im = im.convert("L" if pp.grayscale else "RGB")
        except Exception as e:
            raise UserError(f"cannot read image {name} ({type(e).__name__}: {e}); "
                            f"replace or remove the file.") from None
        if pp.resize is not None:
            im = _resize_shorter(im, pp.resize, resample)
        if pp.crop is not None:
            im = _centre_crop(im, pp.crop, name)
        if im.size != (w, h):
            raise UserError(f"image {name} is {im.size[0]}x{im.size[1]} (after the model's resize and crop, if any) "
                            f"but the model takes {w}x{h}; resize the images to {w}x{h}, or pass --input-shape "
                            f"{c},{im.size[1]},{im.size[0]} if the model takes that size.")
        a = np.asarray(im)
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    with ThreadPoolExecutor(max_workers=_WORKERS) as ex:
        for _ in ex.map(work, range(len(items))):
            pass
    return out


def _resize_shorter(im: Image.Image, size: int, resample) -> Image.Image:
    # torchvision's rule: shorter side -> size, longer side -> int(size * long / short).
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return im
    new_long = int(size * long / short)
    return im.resize((size, new_long) if w <= h else (new_long, size), resample)


def _centre_crop(im: Image.Image, size: int, name: str) -> Image.Image:
    w, h = im.size
    if w < size or h < size:
        raise UserError(f"image {name} is {w}x{h}, smaller than the centre crop {size} of the model's preprocessing; "
                        f"use images of at least {size}x{size}, or --input-shape to give the model a smaller input.")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def _is_image(name: str) -> bool:
    base = PurePosixPath(name).name
    return not base.startswith(".") and base.lower().endswith(IMG_EXTENSIONS)


# --------------------------------------------------------------------------- arrays


def _check_array(x: np.ndarray, pp: Preprocess, name: str) -> np.ndarray:
    """Validate a tensor-file image array; return it as N,C,H,W (not yet scaled)."""
    c, h, w = pp.input_shape
    if x.ndim == 3 and c == 1:
        x = x[:, None]
    if x.ndim != 4:
        raise UserError(f"{name}: x has shape {tuple(x.shape)}; it must be N,C,H,W "
                        f"(or N,H,W for one channel) with C,H,W = {c},{h},{w}.")
    if x.shape[1] != c:
        hint = " (it looks channels-last: transpose it to N,C,H,W)" if x.shape[3] == c else ""
        raise UserError(f"{name}: x has {x.shape[1]} channels but the model takes {c}{hint}.")
    if tuple(x.shape[2:]) != (h, w):
        raise UserError(f"{name}: x images are {x.shape[2]}x{x.shape[3]} but the model takes {h}x{w}; "
                        f"resize them before saving (tensor files are used as they are).")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{name}: x is {x.dtype}; save uint8 pixels (0..255) or float pixels in [0, 1].")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise UserError(f"{name}: x contains {bad} NaN/inf values; remove or repair those images.")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise UserError(f"{name}: float x spans [{lo:.3g}, {hi:.3g}] but must hold raw pixels in [0, 1] "
                        f"(mean/std are applied on loading); save unnormalised images.")
    return x


def normalise(arr: np.ndarray, pp: Preprocess) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) N,C,H,W pixels -> normalised float32 network input."""
    # Same operations, in the same order, as ToTensor + Normalize: bit-identical.
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.float().div_(255) if arr.dtype == np.uint8 else t.float()
    c = arr.shape[1]
    mean = torch.tensor(_per_channel(pp.mean, c), dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(_per_channel(pp.std, c), dtype=torch.float32).view(1, c, 1, 1)
    return t.sub_(mean).div_(std)


def _per_channel(v: tuple[float, ...], c: int) -> list[float]:
    return list(v) * c if len(v) == 1 else list(v)


def _check_preprocess(pp: Preprocess) -> None:
    c = pp.input_shape[0]
    for what, v in (("mean", pp.mean), ("std", pp.std)):
        if len(v) not in (1, c):
            raise UserError(f"preprocess {what} has {len(v)} values for {c}-channel input; give 1 or {c}.")
    if any(s <= 0 for s in pp.std):
        raise UserError(f"preprocess std {pp.std} must be positive.")
    if pp.interpolation not in ("bilinear", "bicubic"):
        raise UserError(f"unknown interpolation {pp.interpolation!r}; use 'bilinear' or 'bicubic'.")


def _check_label_range(y: np.ndarray, num_classes: int | None, where: str) -> None:
    if y.size == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if num_classes is None:
        if lo < 0:
            raise UserError(f"{where} has label {lo}; class indices must be 0 or more.")
        return
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise UserError(f"{where} has label {bad}, outside 0..{num_classes - 1} for {num_classes} classes; "
                        f"fix the labels or the model's number of classes.")


def _read_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"labels file {path} does not exist; give a .npy, .txt or .csv of class indices.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            y = np.load(path, allow_pickle=False)
        except Exception as e:
            raise UserError(f"cannot read labels {path} ({e}); save a 1-D integer array with numpy.save.") from None
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"labels {path} must be a 1-D integer array, got shape {y.shape} of {y.dtype}.")
        return y.astype(np.int64)
    if suffix == ".txt":
        return np.asarray([_parse_int(t, path) for t in path.read_text().split()], dtype=np.int64)
    if suffix == ".csv":
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        col = -1
        if rows and not _is_int(rows[0][-1]):
            header = [h.strip() for h in rows.pop(0)]
            for key in ("class_index", "label", "y"):
                if key in header:
                    col = header.index(key)
                    break
        return np.asarray([_parse_int(r[col], path) for r in rows], dtype=np.int64)
    raise UserError(f"labels file {path} must be .npy, .txt or .csv.")


def _is_int(s: str) -> bool:
    try:
        int(s.strip())
        return True
    except ValueError:
        return False


def _parse_int(s: str, where: Path) -> int:
    try:
        return int(s.strip())
    except ValueError:
        raise UserError(f"{where} holds {s!r} where a class index (integer) belongs; fix that entry.") from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:  # 0x08 = unsigned byte
        raise UserError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimensions; "
                        f"reinstall dataset-fashion-mnist.")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _random_indices(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def _take(ds: Dataset, idx: np.ndarray, note: str) -> Dataset:
    t = torch.from_numpy(idx)
    x = ds.x[t].contiguous()
    y = None if ds.y is None else ds.y[t].contiguous()
    return Dataset(x=x, y=y, classes=ds.classes, source=f"{ds.source}, {note}", sha256=content_hash(x, y))
