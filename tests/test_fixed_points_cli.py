"""``rnn-spectra analyze --fixed-points`` end to end on a tiny trained IRNN, and its bad input."""

import os

import numpy as np
import pytest

from rnn_spectra import cli
from rnn_spectra.analyze import FIGURES, FP_SEQUENCES, analyze_fixed_points
from rnn_spectra.errors import ConfigError, WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, T, STEPS = 4, 6, 6


@pytest.fixture(scope="module")
def tiny_irnn(tmp_path_factory):
    """An IRNN (a ReLU cell: the exact enumeration runs too) trained 6 steps; its final checkpoint."""
    workdir = str(tmp_path_factory.mktemp("fp") / "irnn")
    assert cli.main([
        "train", "--config", os.path.join(ROOT, "configs", "adding.py"), "--workdir", workdir,
        "--config.model.cell=irnn", "--config.model.recurrent_init=identity",
        f"--config.task.seq_len={T}", f"--config.model.hidden_size={H}", f"--config.train.steps={STEPS}",
        "--config.train.batch_size=4", f"--config.train.eval_every={STEPS}", "--config.train.eval_batches=1",
        "--config.train.eval_batch_size=8", "--config.train.log_every=3", "--config.train.progress=false",
        "--config.spectral.every=0"]) == 0
    return workdir


def test_analyze_fixed_points_cli(tiny_irnn, tmp_path, capsys):
    out = str(tmp_path / "out")
    os.makedirs(out)
    earlier = {}  # a plain analyze's figures, there before: --fixed-points leaves them alone
    for name in FIGURES:
        path = os.path.join(out, f"{name}.png")
        with open(path, "wb") as f:
            f.write(b"earlier figure")
        os.utime(path, (1_000_000, 1_000_000))
        earlier[path] = os.stat(path).st_mtime_ns
    capsys.readouterr()
    assert cli.main(["analyze", "--workdir", tiny_irnn, "--out", out, "--fixed-points",
                     "--candidates", "16"]) == 0
    printed = capsys.readouterr().out
    assert "fixed points (input x = 0)" in printed and "Under the constant input x = 0" in printed
    assert "Exact ReLU enumeration" in printed and "analysed ->" not in printed
    for path, mtime in earlier.items():
        with open(path, "rb") as f:
            assert os.stat(path).st_mtime_ns == mtime and f.read() == b"earlier figure", path
    assert not os.path.exists(os.path.join(out, f"spectra_step{STEPS}.npz"))  # fixed points only
    assert sorted(os.listdir(out)) == sorted([*(f"{n}.png" for n in FIGURES), "fixed_points.png",
                                              f"fixed_points_step{STEPS}.npz"])
    assert os.path.getsize(os.path.join(out, "fixed_points.png")) > 10_000
    r = np.load(os.path.join(out, f"fixed_points_step{STEPS}.npz"))
    assert int(r["step"]) == STEPS
    np.testing.assert_array_equal(r["x"], np.zeros(2))
    assert r["states"].shape == (1 + FP_SEQUENCES * T, H)  # s0 and every step of the probe unrolls
    assert r["fp/all_points"].shape == (16, H) and r["fp/all_q"].shape == (16,)
    m, s = len(r["fp/points"]), len(r["fp/slow_points"])
    assert m + s >= 1
    assert r["fp/eigenvalues"].shape == (m, H) and r["fp/jacobians"].shape == (m, H, H)
    assert r["fp_slow/eigenvalues"].shape == (s, H) and r["fp_slow/num_unstable"].shape == (s,)
    for key in ("points", "patterns", "eigenvalues", "num_tried", "num_singular", "num_found"):
        assert f"fp_relu/{key}" in r.files
    assert int(r["fp_relu/num_tried"]) >= 1


def test_analyze_fixed_points_function(tiny_irnn, tmp_path):
    res = analyze_fixed_points(tiny_irnn, out=str(tmp_path), candidates=8)
    c = res["counts"]
    assert res["step"] == STEPS and c["candidates"] == 8
    assert c["fixed"] + c["slow"] + c["neither"] >= 1
    assert (1 <= c["fixed_on_pcs"] <= c["fixed"]) if c["fixed"] else c["fixed_on_pcs"] == 0
    assert c["relu"]["units"] == H and 0 <= c["relu"]["inactive_units"] <= H
    assert res["summary"].startswith(f"irnn step {STEPS}: Under the constant input x = 0")
    with pytest.raises(ConfigError, match="positive integer"):
        analyze_fixed_points(tiny_irnn, candidates=0)
    with pytest.raises(WorkdirError, match="is not a run"):
        analyze_fixed_points(str(tmp_path))


def test_analyze_fixed_points_bad_input(tiny_irnn, tmp_path, capsys):
    out = tmp_path / "never"
    for argv, message in [
        (["--fixed-points", "--candidates", "0"], "--candidates must be a positive integer"),
        (["--fixed-points", "--candidates", "-3"], "--candidates must be a positive integer"),
        (["--candidates", "8"], "add --fixed-points"),
        (["--fixed-points", "--step", "4"], f"no checkpoint at step 4; available: [{STEPS}]"),
    ]:
        capsys.readouterr()
        assert cli.main(["analyze", "--workdir", tiny_irnn, "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (argv, err)
        assert not out.exists()  # refused before any analysis ran
    assert cli.main(["analyze", "--workdir", str(tmp_path), "--fixed-points"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a run" in err and "\n" not in err


def test_parameters_that_blow_the_state_up_are_one_line(tiny_irnn, tmp_path, capsys):
    """Huge weights (what a diverging run checkpoints last) send the probe states to inf/NaN:
    the spectra and the fixed points are undefined there, said in one line, exit 2."""
    import jax

    from rnn_spectra.analyze import analyze_workdir, open_checkpoint
    from rnn_spectra.errors import SpectralInputError

    run, params, step, _ = open_checkpoint(tiny_irnn, out=str(tmp_path / "a"))
    huge = jax.tree_util.tree_map(lambda a: a * 1e38, params)
    with pytest.raises(WorkdirError, match="not finite") as info:
        analyze_workdir(tiny_irnn, opened=(run, huge, step, str(tmp_path / "a")))
    assert "\n" not in str(info.value) and "--step" in str(info.value)
    with pytest.raises(SpectralInputError, match="states visited on these inputs are not finite") as info:
        analyze_fixed_points(tiny_irnn, opened=(run, huge, step, str(tmp_path / "a")))
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path / "a") == []  # nothing half-written


def test_too_many_candidates_are_refused_before_the_search(tiny_irnn, tmp_path, capsys):
    capsys.readouterr()
    code = cli.main(["analyze", "--workdir", tiny_irnn, "--out", str(tmp_path / "o"),
                     "--fixed-points", "--candidates", "1000000000000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--candidates 1000000000000 needs about" in err, err
    assert "choose at most" in err


def test_a_full_disk_while_writing_the_fixed_points_is_74_without_partial_files(
        tiny_irnn, tmp_path, monkeypatch, capsys):
    import errno

    real = np.savez_compressed

    def full(path, *args, **kwargs):
        real(path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(5)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    out = tmp_path / "o"
    monkeypatch.setattr(np, "savez_compressed", full)
    capsys.readouterr()
    code = cli.main(["analyze", "--workdir", tiny_irnn, "--out", str(out), "--fixed-points",
                     "--candidates", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith(("analyzing", "fixed points of"))]
    assert code == 74 and len(err) == 1 and "No space left on device" in err[0], (code, err)
    assert [f for f in os.listdir(out) if f.endswith(".npz") or ".tmp." in f] == []


def test_argparse_errors_are_one_line(capsys):
    for argv in (["analyze", "--workdir", "w", "--candidates", "abc"], ["trian"], []):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and "\n" not in err and "error:" in err and "--help" in err, err
