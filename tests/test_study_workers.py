"""A study's groups as units of work: `study --plan`, `--phase/--group` and `--workers N` give the
same members, rows and claims as one process training the whole study."""

import json
import os

import pytest

from rnn_spectra import cli
from rnn_spectra import workdir as wd
from rnn_spectra.study.presets import PRESETS, Preset, TaskEntry, base, variant

# Two programs per phase (a tanh RNN and a GRU), so that two workers each take one.
TWO = Preset(name="tiny_two", description="two programs per phase",
             base=base(hidden_size=8, steps=6, batch_size=4, eval_every=3, eval_batches=1,
                       eval_batch_size=8, log_every=3, spectral_every=3),
             tasks=(TaskEntry("adding", 6),),
             variants=(variant("tanh_rnn", "orthogonal", 1.0), variant("gru", "orthogonal", 1.0)),
             clips=("none",), learning_rates=(1e-3, 1e-2), clip_values=(1.0,),
             pilot_seeds=(0, 1), confirm_seeds=(5, 6), test_chunks=1)
TIME_KEYS = ("wall_time", "wall_time_s", "started", "finished", "time", "workers",
             "s_per_1000_steps", "steps_per_s", "sweep")


@pytest.fixture
def two(monkeypatch):
    monkeypatch.setitem(PRESETS, TWO.name, TWO)
    return TWO.name


def _strip(obj):
    """The content of a record without the fields that say when or how fast it ran."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if k not in TIME_KEYS and "time" not in k and "seconds" not in k}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _content(w: str) -> dict:
    out = {}
    for root, _, files in os.walk(w):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), w)
            # timing.json: one model's clock (study/timing.py), nothing the workers computed
            if rel.startswith(("groups", "figures")) or "checkpoints" in rel or f.endswith(".md") \
                    or f == "timing.json":
                continue
            path = os.path.join(root, f)
            if f.endswith(".jsonl"):
                out[rel] = [_strip(json.loads(line)) for line in open(path)]
            elif f.endswith(".json") and f != "study.json.lock":
                out[rel] = _strip(wd.read_json(path))
    return out


@pytest.mark.slow
def test_two_workers_give_the_numbers_of_one_process(two, tmp_path):
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    assert cli.main(["study", "--preset", two, "--workdir", one, "--workers", "1"]) == 0
    assert cli.main(["study", "--preset", two, "--workdir", many, "--workers", "2"]) == 0
    a, b = _content(one), _content(many)
    assert sorted(a) == sorted(b) and len(a) > 20
    for rel in a:
        assert a[rel] == b[rel], rel
    assert wd.read_json(os.path.join(many, "study.json"))["workers"] == 2
    assert wd.read_json(os.path.join(many, "study.json"))["groups_found_done"] == 0
    # again: the workers find every group done, and the report gives no speed for this run
    assert cli.main(["study", "--preset", two, "--workdir", many, "--workers", "2"]) == 0
    assert wd.read_json(os.path.join(many, "study.json"))["groups_found_done"] == 6  # 2 per phase


def test_plan_then_groups_one_by_one_then_the_study_finishes(two, tmp_path, capsys):
    w = str(tmp_path / "s")
    assert cli.main(["study", "--preset", two, "--workdir", w, "--plan"]) == 0
    plan = capsys.readouterr().out
    assert "pilot (pilot): 8 members in 2 groups" in plan and "--phase pilot --group 1" in plan
    assert "confirm (confirmation): planned once the phases before it have finished" in plan
    assert not os.path.exists(w)  # --plan writes nothing
    assert cli.main(["study", "--preset", two, "--workdir", w, "--phase", "extend", "--group", "0"]) == 2
    assert "has not finished" in capsys.readouterr().err  # the pilot comes first
    for k in (1, 0, 1):  # any order; the repeat is idempotent (done, skipped)
        assert cli.main(["study", "--preset", two, "--workdir", w, "--phase", "pilot",
                         "--group", str(k)]) == 0
    assert cli.main(["study", "--preset", two, "--workdir", w, "--phase", "pilot", "--group", "2"]) == 2
    assert "has 2 groups (0 to 1), not 2" in capsys.readouterr().err
    capsys.readouterr()
    assert cli.main(["study", "--preset", two, "--workdir", w, "--plan"]) == 0
    plan = capsys.readouterr().out
    assert plan.count("(done)") == 2 and "extend (grid extension):" in plan
    # the whole study now trains only what is left, then reports
    assert cli.main(["study", "--preset", two, "--workdir", w, "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("(done, skipped)") == 2
    # its wall time is the last run's alone: the report says so instead of a speed
    assert wd.read_json(os.path.join(w, "study.json"))["groups_found_done"] == 2
    with open(os.path.join(w, "report.md")) as f:
        machine = f.read().splitlines()[2]
    assert "it found 2 groups already trained" in machine and "member·steps/s" not in machine
    pilot = [m for m in wd.read_json(os.path.join(w, "study.json"))["members"] if m["phase"] == "pilot"]
    assert len(pilot) == 8  # recorded once, though three commands recorded them


def test_phase_and_group_go_together(two, tmp_path, capsys):
    assert cli.main(["study", "--preset", two, "--workdir", str(tmp_path / "s"), "--phase", "pilot"]) == 2
    assert "--phase and --group go together" in capsys.readouterr().err
    assert cli.main(["study", "--preset", two, "--workdir", str(tmp_path / "s"), "--workers", "0"]) == 2
    assert "--workers must be a positive integer" in capsys.readouterr().err


def test_a_study_logs_every_member_to_tensorboard_with_its_hparams(two, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    from rnn_spectra.tensorboard import read_hparams, read_scalars

    # the pilot only: enough members to compare, a fraction of the study's time
    monkeypatch.setattr("rnn_spectra.study.run.PHASES", {"pilot": "pilot"})
    w = str(tmp_path / "s")
    assert cli.main(["study", "--preset", two, "--workdir", w, "--workers", "1", "--no-report",
                     "--config.log.tensorboard=true"]) == 0
    members = wd.read_json(os.path.join(w, "study.json"))["members"]
    seen = set()
    for m in members:
        hp = read_hparams(os.path.join(w, m["relpath"]))
        assert hp["model.cell"] in ("tanh_rnn", "gru") and hp["seed"] == m["seed"]
        assert hp["optim.learning_rate"] == pytest.approx(m["learning_rate"])
        seen.add((hp["model.cell"], hp["optim.learning_rate"], hp["seed"]))
        tags = read_scalars(os.path.join(w, m["relpath"]))
        assert "eval/loss" in tags
        lags = [t for t in tags if "/lag_" in t]
        assert lags and all(len(t.rsplit("_", 1)[1]) == 3 for t in lags)  # lag_001: sorts
    assert len(seen) == len(members) == 8


def test_pin_plan_gives_each_worker_a_disjoint_share_of_the_cores():
    from rnn_spectra.study.workers import pin_plan

    assert pin_plan(2, [0, 1]) == [{0}, {1}]
    assert pin_plan(2, [0, 1, 2, 3, 4]) == [{0, 2, 4}, {1, 3}]
    assert pin_plan(3, [4, 5]) == [{4}, {5}, {4}]  # more workers than cores: one core each


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux CPU affinity and at least 2 cores")
def test_each_worker_runs_on_its_own_share_of_the_cores():
    from rnn_spectra.study.workers import WorkerPool, pin_plan

    shares = pin_plan(2, sorted(os.sched_getaffinity(0)))
    with WorkerPool(2, train_one_group=None) as pool:
        seen = [pool.pool.submit(os.sched_getaffinity, 0).result() for _ in range(4)]
    assert all(s in shares for s in seen), (seen, shares)


def _die(*args, **kwargs):
    os._exit(9)  # as a worker killed for memory: no exception, no clean-up


def test_a_worker_that_dies_stops_the_study_in_one_line_to_resume():
    from types import SimpleNamespace

    from rnn_spectra.errors import Interrupted
    from rnn_spectra.study.workers import WorkerPool

    group = SimpleNamespace(name="pilot/adding_T8/relu", cost=1.0, index=0)
    phase = SimpleNamespace(prepare=lambda members: [group], record_members=lambda: None,
                            preset=SimpleNamespace(name="smoke"), workdir="unused", found_done=0)
    bar = SimpleNamespace(line=lambda text: None, add_phase=lambda *a: None, done=lambda *a, **k: None)
    with pytest.raises(Interrupted, match="worker process died while training group "
                                          "pilot/adding_T8/relu.*run the same command to resume"):
        with WorkerPool(1, train_one_group=_die) as pool:
            pool.train_phase(phase, "pilot", ["m"], {}, 0, bar)
