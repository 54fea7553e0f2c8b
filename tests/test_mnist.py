"""Pixel MNIST end to end on tiny IDX / npz files written here: reading (gzipped or not), the
variants (784 pixels, 14x14, rows), expRNN's permutation, the splits, and one-line errors for
missing, incomplete, corrupted and undownloadable files."""

import gzip
import hashlib
import os

import numpy as np
import pytest

from rnn_spectra import cli, datasets
from rnn_spectra.config import TaskConfig
from rnn_spectra.errors import ConfigError, DataError
from rnn_spectra.tasks import get_task

N_TRAIN, N_TEST = 36, 10


def _images(n, seed):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n, 28, 28)).astype(np.uint8), rng.randint(0, 10, n).astype(np.uint8)


def write_mnist(folder, gz=True):
    os.makedirs(folder, exist_ok=True)
    (xtr, ytr), (xte, yte) = _images(N_TRAIN, 0), _images(N_TEST, 1)
    arrays = {"train_images": xtr, "train_labels": ytr, "test_images": xte, "test_labels": yte}
    for key, (name, _) in datasets.MNIST_FILES.items():
        datasets.write_idx(os.path.join(folder, name if gz else name[:-3]), arrays[key])
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_gzipped_or_not(tmp_path, gz):
    arrays = write_mnist(str(tmp_path), gz=gz)
    loaded = datasets.load_mnist(str(tmp_path))
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
    assert loaded["train_labels"].dtype == np.int32 and loaded["train_images"].dtype == np.uint8
    # The bytes are the IDX format itself: magic 0x00000803, then big-endian dims.
    name = datasets.MNIST_FILES["train_images"][0]
    raw = (gzip.open if gz else open)(str(tmp_path / (name if gz else name[:-3])), "rb").read()
    assert raw[:16] == bytes([0, 0, 8, 3]) + np.asarray([N_TRAIN, 28, 28], ">u4").tobytes()


def test_npz_loads_and_the_task_variants(tmp_path):
    arrays = write_mnist(str(tmp_path / "idx"))
    np.savez(tmp_path / "mnist.npz", x_train=arrays["train_images"], y_train=arrays["train_labels"],
             x_test=arrays["test_images"], y_test=arrays["test_labels"])
    from_npz = datasets.load_mnist(str(tmp_path))
    for key, value in arrays.items():
        np.testing.assert_array_equal(from_npz[key], value)

    def task(seq_len, permuted=False):
        return get_task(TaskConfig("pixel_mnist", seq_len, permuted=permuted, data_dir=str(tmp_path)))

    t = task(784)
    d = t.data
    n_valid = N_TRAIN // 12
    assert (t.input_size, t.length) == (1, 784)
    assert d.x_train.shape == (N_TRAIN - n_valid, 784, 1) and d.x_valid.shape == (n_valid, 784, 1)
    assert d.x_test.shape == (N_TEST, 784, 1)
    # Validation is held out of the training split; test is the test split, in file order.
    flat = arrays["train_images"].reshape(N_TRAIN, -1)
    order = np.random.RandomState(0).permutation(N_TRAIN)
    np.testing.assert_array_equal(np.asarray(d.x_valid)[..., 0], flat[order[:n_valid]])
    np.testing.assert_array_equal(np.asarray(d.x_train)[..., 0], flat[order[n_valid:]])
    np.testing.assert_array_equal(np.asarray(d.y_test), arrays["test_labels"])
    x, y = t.eval_batch(None, 0, 4, test=True)
    np.testing.assert_allclose(x[..., 0], arrays["test_images"][:4].reshape(4, -1) / 255.0, rtol=1e-6)
    # Permuted: expRNN's fixed permutation of the 784 pixels.
    perm = np.random.RandomState(92916).permutation(784)
    tp = task(784, permuted=True)
    np.testing.assert_array_equal(np.asarray(tp.data.x_test)[..., 0],
                                  arrays["test_images"].reshape(N_TEST, -1)[:, perm])
    # 14x14: 2x2 averages, one per step; rows: 28 steps of 28 pixels.
    t14 = task(196)
    x14, _ = t14.eval_batch(None, 0, N_TEST, test=True)
    pooled = arrays["test_images"].reshape(N_TEST, 14, 2, 14, 2).astype(np.float64).mean((2, 4)) / 255
    np.testing.assert_allclose(np.asarray(x14)[..., 0], pooled.reshape(N_TEST, 196), rtol=1e-5)
    rows = task(28)
    assert rows.input_size == 28
    np.testing.assert_array_equal(np.asarray(rows.data.x_test), arrays["test_images"])
    with pytest.raises(ConfigError, match="784 .*196 .*28"):
        task(100)


def test_missing_and_incomplete_files_say_where_to_put_them(tmp_path, capsys):
    empty = str(tmp_path / "nothing")
    with pytest.raises(DataError) as e:
        datasets.load_mnist(empty)
    msg = str(e.value)
    assert empty in msg and "train-images-idx3-ubyte.gz" in msg and "rnn-spectra data download mnist" in msg
    assert "\n" not in msg
    write_mnist(str(tmp_path / "part"))
    os.remove(tmp_path / "part" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="incomplete, missing t10k-labels-idx1-ubyte.gz"):
        datasets.load_mnist(str(tmp_path / "part"))
    # Through the CLI: training on missing MNIST is one line on stderr and exit code 2
    # (configs/pixel_mnist.py as shipped; only the folder is overridden).
    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "pixel_mnist.py")
    code = cli.main(["train", "--config", config, "--workdir", str(tmp_path / "run"),
                     f"--config.task.data_dir={empty}", "--config.train.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "MNIST files not found in " + empty in err


def test_corrupted_files_are_clear_errors(tmp_path):
    write_mnist(str(tmp_path))
    path = tmp_path / datasets.MNIST_FILES["train_images"][0]
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated gzip stream
    with pytest.raises(DataError, match="corrupted"):
        datasets.load_mnist(str(tmp_path))
    path.write_bytes(gzip.compress(gzip.decompress(good)[:-100]))  # valid gzip, short IDX data
    with pytest.raises(DataError, match=r"shape \(36, 28, 28\).*truncated or corrupted"):
        datasets.load_mnist(str(tmp_path))
    path.write_bytes(gzip.compress(b"\x01\x02" + gzip.decompress(good)[2:]))  # bad magic
    with pytest.raises(DataError, match="not an IDX file"):
        datasets.load_mnist(str(tmp_path))
    bad_npz = tmp_path / "npz"
    bad_npz.mkdir()
    (bad_npz / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="mnist.npz: cannot read"):
        datasets.load_mnist(str(bad_npz))


def test_download_verifies_checksums_and_fails_offline_in_one_line(tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    write_mnist(str(mirror))
    md5 = {key: (name, hashlib.md5((mirror / name).read_bytes()).hexdigest())
           for key, (name, _) in datasets.MNIST_FILES.items()}
    monkeypatch.setattr(datasets, "MNIST_FILES", md5)
    url = mirror.as_uri() + "/"
    paths = datasets.download_mnist(str(tmp_path / "got"), mirrors=("http://127.0.0.1:9/", url))
    assert [os.path.basename(p) for p in paths] == [n for n, _ in md5.values()]
    for p in paths:
        assert open(p, "rb").read() == (mirror / os.path.basename(p)).read_bytes()
    # A file whose checksum does not match is not kept.
    bad = dict(md5, train_images=(md5["train_images"][0], "0" * 32))
    monkeypatch.setattr(datasets, "MNIST_FILES", bad)
    with pytest.raises(DataError, match="checksum"):
        datasets.download_mnist(str(tmp_path / "bad"), mirrors=(url,))
    assert not os.listdir(tmp_path / "bad")
    # Offline: the CLI prints one line naming the folder and exits 2.
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))
    code = cli.main(["data", "download", "mnist", "--data-dir", str(tmp_path / "offline")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot download" in err and str(tmp_path / "offline") in err
