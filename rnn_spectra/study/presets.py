"""The study's presets: the question's variants, the arms and the named designs built from
them (``design.py`` holds what a preset is made of: ``Preset``, ``Variant``, ``TaskEntry``,
``Search``). Every setting is a config key (``rnn_spectra.config``): nothing here re-spells
one. Plain data, no JAX: the CLI reads the preset names from here without starting JAX.

A study runs in two phases (``run.py``): the *pilot* trains every setting of the grid on
``pilot_seeds`` and chooses each row's setting by validation loss (extending the learning-rate
grid once where the best point is at its edge); the *confirmation* trains the chosen setting on
fresh ``confirm_seeds``, whose test losses are the numbers the report quotes.

A preset with a ``Search`` gives every row the same tuning budget instead of a grid: the same
``trials`` quasi-random points (learning rate, clip threshold, recurrent init gain) for every
cell (Melis et al. 2018: only an equal budget compares architectures, not their tuning).
"""

from __future__ import annotations

import dataclasses
import math

from rnn_spectra.errors import unknown_name
from rnn_spectra.study.design import (  # noqa: F401 - the design's types, importable from here too
    GAINLESS_INITS, Preset, Search, Settings, TaskEntry, Variant, base, log_grid, variant,
)


# The question's variants. Init scales follow docs/references.md: tanh N(0, 1/N); ReLU N(0, 2/N)
# (He); orthogonal gain 1; IRNN W = I (Le et al. 2015); np-RNN top eigenvalue 1 (Talathi & Vartak).
BASE_VARIANTS = (
    variant("tanh_rnn", "normal", 1.0),
    variant("tanh_rnn", "orthogonal", 1.0),
    variant("relu_rnn", "normal", math.sqrt(2.0)),
    variant("relu_rnn", "orthogonal", 1.0),
    variant("irnn", "identity", 1.0),
    variant("relu_rnn", "np_rnn", 1.0),
    variant("lstm", "orthogonal", 1.0),
    variant("gru", "orthogonal", 1.0),
)
# Cells that constrain W_s instead (cells/constrained.py), each with its paper's settings.
# IndRNN as its official code trains the layer that is read out (Sunnydreamrain/IndRNN_Theano_Lasagne
# adding/adding.py; IndRNN_pytorch pixelMNIST): u ~ U[2^(-1/T), 2^(1/T)] ("indrnn" init, MAG =
# init_scale = 2), |u| <= 2^(1/T) (the cell's projection), input weights N(0, 0.001^2)
# (in2hidW=0.001), gradients clipped element-wise at 10 (gradclipvalue=10: the PyTorch code's
# p.grad.clamp_(-10, 10); the Theano code clips the backpropagated messages at 10 inside the
# layer, which optax has no counterpart for). Its Adam lr 2e-4 is not taken: our runs are 10^2 to
# 10^3 steps, not 10^5, so it gets the preset's learning-rate grid like every variant.
INDRNN_PAPER = variant("indrnn", "indrnn", 2.0, label="indrnn/paper",
                       config=(("model.input_init", "normal_std"), ("model.input_scale", 1e-3)),
                       clips=("value",), clip_values=(10.0,))
# AntisymmetricRNN with a stable forward Euler step (cells/constrained.py): gamma >= eps w^2 / 2
# for the largest |eig(W - W^T)| w ~ 2.9 of its normal init (eps 0.1 is in Chang et al.'s grid
# {0.01, 0.1, 1}); the config defaults, spelled out so the table names them.
ANTISYMMETRIC_STABLE = variant("antisymmetric", "normal", 1.0, label="antisymmetric/eps0.1_g0.5",
                               config=(("model.epsilon", 0.1), ("model.gamma", 0.5)))
CONSTRAINED_VARIANTS = (
    INDRNN_PAPER,
    ANTISYMMETRIC_STABLE,
    variant("exprnn", "henaff", 1.0),
)
# The image tasks; permuted ones get their own table.
DIGITS = (TaskEntry("digits", 64), TaskEntry("digits", 64, (("task.permuted", True),)))
DIGITS_REFERENCES = ("tanh_rnn/orthogonal", "irnn/identity", "lstm/orthogonal", "gru/orthogonal")
PIXEL_MNIST = (TaskEntry("pixel_mnist", 784), TaskEntry("pixel_mnist", 784, (("task.permuted", True),)))



# 5 points over 2 decades; centred where the pilot of an earlier version chose (the gated cells at
# its top, 0.0316 after extending 1e-4..1e-2; the ReLU inits across it)
ADAM_LRS = log_grid(10 ** -3.5, 10 ** -1.5, 5)
SGD_LRS = log_grid(1e-3, 1e-1, 5)
# The exploding claim is about SGD (Adam's step is bounded by its learning rate): a tanh and the
# ReLU variants again with plain SGD (np-RNN and tanh/normal left out for time), as Pascanu et al. and Le et al. trained them, without and
# with norm clipping (threshold chosen in the pilot), logged every 10 steps so that the
# instability events (criteria.py) are counted on 1 step in 10 rather than 1 in 50.
SGD_ARM = tuple(dataclasses.replace(
    v, name=f"{v.name}/sgd", config=v.config + (("optim.name", "sgd"), ("train.log_every", 10)),
    learning_rates=SGD_LRS, clips=("none", "global_norm"), clip_values=(1.0, 10.0),
    tasks=("adding_T100",)) for v in BASE_VARIANTS
    if v.name in ("tanh_rnn/orthogonal", "relu_rnn/normal", "relu_rnn/orthogonal", "irnn/identity"))
# Fair size: the plain RNNs again with the LSTM's free-parameter count (H = 65 instead of 32).
MATCHED_PARAMS = tuple(dataclasses.replace(v, name=f"{v.name}/params=lstm", match_params_of="lstm",
                                           tasks=("adding_T100",))
                       for v in BASE_VARIANTS if v.name in ("tanh_rnn/orthogonal",
                                                            "relu_rnn/orthogonal", "irnn/identity"))
# ... and with the GRU's (H = 57 at H = 32): both gated cells are a fair size to match.
MATCHED_BOTH = MATCHED_PARAMS + tuple(
    dataclasses.replace(v, name=v.name.replace("params=lstm", "params=gru"), match_params_of="gru")
    for v in MATCHED_PARAMS)
MATCHED_BOTH = tuple(dataclasses.replace(v, clips=("none",)) for v in MATCHED_BOTH)  # for time
ADDING = (TaskEntry("adding", 50), TaskEntry("adding", 100), TaskEntry("adding", 200))
CPU_BASE = base(hidden_size=32, steps=600, batch_size=32, eval_every=50, eval_batches=2,
                eval_batch_size=128, log_every=50, spectral_every=300)
NO_PILOT_SPECTRA = (("spectral.every", 0),)  # the pilot chooses; the confirmation is measured
# The design the CPU and GPU presets share: Adam, no clipping (the SGD arm brings its own), the
# grid on 2 pilot seeds, the chosen setting on 5 fresh ones.
SELECT_THEN_CONFIRM = dict(clips=("none",), learning_rates=ADAM_LRS, clip_values=(1.0,),
                           pilot_seeds=(0, 1), confirm_seeds=(100, 101, 102, 103, 104),
                           pilot_config=NO_PILOT_SPECTRA)

# The equal tuning budget (issue #27): 8 Sobol points per row over 3 decades of Adam's learning
# rate (the old grid's 2 decades plus the one the LSTM's extension reached), 2 of the global-norm
# threshold and a recurrent init gain x0.5..x1.5; SGD over its own learning-rate range. Every
# cell runs without and with clipping (the question's own remedy for ReLU), each row with the
# same points.
ADAM_SEARCH = Search(trials=8, learning_rate=(1e-4, 1e-1))
SGD_SEARCH = Search(trials=8, learning_rate=(1e-3, 0.3))
CLIP_ROWS = ("none", "global_norm")
COPYING = (TaskEntry("copying", 50), TaskEntry("copying", 100))
SEARCHED_SGD_ARM = tuple(dataclasses.replace(v, learning_rates=None, clip_values=None,
                                             search=SGD_SEARCH) for v in SGD_ARM)
# The constrained cells on copying (memory without decay is what they were built for); IndRNN
# keeps its paper's element-wise clip at 10 as its only clipping row.
CONSTRAINED_ON_COPYING = tuple(dataclasses.replace(v, tasks=("copying",)) for v in CONSTRAINED_VARIANTS)
# Equal budget on one pilot seed per point (8 points rather than 4 on 2 seeds: for the same
# compute a search covers its space better than it averages noise), then 10 fresh seeds
# (tests/test_calibration.py: what 10 paired seeds detect).
SEARCH_THEN_CONFIRM = dict(clips=CLIP_ROWS, learning_rates=(), clip_values=(),
                           search=ADAM_SEARCH, pilot_seeds=(0,),
                           confirm_seeds=tuple(range(100, 110)), extend_grid=False,
                           pilot_config=NO_PILOT_SPECTRA)


def chosen_clip(steps: int) -> dict:
    """The cpu and gpu studies: each cell's pilot tries the search's points without and with
    clipping and chooses among both (clipping is tuned like the learning rate, so a cell is
    confirmed once, at its best), its members evaluating only at their last step, the one the
    choice reads (the final losses do not depend on the evals between). The SGD arm keeps a
    row per clipping mode: the exploding claim compares them."""
    return dict(SEARCH_THEN_CONFIRM, choose_clip=True, pilot_config=NO_PILOT_SPECTRA + (
        ("train.eval_every", steps), ("train.log_every", steps)))


# The budget ladder: settings chosen at the first budget (the pilot at 600 steps) carried over
# to 4x and 16x the steps (not re-tuned: a pilot at 9,600 steps would cost 16x), one row per
# main family, Adam without clipping (the 9,600-step rows are most of the ladder's time). The
# spectra at the start, middle and end of each budget.
LADDER_STEPS = (600, 2400, 9600)
LADDER_TASKS = tuple(TaskEntry("adding", 100, (("train.steps", n), ("spectral.every", n // 2)),
                               tuned_on=None if n == LADDER_STEPS[0] else "adding_T100")
                     for n in LADDER_STEPS)
LADDER_VARIANTS = tuple(dataclasses.replace(v, clips=("none",)) for v in BASE_VARIANTS if v.name in (
    "tanh_rnn/orthogonal", "relu_rnn/orthogonal", "irnn/identity", "lstm/orthogonal",
    "gru/orthogonal"))

# Steering the spectrum (control.py): a tanh and two ReLU RNNs, plain and with each intervention.
# The regulariser pulls the top Lyapunov exponent to 0 (weight 1, k = 1, a 50-step window); the
# margin keeps every singular value of W_s within 1 +- 0.1; the projection caps them at 1. The
# design of the first control study (docs/control/first, scripts/control_dead_columns.py); the control
# preset now runs CONTROL_DOSES below.
INTERVENTIONS = (
    ("", ()),
    ("lyapunov", (("control.lyapunov.weight", 1.0), ("control.lyapunov.target", 0.0))),
    ("margin", (("model.recurrent_param", "svd_margin"), ("model.margin", 0.1))),
    ("projection", (("control.max_singular_value", 1.0),)),
)
CONTROLLED = tuple(
    dataclasses.replace(v, name=f"{v.name}/{tag}" if tag else v.name, config=v.config + settings)
    for v in BASE_VARIANTS if v.name in ("tanh_rnn/orthogonal", "relu_rnn/orthogonal", "irnn/identity")
    for tag, settings in INTERVENTIONS)

# The control study's design (issue #28): does the nonlinearity matter once the dynamics are
# matched? The regulariser at a dose-response grid (weight x k x target lambda_1), on the window
# the monitor measures lambda_1 on (the whole sequence after its 25% burn-in, the default
# spectral.lyapunov_discard), so that for each target some tanh and ReLU rows end with matched
# lambda_1 (``match_gate.py`` finds them); plus Engelken's flossing *before* training only (the
# regulariser on for the first FLOSS_STEPS steps, beside the task loss; his pre-training phase
# has no task loss). Weight and target are state (one program per cell, k and arm); k is static.
# Adding at T = 20: of adding T = 20, 30 and copying T = 10, 20, the one where the plain tanh and
# ReLU RNNs both learned at this budget (a pilot on 2 seeds; at T >= 50 the tanh rows sit at the
# baseline, docs/grid/results.md).
LYAPUNOV_WEIGHTS = (0.1, 1.0, 10.0)
LYAPUNOV_KS = (1, 8)
LYAPUNOV_TARGETS = (-0.1, -0.03, 0.0)
FLOSS_STEPS = 100
SEEN_WINDOW = (("control.lyapunov.seq_len", 0), ("control.lyapunov.discard", 0.25))
CONTROL_LRS = log_grid(1e-3, 1e-2, 3)  # the regularised rows: around the plain rows' choice


def regularised(v: Variant, k: int, weight: float, target: float, until: int = 0) -> Variant:
    tag = f"floss{until}_k{k}" if until else f"lyapunov_k{k}"
    return dataclasses.replace(
        v, name=f"{v.name}/{tag}/w={weight:g}/target={target:g}", learning_rates=CONTROL_LRS,
        config=v.config + SEEN_WINDOW + (
            ("control.lyapunov.weight", weight), ("control.lyapunov.k", k),
            ("control.lyapunov.target", target), ("control.lyapunov.until", until)))


# The cpu study's budget, with lambda_1 measured on 32 probes instead of 4 (at T = 20 the 4-probe
# estimate's own noise was ~0.02 per member, as large as the match tolerance) every 150 steps
# (trajectories), and 8 confirmation seeds instead of 5 (a 95% interval 1/3 narrower: the gate
# admits a pair only when it lies within +-0.02).
CONTROL_BASE = base(hidden_size=32, steps=600, batch_size=32, eval_every=50, eval_batches=2,
                    eval_batch_size=128, log_every=50, spectral_every=150) + (
    ("spectral.probe_batch_size", 32),)
CONTROL_CELLS = tuple(v for v in BASE_VARIANTS
                      if v.name in ("tanh_rnn/orthogonal", "relu_rnn/orthogonal", "irnn/identity"))
CONTROL_DOSES = CONTROL_CELLS + tuple(
    regularised(v, k, w, t) for v in CONTROL_CELLS for k in LYAPUNOV_KS
    for w in LYAPUNOV_WEIGHTS for t in LYAPUNOV_TARGETS) + tuple(
    regularised(v, k, 1.0, 0.0, until=FLOSS_STEPS) for v in CONTROL_CELLS for k in LYAPUNOV_KS)

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", description="H = 8, 20 steps, adding at T = 8 (both phases); for tests and "
                                  "notebooks",
        base=base(hidden_size=8, steps=20, batch_size=8, eval_every=10, eval_batches=1,
                  eval_batch_size=32, log_every=5, spectral_every=10),
        tasks=(TaskEntry("adding", 8),), variants=BASE_VARIANTS,
        clips=("none", "global_norm"), learning_rates=(1e-2,), clip_values=(1.0,),
        pilot_seeds=(0, 1), confirm_seeds=(2, 3), test_chunks=2, extend_grid=False,
    ),
    "cpu": Preset(
        name="cpu", description="adding at T = 100 and copying at T = 50, 100 (with expRNN, "
                                "IndRNN, AntisymmetricRNN): every cell the same 8-point search, "
                                "without and with clipping (chosen in the pilot), then 10 fresh "
                                "seeds; the SGD arm and "
                                "parameter counts matched to the LSTM and the GRU at adding T = "
                                "100; H = 32, 600 steps, sized for a 2-core CPU",
        base=CPU_BASE, tasks=(TaskEntry("adding", 100),) + COPYING,
        variants=BASE_VARIANTS + CONSTRAINED_ON_COPYING + SEARCHED_SGD_ARM + MATCHED_BOTH,
        **chosen_clip(600),
    ),
    "cpu-grid": Preset(
        name="cpu-grid", description="the previous cpu design (docs/ before issue #27): adding at "
                                     "T = 50, 100, 200, a learning-rate grid for Adam without "
                                     "clipping, the SGD arm and LSTM-matched sizes at T = 100; "
                                     "H = 32, 600 steps",
        base=CPU_BASE, tasks=ADDING, variants=BASE_VARIANTS + SGD_ARM + MATCHED_PARAMS,
        **SELECT_THEN_CONFIRM,
    ),
    "ladder": Preset(
        name="ladder", description="adding T = 100, a row per main family (Adam, no clipping), "
                                   "the cpu search at 600 steps, its chosen settings confirmed "
                                   "at 600, 2,400 and 9,600 steps on 10 seeds: does the ranking "
                                   "survive the budget?",
        base=CPU_BASE, tasks=LADDER_TASKS, variants=LADDER_VARIANTS,
        **SEARCH_THEN_CONFIRM,
    ),
    "cpu-full": Preset(
        name="cpu-full", description="the cpu preset plus copying (T = 20, 50) and the 8x8 digits "
                                     "with the constrained cells; for a CPU",
        base=CPU_BASE,
        tasks=ADDING + (TaskEntry("copying", 20), TaskEntry("copying", 50))
        + tuple(dataclasses.replace(t, config=t.config + (("train.steps", 400),)) for t in DIGITS),
        variants=tuple(v if v.name in DIGITS_REFERENCES else dataclasses.replace(v, tasks=("adding", "copying"))
                       for v in BASE_VARIANTS) + SGD_ARM + MATCHED_PARAMS
        + tuple(dataclasses.replace(v, tasks=("digits",)) for v in CONSTRAINED_VARIANTS),
        **SELECT_THEN_CONFIRM,
    ),
    "control": Preset(
        name="control", description="nonlinearity or dynamics? tanh vs ReLU (orthogonal, identity), "
                                    "plain and regularised towards a target lambda_1 (weight x k x "
                                    "target, and flossing before training only), adding T = 20 "
                                    "(where both learn); H = 32, 600 steps, for a CPU",
        base=CONTROL_BASE, tasks=(TaskEntry("adding", 20),), variants=CONTROL_DOSES,
        **{**SELECT_THEN_CONFIRM, "confirm_seeds": tuple(range(100, 108))},
    ),
    "gpu": Preset(
        name="gpu", description="the cpu design at H = 128, adding up to T = 400 and copying up "
                                "to T = 200, 10,000 steps, 16 search points on 2 pilot seeds; "
                                "for one large GPU (add --config.parallel.mode=sweep to shard "
                                "the sweeps over several)",
        base=base(hidden_size=128, steps=10_000, batch_size=50, eval_every=500, eval_batches=4,
                  eval_batch_size=250, log_every=100, spectral_every=2500),
        tasks=(TaskEntry("adding", 100), TaskEntry("adding", 200), TaskEntry("adding", 400),
               TaskEntry("copying", 100), TaskEntry("copying", 200)),
        variants=BASE_VARIANTS + CONSTRAINED_ON_COPYING + tuple(dataclasses.replace(
            v, config=tuple((k, 100 if k == "train.log_every" else x) for k, x in v.config),
            search=dataclasses.replace(SGD_SEARCH, trials=16))
            for v in SEARCHED_SGD_ARM) + MATCHED_BOTH,
        **dict(chosen_clip(10_000), search=dataclasses.replace(ADAM_SEARCH, trials=16),
               pilot_seeds=(0, 1)),
    ),
    "paper": Preset(
        name="paper",
        description="uRNN protocol (H=128, RMSProp 1e-3, element-wise clip 1) and the IRNN "
                    "protocol (SGD, norm clip 1); for accelerators, checkpointed and resumable",
        base=base(hidden_size=128, steps=100_000, batch_size=50, optimizer="rmsprop",
                  eval_every=1000, eval_batches=4, eval_batch_size=500, log_every=200,
                  spectral_every=5000, checkpoint_every=2000) + (("optim.rmsprop_decay", 0.9),),
        tasks=(TaskEntry("adding", 100), TaskEntry("adding", 200), TaskEntry("adding", 400),
               TaskEntry("copying", 100), TaskEntry("copying", 200)) + PIXEL_MNIST,
        variants=BASE_VARIANTS + CONSTRAINED_VARIANTS + (variant(
            "irnn", "identity", 1.0, label="irnn/identity/sgd", config=(("optim.name", "sgd"),),
            learning_rates=(1e-4, 1e-3, 1e-2), clips=("none", "global_norm")),),
        clips=("none", "value"), learning_rates=(1e-3,), clip_values=(1.0,),
        pilot_seeds=(0, 1), confirm_seeds=(100, 101, 102), test_chunks=5, extend_grid=False,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise unknown_name("study preset", name, PRESETS)
    return PRESETS[name]
