"""Progress that tells the truth: "compiling…" before the first step, steps by time between log
steps, a study's bar whose best loss never rises and whose total is the work left. A fake clock:
no timing assertions."""

import io
import math

from rnn_spectra.loop import Loop
from rnn_spectra.progress import (
    COMPILING,
    REFRESH_S,
    Progress,
    RunBar,
    StudyBar,
    as_progress,
)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_run_bar_says_compiling_then_moves_by_time():
    out, clock = io.StringIO(), Clock()
    bar = RunBar("tanh_rnn/adding10", file=out, disable=False, clock=clock)
    bar.compiling("run", 3, 100)  # resumed at step 3
    assert COMPILING in out.getvalue() and bar.bar.n == 3
    clock.t = 30.0  # the first step took the compile
    bar.tick(4)
    assert bar.bar.n == 4 and COMPILING not in bar.bar.desc
    clock.t += REFRESH_S / 2
    bar.tick(5)  # too soon after the last move: nothing
    assert bar.bar.n == 4
    clock.t += REFRESH_S
    bar.tick(9)  # the host's step counter, not only log steps
    assert bar.bar.n == 9
    bar(None, 10, 100, {"loss": 0.25, "grad_norm": 1.5})  # a log step always moves it
    assert bar.bar.n == 10 and "loss=0.25" in str(bar.bar)
    bar.finish(10)
    assert bar.bar is None


def test_the_compile_is_not_in_the_run_bars_rate():
    out = io.StringIO()
    bar = RunBar("r", file=out, disable=False)
    bar.compiling("run", 0, 100)
    bar.bar.last_print_t -= 100.0  # as if compiling had taken 100 s
    bar.bar.start_t -= 100.0
    bar.tick(1)
    assert bar.bar.format_dict["elapsed"] < 50  # the clock restarted after the compile


def test_a_run_bar_is_off_when_stderr_is_not_a_tty():
    out = io.StringIO()  # not a TTY
    bar = RunBar("r", file=out)
    bar.compiling("run", 0, 10)
    bar.tick(1)
    bar(None, 5, 10, {"loss": 1.0, "grad_norm": 1.0})
    bar.finish(5)
    assert out.getvalue() == ""


def info(best, running=3, diverged=0):
    return {"best_loss": best, "running": running, "diverged": diverged, "members": 3,
            "loss": best, "grad_norm": 1.0}


def test_the_study_bars_best_loss_never_rises_within_a_group():
    out, clock = io.StringIO(), Clock()
    bar = StudyBar(file=out, disable=False, clock=clock)
    bar.add_phase("pilot", 2, 200.0)
    bar.start("pilot/a", 3, 100.0)
    bar.compiling("pilot/a", 0, 10)
    assert COMPILING in bar.bar.postfix
    seen = []
    for step, loss in enumerate([0.9, 0.5, 0.7, math.nan, 0.4, 0.6], start=1):
        bar("pilot/a", step, 10, info(loss))
        seen.append(bar.best)
    assert seen == [0.9, 0.5, 0.5, 0.5, 0.4, 0.4]
    assert "best loss 0.4" in bar.bar.postfix and "step 6/10" in bar.bar.postfix
    assert bar.bar.n == 60.0  # 6 of the group's 10 steps of 100 work
    bar.finish(10)
    bar.start("pilot/b", 3, 100.0)
    assert math.isinf(bar.best)  # another group: another task, its own best
    text = out.getvalue()
    assert "[1/2] pilot/a: 3 members in one program" in text and "best loss 0.4" in text
    assert "[2/2] pilot/b" in text


def test_the_study_bars_total_is_the_work_this_session_does():
    bar = StudyBar(file=io.StringIO(), disable=False, clock=Clock())
    bar.add_phase("pilot", 3, 300.0)
    bar.skip("pilot/a", 2, 100.0)  # finished earlier: not this session's work
    assert bar.bar.total == 200.0
    bar.start("pilot/b", 2, 100.0)
    bar.compiling("pilot/b", 4, 10)  # resumed at step 4: 40 work done earlier
    assert bar.bar.total == 160.0 and bar.bar.n == 0
    bar("pilot/b", 6, 10, info(0.5, running=0, diverged=2))
    bar.finish(6)  # every member diverged at step 6: the rest is not done either
    assert bar.bar.total == 120.0 and bar.bar.n == 20.0
    bar.add_phase("confirmation", 1, 50.0)  # a later phase joins the total when it starts
    assert bar.bar.total == 170.0


def test_a_quiet_study_bar_prints_nothing():
    out = io.StringIO()
    bar = StudyBar(file=out, disable=False, quiet=True)
    bar.add_phase("pilot", 1, 10.0)
    bar.start("g", 1, 10.0)
    bar.compiling("g", 0, 5)
    bar("g", 5, 5, info(0.1))
    bar.finish(5)
    assert out.getvalue() == "" and bar.bar is None


class Recorder(Progress):
    def __init__(self):
        self.events = []

    def compiling(self, name, start, steps):
        self.events.append(("compiling", start, steps))

    def tick(self, step):
        self.events.append(("tick", step))

    def __call__(self, name, step, steps, info):
        self.events.append(("log", step))

    def finish(self, step):
        self.events.append(("finish", step))


def test_the_loop_says_compiling_first_then_every_step(tiny_config, tmp_path):
    tiny_config.train.steps, tiny_config.train.log_every = 6, 3
    rec = Recorder()
    Loop([tiny_config], [str(tmp_path / "r")]).run(progress=rec)
    assert rec.events[0] == ("compiling", 0, 6)
    assert [e[1] for e in rec.events if e[0] == "tick"] == [1, 2, 3, 4, 5, 6]
    assert [e[1] for e in rec.events if e[0] == "log"] == [3, 6]
    assert rec.events.index(("tick", 3)) < rec.events.index(("log", 3))
    assert rec.events[-1] == ("finish", 6)


def test_a_plain_callable_is_still_a_progress():
    calls = []
    assert as_progress(None) is None
    wrapped = as_progress(lambda *a: calls.append(a))
    wrapped.compiling("x", 0, 1)
    wrapped.tick(1)
    wrapped("x", 1, 1, {})
    wrapped.finish(1)
    assert calls == [("x", 1, 1, {})]
