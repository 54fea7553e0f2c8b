"""Loss against size and time: the points are the rows' own numbers, the seconds one model's."""

import math

import matplotlib

matplotlib.use("Agg")

from rnn_spectra.study.stats import Interval  # noqa: E402
from rnn_spectra.study.tradeoffs import cost_figures, cost_lines, training_seconds  # noqa: E402


def _row(variant, loss, params, per_step):
    ci = Interval(math.log(loss), math.log(loss / 2), math.log(loss * 2), 10, 0.0, "t", "log")
    return dict(table="adding_T100", variant=variant, test_loss_ci=ci.as_dict(), params=params,
                steps=600, seconds_per_step_alone=per_step, baseline=0.167, confirmed=True)


def test_the_figure_places_each_row_at_its_params_and_one_models_seconds(tmp_path, monkeypatch):
    rows = [_row("gru/orthogonal/clip=none", 1e-3, 3425, 0.004),
            _row("tanh_rnn/orthogonal/clip=none", 0.16, 1153, None)]
    saved = []
    monkeypatch.setattr("rnn_spectra.plots.save", lambda fig, path, **kw: saved.append(fig) or path)
    paths = cost_figures({"rows": rows}, str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["adding_T100_loss_vs_cost.png"]
    left, right = saved[0].axes[:2]
    xs = sorted(float(c.lines[0].get_xdata()[0]) for c in left.containers)  # errorbar points
    assert xs == [1153, 3425]
    timed = [float(c.lines[0].get_xdata()[0]) for c in right.containers]
    assert timed == [0.004 * 600]  # the untimed row has no point there, not a made-up one
    assert training_seconds(rows[0]) == 0.004 * 600 and training_seconds(rows[1]) is None
    text = "\n".join(cost_lines({"rows": rows}))
    gru, tanh = text.index("gru/orthogonal"), text.index("tanh_rnn/orthogonal")
    assert gru < tanh and "| 3,425 | 4.00 | 2.4 |" in text  # by loss; ms per step; s per budget


def test_the_saved_figure_keeps_its_legend_below_the_axes(tmp_path):
    """cost_figures (and the ladder's) put the legend under the axes, outside the figure's box: a
    plain savefig cuts it off; the tight save keeps it (the PNG grows to hold it)."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    from rnn_spectra.plots import save

    def png(tight):
        fig, ax = plt.subplots(figsize=(4, 3))
        for i in range(12):
            ax.plot([0, 1], [i, i], label=f"row {i}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
        path = save(fig, str(tmp_path / f"t{tight}.png"), dpi=50, tight=tight)
        return matplotlib.image.imread(path).shape[0]

    assert png(tight=False) == 150  # the figure's own box: 3 in at 50 dpi, the legend cut off
    assert png(tight=True) > 150
