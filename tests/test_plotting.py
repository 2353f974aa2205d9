"""thrlab.paper.plotting: no torch, byte-stable files, and plots that show the numbers they are given."""
import sys

import matplotlib
import numpy as np
import pytest

from thrlab.paper import plotting
from tests.fixtures import limits

matplotlib.use("Agg")


@pytest.mark.parametrize("module", ["thrlab.paper.plotting", "thrlab.paper.grid", "thrlab.paper.reproduce"])
def test_figure_modules_do_not_import_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    out = limits.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _bars_figure():
    fig, ax = plotting.figure(ncols=2, width=plotting.DOUBLE)
    plotting.method_bars(ax[0], {"grpo": [0.4, 0.5], "thr_explore": [0.3, 0.3, 0.6]}, "acc")
    plotting.curves(ax[1], {"grpo": [1, 2, 4]}, {"grpo": [0.1, 0.2, 0.3]}, "k", "pass@k",
                    err={"grpo": [0.01, 0.02, 0.0]}, logx=True)
    return fig, ax


def test_save_figure_writes_png_and_pdf_byte_stable(tmp_path):
    paths = plotting.save_figure(_bars_figure()[0], tmp_path / "a", "fig")
    again = plotting.save_figure(_bars_figure()[0], tmp_path / "b", "fig")
    assert [p.name for p in paths] == ["fig.png", "fig.pdf"]
    for p, q in zip(paths, again):
        assert p.read_bytes() == q.read_bytes(), f"{p.name} differs between identical saves"
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_method_bars_show_seed_mean_std_and_points():
    _, ax = _bars_figure()
    bars = [p for p in ax[0].patches]
    assert [round(b.get_height(), 6) for b in bars] == [0.45, 0.4]
    # error bars: the std over seeds (population), one per method
    segs = [c for c in ax[0].collections if hasattr(c, "get_segments") and c.get_segments()]
    lengths = sorted(round(abs(s[1][1] - s[0][1]) / 2, 6) for c in segs for s in c.get_segments())
    assert lengths == sorted([round(np.std([0.4, 0.5]), 6), round(np.std([0.3, 0.3, 0.6]), 6)])
    dots = [c for c in ax[0].collections if c.get_offsets().shape[0] in (2, 3)
            and not hasattr(c, "get_segments")]
    assert sorted(len(d.get_offsets()) for d in dots) == [2, 3]
    assert [t.get_text() for t in ax[0].get_xticklabels()] == ["GRPO", "THR p=-0.1"]


def test_curves_labels_and_log_axis():
    _, ax = _bars_figure()
    assert ax[1].get_xscale() == "log" and ax[1].get_ylabel() == "pass@k"
    assert [line.get_label() for line in ax[1].get_lines()] == ["GRPO"]


def test_thr_density_counts_every_token():
    fig, ax = plotting.figure()
    a, b = np.array([0.0, 0.1, -0.2]), np.array([1.0, -1.0, 0.0, 0.0])
    plotting.thr_density(ax[0], a, b)
    heights = [p.get_height() for p in ax[0].patches]
    assert sum(heights) == len(a) + len(b)
    assert ax[0].get_yscale() == "log"


def test_token_html_escapes_and_colours_by_sign():
    out = plotting.token_html(["<", "\u0120a", "b"], [1.0, -1.0, 0.0])
    assert "&lt;" in out and ">&lt;<" in out and "> a<" in out  # escaped; BPE space marker shown
    spans = out.split("<span")[1:]
    r, g, b = (int(x) for x in spans[0].split("rgb(")[1].split(")")[0].split(","))
    assert r > b  # THR > 0: red
    r, g, b = (int(x) for x in spans[1].split("rgb(")[1].split(")")[0].split(","))
    assert b > r  # THR < 0: blue
    assert "rgb(255,255,255)" in spans[2]  # THR = 0: white
    assert 'title="THR=-1"' in spans[1]
    # each sign on its own scale: a short negative tail is as visible as the positive one
    short = plotting.token_html(["a", "b"], [1.0, -0.01]).split("<span")[1:]
    r, g, b = (int(x) for x in short[1].split("rgb(")[1].split(")")[0].split(","))
    assert (r, g, b) == (0, 114, 178)  # the full blue of THR < 0


def test_token_strip_and_group_html():
    rows = [("correct", [" ", "4", "<eos>"], [0.5, 0.1, 0.0]), ("wrong", ["7"], [-0.2])]
    fig, ax = plotting.figure(width=plotting.DOUBLE)
    plotting.token_strip(ax[0], rows)
    assert len(ax[0].patches) == 4
    html = plotting.group_html(rows)
    assert html.count("<br>") == 1 and "correct" in html


def test_stacked_bars_total_is_row_sum():
    table = {"grpo": {"generate": 1.0, "update": 2.0}, "thr_p0": {"generate": 1.0, "thr": 0.5,
                                                                 "update": 2.0}}
    fig, ax = plotting.figure()
    plotting.stacked_bars(ax[0], table, "s")
    tops = {}
    for p in ax[0].patches:
        x = round(p.get_x() + p.get_width() / 2)
        tops[x] = max(tops.get(x, 0), p.get_y() + p.get_height())
    assert tops == {0: 3.0, 1: 3.5}


def test_scatter_fit_groups_and_diagonal():
    fig, ax = plotting.figure()
    x = np.array([1.0, -1.0, 2.0])
    plotting.scatter_fit(ax[0], x, 2 * x, "pred", "meas",
                         groups={"correct": np.array([True, False, True]),
                                 "incorrect": np.array([False, True, False])}, diagonal=True)
    assert sum(len(c.get_offsets()) for c in ax[0].collections) == 3
    assert any(line.get_label() == "y = x" for line in ax[0].get_lines())


def test_frontier_draws_each_methods_seed_mean_trajectory_with_intervals():
    import pandas as pd
    from scipy import stats as st

    rows = [dict(method=m, seed=s, step=t, greedy_acc=g + 0.01 * s, **{"pass@4": p - 0.02 * s})
            for m, traj in {"grpo": [(0, 0.3, 0.8), (5, 0.5, 0.7)],
                            "thr_explore": [(0, 0.3, 0.8), (5, 0.45, 0.78)]}.items()
            for s in (0, 1, 2) for t, g, p in traj]
    pts = pd.DataFrame(rows)
    fig, ax = plotting.figure()
    plotting.frontier(ax[0], pts, 4)
    lines = [line for line in ax[0].get_lines() if line.get_label() in ("GRPO", "THR p=-0.1")]
    assert [line.get_label() for line in lines] == ["GRPO", "THR p=-0.1"]
    x, y = lines[0].get_data()
    assert np.allclose(x, [0.31, 0.51]) and np.allclose(y, [0.78, 0.68])  # seed means
    bars = [c for c in ax[0].containers]
    assert len(bars) == 2  # one errorbar set per method
    half = st.t.ppf(0.975, 2) * np.std([0.0, 0.01, 0.02], ddof=1) / np.sqrt(3)
    seg = bars[0].lines[2][0].get_segments()[0]  # the first point's horizontal bar
    assert np.allclose([seg[0][0], seg[1][0]], [0.31 - half, 0.31 + half])
    assert ax[0].get_ylabel() == "Pass@4" and "3 seeds" in ax[0].get_xlabel()


def test_frontier_against_kl_and_the_dose_response_plot_their_columns():
    import pandas as pd

    pts = pd.DataFrame([dict(method="grpo", seed=s, step=t, greedy_acc=0.3, kl_start=kl + s,
                             **{"pass@4": p}) for s in (0, 1)
                        for t, kl, p in ((0, 0.0, 0.8), (5, 0.2, 0.6))])
    fig, ax = plotting.figure(ncols=2)
    plotting.frontier(ax[0], pts, 4, x="kl_start")
    x, y = ax[0].get_lines()[0].get_data()
    assert np.allclose(x, [0.5, 0.7]) and np.allclose(y, [0.8, 0.6])
    assert ax[0].get_xlabel().startswith("KL from the start policy")
    dose = pd.DataFrame({"p": [0.5, -0.5, 0.0], "metric": "greedy_acc", "diff": [0.02, -0.01, 0.0],
                         "ci_low": [0.0, -0.03, -0.01], "ci_high": [0.04, 0.01, 0.01],
                         "seeds": 3})
    plotting.dose_response(ax[1], dose, "greedy_acc")
    x, y = ax[1].get_lines()[0].get_data()
    assert np.allclose(x, [-0.5, 0.0, 0.5]) and np.allclose(y, [-0.01, 0.0, 0.02])  # sorted by p
    seg = ax[1].containers[0].lines[2][0].get_segments()[2]  # p = 0.5's bar
    assert np.allclose([seg[0][1], seg[1][1]], [0.0, 0.04])
    assert ax[1].get_ylabel() == "greedy accuracy minus GRPO" and "3 seeds" in ax[1].get_xlabel()
