"""Sweeps: one vmapped program equals its members trained alone; a diverging member is isolated;
an interrupted group resumes to the same numbers."""

import os
import signal

import numpy as np
import pytest

from rnn_spectra import config as config_lib
from rnn_spectra import workdir as wd
from rnn_spectra.errors import ConfigError
from rnn_spectra.loop import Loop
from rnn_spectra.sweep import group_by_program, program_signature
from rnn_spectra.loop import train_and_evaluate


def member(tiny, *, seed=0, cell="relu_rnn", init="orthogonal", scale=None, lr=1e-2,
           clip="global_norm", clip_value=1.0, seq_len=10, steps=20):
    c = tiny.copy_and_resolve_references()
    c.seed, c.model.cell, c.model.recurrent_init, c.model.init_scale = seed, cell, init, scale
    c.optim.learning_rate, c.optim.clip, c.optim.clip_value = lr, clip, clip_value
    c.task.seq_len, c.train.steps = seq_len, steps
    return c


def rows(workdir, split=None):
    return [r for r in wd.read_jsonl(wd.path(workdir, wd.METRICS)) if split in (None, r["split"])]


def test_grouping_keeps_shape_changing_fields_apart(tiny_config):
    runs = [config_lib.resolve(c) for c in (
        member(tiny_config, seed=0), member(tiny_config, seed=1, lr=1e-3, clip="none"),
        member(tiny_config, cell="irnn", init="identity"),  # same program as relu_rnn
        member(tiny_config, cell="tanh_rnn"),  # another activation: another program
        member(tiny_config, clip="value"),  # another optimizer state structure
        member(tiny_config, seq_len=12),  # another shape
    )]
    assert group_by_program(runs) == [[0, 1, 2], [3], [4], [5]]
    assert program_signature(runs[0]) == program_signature(runs[2])


def test_member_equals_the_same_config_trained_alone(tiny_config, tmp_path):
    configs = [member(tiny_config, seed=0, lr=1e-2, clip="none"),
               member(tiny_config, seed=1, lr=3e-3, clip="global_norm", clip_value=0.5),
               member(tiny_config, seed=2, cell="irnn", init="identity", lr=1e-2)]
    dirs = [str(tmp_path / f"m{i}") for i in range(len(configs))]
    summaries = Loop(configs, dirs, str(tmp_path / "group")).run()
    for cfg, d, s in zip(configs, dirs, summaries):
        alone = train_and_evaluate(cfg, str(tmp_path / f"alone_{os.path.basename(d)}"))
        a, b = rows(str(tmp_path / f"alone_{os.path.basename(d)}")), rows(d)
        assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
        for ra, rb in zip(a, b):
            for key in ("loss", "grad_norm", "learning_rate"):
                if key in ra:
                    np.testing.assert_allclose(rb[key], ra[key], rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(s["final_eval"]["loss"], alone["final_eval"]["loss"], rtol=2e-5)
        assert s["status"] == alone["status"] == "completed"


def test_a_diverging_member_does_not_disturb_the_others(tiny_config, tmp_path):
    healthy = [member(tiny_config, seed=s, init="orthogonal", seq_len=100) for s in (0, 1)]
    # W_s = 2 I without clipping: the forward pass overflows float32 at T=100 (2^100 > 3e38).
    bad = member(tiny_config, seed=0, cell="irnn", init="identity", scale=2.0, clip="none",
                 seq_len=100)
    alone_dirs = [str(tmp_path / f"h{i}") for i in range(2)]
    Loop(healthy, alone_dirs, str(tmp_path / "g_healthy")).run()
    mixed_dirs = [str(tmp_path / "m0"), str(tmp_path / "bad"), str(tmp_path / "m1")]
    summaries = Loop([healthy[0], bad, healthy[1]], mixed_dirs, str(tmp_path / "g_mixed")).run()
    assert summaries[1]["status"] == "diverged"
    assert summaries[1]["diverged_step"] == 1 and summaries[1]["last_good_step"] == 0
    assert rows(mixed_dirs[1]) == []  # nothing recorded past the last good step
    for i, j in ((0, 0), (2, 1)):
        assert summaries[i]["status"] == "completed"
        a, b = rows(alone_dirs[j]), rows(mixed_dirs[i])
        assert len(a) == len(b)
        for ra, rb in zip(a, b):
            assert np.isfinite(rb["loss"])
            np.testing.assert_allclose(rb["loss"], ra["loss"], rtol=2e-5)


def test_interrupted_group_resumes_to_the_same_numbers(tiny_config, tmp_path):
    configs = [member(tiny_config, seed=s, steps=30) for s in (0, 1)]
    for c in configs:
        c.checkpoint.every_steps = 10
    full = [str(tmp_path / f"full{i}") for i in range(2)]
    Loop(configs, full, str(tmp_path / "g_full")).run()

    cut = [str(tmp_path / f"cut{i}") for i in range(2)]

    def preempt(name, step, steps, info):
        if step == 15:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the group: checkpoint, then stop

    first = Loop(configs, cut, str(tmp_path / "g_cut")).run(progress=preempt)
    assert [s["status"] for s in first] == ["interrupted"] * 2
    second = Loop(configs, cut, str(tmp_path / "g_cut")).run()
    assert [s["status"] for s in second] == ["completed"] * 2
    for a, b in zip(full, cut):
        ra = [{k: v for k, v in r.items() if k != "wall_time"} for r in rows(a)]
        rb = [{k: v for k, v in r.items() if k != "wall_time"} for r in rows(b)]
        assert ra == rb


def test_members_that_cannot_share_a_program_are_refused(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="differ in more than"):
        Loop([member(tiny_config), member(tiny_config, cell="tanh_rnn")],
                   [str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "g"))


def test_step0_spectra_are_those_of_the_initial_params(tiny_config, tmp_path):
    """Rows come in step order, once each, and the step-0 row is the measurement of the initial
    params, for a single run and for every sweep member."""
    from rnn_spectra.spectral.monitor import SpectralMonitor
    from rnn_spectra.train import build, init_state

    configs = [member(tiny_config, seed=s) for s in (0, 1)]
    for c in configs:
        c.spectral.every, c.spectral.lyapunov_k = 10, 2
    dirs = [str(tmp_path / f"m{i}") for i in range(2)]
    Loop(configs, dirs, str(tmp_path / "group")).run()
    train_and_evaluate(configs[0], str(tmp_path / "alone"))
    exp = build(config_lib.resolve(configs[0]))
    for cfg, d in zip(configs, dirs):
        written = str(tmp_path / f"want{cfg.seed}.jsonl")  # as the run writes it ("-inf" etc.)
        wd.append_jsonl(written, [SpectralMonitor(exp).measure(init_state(exp, cfg.seed)["params"], 0)])
        want = wd.read_jsonl(written)[0]
        spectra = wd.read_jsonl(wd.path(d, wd.SPECTRA))
        assert [r["step"] for r in spectra] == [0, 10, 20]
        for key in ("sv/W_s", "jac_log_norm/mean", "lyapunov/mean", "grad_flow/log_norm"):
            got, ref = (np.asarray(v, dtype=float) for v in (spectra[0][key], want[key]))
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=key)
        if cfg is configs[0]:
            alone = wd.read_jsonl(wd.path(str(tmp_path / "alone"), wd.SPECTRA))
            assert [r["step"] for r in alone] == [0, 10, 20] and alone[0] == want
