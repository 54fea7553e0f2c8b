"""The analysis figures read back through their matplotlib artists (never pixels): exact zeros in
the product spectrum, the fixed-point figure's title / legends / colour bar / "N most stable", and
one style (title format, sizes, grid, dpi) across every figure ``analyze`` writes."""

import matplotlib.image
import numpy as np
import pytest

from rnn_spectra import analyze, plots

N, LAGS = 16, np.array([1, 2, 4, 8])


def _product_log_sv(zeros_per_lag):
    """(L, N) descending ln sigma; the last ``zeros_per_lag[l]`` of lag l exactly zero (-inf)."""
    log_sv = -np.linspace(0.1, 3.0, N)[None, :] * LAGS[:, None]
    for lag, z in enumerate(zeros_per_lag):
        if z:
            log_sv[lag, N - z:] = -np.inf
    return log_sv


def _zero_markers(ax):
    return [c for c in ax.collections if c.get_label().startswith("σ_i = 0 exactly")]


def test_exact_zeros_are_drawn_at_the_floor_and_counted():
    log_sv = _product_log_sv([0, 0, 2, 5])  # 5 of 16 at the last lag, as in a ReLU run
    fig = plots.product_spectrum_vs_lag(LAGS, log_sv, title="t")
    ax, cbar_ax = fig.axes
    floor = plots.log_floor(log_sv)
    assert floor < log_sv[np.isfinite(log_sv)].min() and ax.get_ylim()[0] < floor  # inside the axes
    (zeros,) = _zero_markers(ax)
    xy = zeros.get_offsets()
    assert len(xy) == 7 and np.all(xy[:, 1] == floor)
    assert sorted(xy[:, 0]) == [4, 4, 8, 8, 8, 8, 8]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("7 of 64 values, up to 5 of 16 at one lag" in t for t in legend), legend
    # Every index is drawn at every lag (zeros at the floor), so the 1..16 colour bar is true.
    lines = [line for line in ax.get_lines() if len(line.get_ydata()) == len(LAGS)]
    assert len(lines) == N + 1  # each sigma_i, and sigma_1 again in bold
    assert all(np.isfinite(line.get_ydata()).all() for line in lines)
    assert sorted(cbar_ax.get_ylim()) == [1, N]
    assert lines[N - 1].get_ydata()[-1] == floor  # sigma_16 at the last lag: a zero


def test_no_zeros_no_floor_markers():
    fig = plots.product_spectrum_vs_lag(LAGS, _product_log_sv([0, 0, 0, 0]))
    assert _zero_markers(fig.axes[0]) == []
    assert not any("σ_i = 0" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def _fixed_points_result(num_fixed, num_slow, n=4, seed=0):
    rng = np.random.default_rng(seed)
    eig = -np.sort(-rng.uniform(0.2, 0.99, (num_fixed, n)), axis=1).astype(np.complex128)  # |lambda| descending
    return {"fp/points": rng.normal(size=(num_fixed, n)), "fp/q": 10.0 ** -rng.uniform(9, 14, num_fixed),
            "fp/slow_points": rng.normal(size=(num_slow, n)), "fp/slow_q": 10.0 ** -rng.uniform(5, 8, num_slow),
            "fp/eigenvalues": eig}, rng.normal(size=(200, n)) * 2


def _legends_clear_of_their_panels(fig):
    fig.canvas.draw()
    for ax in fig.axes[:2]:
        assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent()), ax.get_title()


def test_fixed_points_figure_with_one_point():
    result, states = _fixed_points_result(1, 0)
    fig = plots.fixed_points(result, states, title=plots.title("gru_adding", 3000, "fixed points"))
    assert fig._suptitle.get_text() == "gru_adding · step 3000 · fixed points"
    assert len(fig.axes) == 2  # no colour bar for a single speed
    ax, ax_eig = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("fixed point (1, q = ") for t in labels), labels  # q said in words
    assert ax_eig.get_title() == "Jacobian eigenvalues at the one fixed point"
    _legends_clear_of_their_panels(fig)


@pytest.mark.parametrize("num_fixed,shown", [(2, "2 most stable"), (5, "3 most stable")])
def test_fixed_points_figure_says_how_many_it_shows(num_fixed, shown):
    result, states = _fixed_points_result(num_fixed, 2)
    fig = plots.fixed_points(result, states, title="x")
    assert len(fig.axes) == 3  # speeds that differ: a colour bar
    _ax, ax_eig = fig.axes[:2]
    assert ax_eig.get_title() == f"Jacobian eigenvalues at the {shown} fixed points"
    drawn = [c for c in ax_eig.collections if c.get_label().startswith("fixed point ")]
    assert len(drawn) == min(num_fixed, 3)
    _legends_clear_of_their_panels(fig)


def test_fixed_points_figure_without_fixed_points():
    result, states = _fixed_points_result(0, 3)
    fig = plots.fixed_points(result, states)
    assert fig.axes[1].get_title() == "Jacobian eigenvalues: no fixed point found"


def test_every_analysis_figure_has_the_one_style(tmp_path, monkeypatch):
    B, L, T = 2, len(LAGS), 8
    log_sv = np.broadcast_to(_product_log_sv([0, 0, 1, 3]), (B, L, N))
    result = {"sv/W_s": np.linspace(1.2, 0.1, N), "lags": LAGS, "product_log_sv": log_sv,
              "jac_log_norm": log_sv[:, :, 0], "lyapunov": -np.linspace(0.01, 2, N)[None].repeat(B, 0),
              "grad_flow_t": np.arange(1, T + 1), "grad_flow_log_norm": -np.linspace(0, 3, T)}
    drawn = {}
    real_save = plots.save

    def keep(fig, path):
        drawn[path] = fig
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    paths = analyze.figures(result, [], 7, analyze.run_label("/runs/adding_T50/", "irnn"), str(tmp_path))
    fp, states = _fixed_points_result(3, 1)
    paths.append(keep(plots.fixed_points(fp, states, title=plots.title("adding_T50 (irnn)", 7, "fixed points")),
                      str(tmp_path / "fixed_points.png")))
    assert [p.split("/")[-1][:-4] for p in paths] == [*analyze.FIGURES, "fixed_points"]
    for path, fig in drawn.items():
        title = fig._suptitle if fig._suptitle is not None else fig.axes[0].title
        assert title.get_text().startswith("adding_T50 (irnn) · step 7 · "), (path, title.get_text())
        size = plots.STYLE["figure.titlesize" if fig._suptitle is not None else "axes.titlesize"]
        assert title.get_fontsize() == size, path
        for ax in fig.axes[:1]:
            assert ax.xaxis.label.get_fontsize() == plots.STYLE["axes.labelsize"], path
            assert all(g.get_visible() for g in ax.xaxis.get_gridlines()), path
            assert ax.get_legend().get_texts()[0].get_fontsize() == plots.STYLE["legend.fontsize"], path
        width, height = fig.get_size_inches()
        pixels = matplotlib.image.imread(path).shape[:2]
        assert pixels == (round(height * plots.DPI), round(width * plots.DPI)), path
