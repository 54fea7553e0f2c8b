"""Image datasets as host numpy arrays: MNIST from its standard files, scikit-learn's 8x8 digits.

MNIST is read from ``data_dir``: the four IDX files (gzipped or not, names as published) or one
``mnist.npz`` (keys ``x_train, y_train, x_test, y_test``, the Keras layout). ``download_mnist``
fetches the gzipped IDX files from the standard mirrors and verifies their MD5 checksums. Every
problem (missing, corrupted, offline) is a ``DataError``: one line saying what and where.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request

import numpy as np

from rnn_spectra.errors import DataError

# The published files and their MD5s (the same on every mirror).
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_NPZ = "mnist.npz"
# expRNN's permuted-MNIST convention: np.random.RandomState(92916).permutation(784).
PERMUTATION_SEED = 92916
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_data_dir(name: str) -> str:
    """``$RNN_SPECTRA_DATA/<name>``, else ``~/.cache/rnn_spectra/<name>``."""
    root = os.environ.get("RNN_SPECTRA_DATA") or os.path.join(
        os.path.expanduser("~"), ".cache", "rnn_spectra")
    return os.path.join(root, name)


def fixed_permutation(n: int, seed: int = PERMUTATION_SEED) -> np.ndarray:
    """The fixed pixel order of the permuted tasks (expRNN: seed 92916, n = 784)."""
    return np.random.RandomState(seed).permutation(n)


# ----------------------------------------------------------------------------- IDX files
def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's format; gzipped if the name ends in .gz) as a numpy array."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is corrupted, "
                        "delete it and download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number); the file is corrupted, "
                        "delete it and download it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; delete it and download it again")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    want = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != want:
        raise DataError(f"{path}: IDX header says shape {shape} ({want} bytes of data) but the file "
                        f"holds {len(raw) - header}; it is truncated or corrupted, download it again")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped if the name ends in .gz (tests, conversions)."""
    array = np.ascontiguousarray(array, np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------- MNIST
def _find_idx(data_dir: str, gz_name: str) -> str | None:
    for name in (gz_name, gz_name[: -len(".gz")]):
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return None


def _missing_message(data_dir: str) -> str:
    names = ", ".join(n for n, _ in MNIST_FILES.values())
    return (f"MNIST files not found in {data_dir}: put {names} there (gzipped or not) or one "
            f"{MNIST_NPZ} (x_train, y_train, x_test, y_test), or run `rnn-spectra data download "
            f"mnist --data-dir {data_dir}` where the network is reachable; set task.data_dir to "
            "use another folder")


def _check_mnist(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DataError(f"{where}: {split} images must be uint8 of shape (N, 28, 28), got "
                            f"{x.dtype} {x.shape}")
        if y.shape != (x.shape[0],):
            raise DataError(f"{where}: {split} labels have shape {y.shape} but there are "
                            f"{x.shape[0]} images")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{where}: {split} labels must lie in 0..9, got {y.min()}..{y.max()}")
    return {k: (v.astype(np.int32) if k.endswith("labels") else v) for k, v in arrays.items()}


@functools.lru_cache(maxsize=2)
def load_mnist(data_dir: str) -> dict[str, np.ndarray]:
    """``{train_images (N, 28, 28) uint8, train_labels (N,) int32, test_images, test_labels}``."""
    idx = {key: _find_idx(data_dir, name) for key, (name, _) in MNIST_FILES.items()}
    if all(idx.values()):
        return _check_mnist({key: read_idx(path) for key, path in idx.items()}, data_dir)
    npz = os.path.join(data_dir, MNIST_NPZ)
    if os.path.isfile(npz):
        try:
            with np.load(npz) as f:
                arrays = {"train_images": f["x_train"], "train_labels": f["y_train"],
                          "test_images": f["x_test"], "test_labels": f["y_test"]}
        except KeyError as e:
            raise DataError(f"{npz}: missing array {e}; expected x_train, y_train, x_test, y_test") from None
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{npz}: cannot read ({type(e).__name__}: {e}); the file is corrupted") from None
        return _check_mnist(arrays, npz)
    if any(idx.values()):
        missing = [MNIST_FILES[k][0] for k, v in idx.items() if v is None]
        raise DataError(f"{data_dir}: MNIST is incomplete, missing {', '.join(missing)}; "
                        + _missing_message(data_dir).split(": ", 1)[1])
    raise DataError(_missing_message(data_dir))


def md5sum(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_mnist(data_dir: str, mirrors=None, timeout: float = 30.0) -> list[str]:
    """Fetch the four gzipped IDX files into ``data_dir`` (MD5-verified); skip verified ones.

    ``mirrors``: base URLs tried in order (default ``MNIST_MIRRORS``).
    Returns the paths. Each file is written to a temporary name and moved into place only once
    its checksum matches, so an interrupted download leaves nothing that looks complete.
    """
    mirrors = MNIST_MIRRORS if mirrors is None else mirrors
    os.makedirs(data_dir, exist_ok=True)
    paths = []
    for name, md5 in MNIST_FILES.values():
        dest = os.path.join(data_dir, name)
        paths.append(dest)
        if os.path.isfile(dest) and md5sum(dest) == md5:
            continue
        errors = []
        for mirror in mirrors:
            fd, tmp = tempfile.mkstemp(prefix=name, dir=data_dir)
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=timeout) as r:
                    shutil.copyfileobj(r, out)
                got = md5sum(tmp)
                if got != md5:
                    errors.append(f"{mirror}: checksum {got} != {md5}")
                    continue
                os.replace(tmp, dest)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise DataError(f"cannot download {name} ({'; '.join(errors)}); offline, copy the MNIST "
                            f"files into {data_dir} by hand")
    return paths


# ----------------------------------------------------------------------------- digits
DIGITS_SPLIT_SEED = 0
DIGITS_TEST, DIGITS_VALID = 512, 256  # of 1797; training keeps the remaining 1029


def digits_splits(seed: int = DIGITS_SPLIT_SEED) -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0..16 as uint8), split test / valid / train by ``seed``.

    ``{train,valid,test}_{images (N, 8, 8) uint8, labels (N,) int32}``; the same seed always
    gives the same split.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)
    labels = d.target.astype(np.int32)
    order = np.random.RandomState(seed).permutation(len(labels))
    cut = {"test": order[:DIGITS_TEST], "valid": order[DIGITS_TEST:DIGITS_TEST + DIGITS_VALID],
           "train": order[DIGITS_TEST + DIGITS_VALID:]}
    out = {}
    for split, idx in cut.items():
        out[f"{split}_images"], out[f"{split}_labels"] = images[idx], labels[idx]
    return out
