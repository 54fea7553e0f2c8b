"""W&B logging in offline mode (no network, nothing under $HOME): a run's config, metric and
spectra scalars and singular-value histograms read back from its .wandb file; a resumed run keeps
its W&B id; a sweep group's members are one W&B run each; bad keys and a missing wandb are one
line. Needs wandb (skipped without it, except the missing-package test)."""

import os
import sys

import numpy as np
import pytest
from test_cli import ADDING, TINY, assert_user_error, run_cli

from rnn_spectra import workdir as wd
from rnn_spectra.errors import ConfigError
from rnn_spectra.loop import Loop, train_and_evaluate
from rnn_spectra.wandb_log import INSTALL_HINT, RUN_ID, offline_runs, read_offline_run


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """wandb without network and with its caches, settings and data under tmp_path."""
    pytest.importorskip("wandb")
    home = tmp_path / "wandb_home"
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return home


def history(workdir) -> list[dict]:
    """Every history row of every offline session of a workdir, oldest first."""
    return [row for d in offline_runs(workdir) for row in read_offline_run(d)["history"]]


def read_id(workdir) -> str:
    with open(os.path.join(workdir, RUN_ID)) as f:
        return f.read().strip()


def points(rows, tag) -> list[tuple[int, object]]:
    return [(r["step"], r[tag]) for r in rows if tag in r]


def test_an_offline_run_holds_the_config_metrics_spectra_and_histograms(tiny_config, tmp_path, offline):
    tiny_config.log.wandb, tiny_config.log.wandb_mode = True, "offline"
    tiny_config.spectral.every, tiny_config.spectral.lyapunov_k = 10, 2
    tiny_config.checkpoint.every_steps = 10
    w = str(tmp_path / "run")
    tiny_config.train.steps = 10
    train_and_evaluate(tiny_config, w)
    (first,) = offline_runs(w)
    run = read_offline_run(first)
    config = wd.read_json(wd.path(w, wd.CONFIG))
    assert {k: run["config"][k] for k in config} == config  # the whole config, as config.json

    tiny_config.train.steps = 20  # resumed: the same W&B run id, rows after step 10 once more
    run_id = read_id(w)
    train_and_evaluate(tiny_config, w)
    assert len(offline_runs(w)) == 2
    assert all(d.endswith(f"-{run_id}") for d in offline_runs(w))
    rows = history(w)
    train = [r for r in wd.read_jsonl(wd.path(w, wd.METRICS)) if r["split"] == "train"]
    logged = dict(points(rows, "train/loss"))
    assert sorted(logged) == [r["step"] for r in train]
    np.testing.assert_allclose([logged[r["step"]] for r in train], [r["loss"] for r in train], rtol=1e-6)
    assert [s for s, _ in points(rows, "eval/loss")] == [10, 20]

    spectra = wd.read_jsonl(wd.path(w, wd.SPECTRA))
    sigma = dict(points(rows, "spectral/sigma_max/W_s"))
    assert sorted(sigma) == [r["step"] for r in spectra] == [0, 10, 20]
    np.testing.assert_allclose([sigma[r["step"]] for r in spectra], [r["sv/W_s"][0] for r in spectra],
                               rtol=1e-6)
    assert any(t.startswith("spectral/lyapunov/") for r in rows for t in r)
    hists = dict(points(rows, "spectral/singular_values/W_s"))
    assert sorted(hists) == [0, 10, 20]
    for r in spectra:  # every singular value in one bin, the bins spanning them
        h = hists[r["step"]]
        assert h["_type"] == "histogram" and sum(h["values"]) == len(r["sv/W_s"]) == 8
        assert h["bins"][0] == pytest.approx(min(r["sv/W_s"])) and h["bins"][-1] == pytest.approx(max(r["sv/W_s"]))
    assert os.listdir(offline / "cache")  # wandb's own logs: under the test's WANDB_CACHE_DIR


@pytest.mark.slow
def test_a_sweep_groups_members_are_one_wandb_run_each(tiny_config, tmp_path, offline):
    configs = []
    for seed in (0, 1):
        c = tiny_config.copy_and_resolve_references()
        c.seed, c.train.steps = seed, 5
        c.log.wandb, c.log.wandb_mode = True, "offline"
        configs.append(c)
    dirs = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    Loop(configs, dirs, str(tmp_path / "group"), name="pilot/g").run()
    ids = set()
    for seed, d in enumerate(dirs):
        (run_dir,) = offline_runs(d)
        run = read_offline_run(run_dir)
        assert run["config"]["seed"] == seed
        assert [s for s, _ in points(run["history"], "train/loss")] == [5]
        ids.add(read_id(d))
    assert len(ids) == 2


def test_study_members_may_log_to_wandb_without_changing_their_hash(tiny_config):
    from rnn_spectra.study import members as member_lib
    from rnn_spectra.study.run import _settings

    overrides, _ = _settings({"log.wandb": "true", "log.wandb_mode": "offline",
                              "log.wandb_project": "p"}, 0)
    assert overrides["log.wandb_mode"] == "offline"  # a study accepts them
    logged = tiny_config.copy_and_resolve_references()
    logged.log.wandb, logged.log.wandb_mode, logged.log.wandb_project = True, "offline", "p"
    assert member_lib.config_hash(logged) == member_lib.config_hash(tiny_config)


def test_a_bad_wandb_mode_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--config", ADDING, "--workdir", str(tmp_path / "w"), *TINY,
                           "--config.log.wandb=true", "--config.log.wandb_mode=sometimes")
    assert_user_error(code, err, "log.wandb_mode must be one of online, offline, disabled")
    assert not os.path.exists(tmp_path / "w")


def test_missing_wandb_is_one_line_naming_the_extra(capsys, tmp_path, monkeypatch, tiny_config):
    monkeypatch.setitem(sys.modules, "wandb", None)  # the import now fails
    tiny_config.log.wandb = True
    with pytest.raises(ConfigError) as info:
        train_and_evaluate(tiny_config, str(tmp_path / "a"))
    assert str(info.value) == INSTALL_HINT and "rnn_spectra[wandb]" in INSTALL_HINT
    code, _, err = run_cli(capsys, "--config", ADDING, "--workdir", str(tmp_path / "w"), *TINY,
                           "--config.log.wandb=true")
    assert_user_error(code, err, INSTALL_HINT)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "w")
