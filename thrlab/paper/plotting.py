"""thrlab's one figure style (matplotlib) and the plots of the paper notebooks. No torch import:
every figure re-plots from run folders on any laptop.

Style: sized for print (single column 3.4 in, double 7 in), 8-9 pt text, Okabe-Ito colours with a
fixed colour and label per method (one method looks the same in every figure), light grid, no top
and right spines. Every plot function takes plain numbers (lists, dicts, numpy arrays) and an
Axes, and labels its axes with units; `save_figure` writes PNG (200 dpi) and PDF with no
timestamps, so a regenerated figure with the same numbers is byte-stable.
"""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

SINGLE, DOUBLE = 3.4, 7.0  # figure widths in inches (one / two print columns)

# Okabe-Ito, colour-blind safe; one colour per method across all figures.
METHOD_COLORS = {
    "base": "#999999", "grpo": "#000000", "thr_p0": "#56B4E9", "thr_explore": "#0072B2",
    "thr_exploit": "#D55E00", "nthr": "#CC79A7", "passk": "#009E73", "passk_mixed": "#009E73",
    "kl_cov": "#E69F00", "clip_cov": "#F0E442", "entropy_fork": "#CC79A7",
    "gspo_token": "#8C564B", "gspo_token_thr": "#0072B2", "gspo_token_thr_exploit": "#D55E00",
    "sft_control": "#999999", "thr_random_mask": "#7F7F7F", "grpo_mass_matched": "#444444",
    "thr_lowprob_mask": "#B8B8B8", "thr_entropy_mask": "#5F5F5F",
}
METHOD_LABELS = {
    "base": "before RL", "grpo": "GRPO", "thr_p0": "THR p=0", "thr_explore": "THR p=-0.1",
    "thr_exploit": "THR p=+0.1", "nthr": "NTHR", "passk": "Pass@K", "passk_mixed": "Pass@K-mixed",
    "kl_cov": "KL-Cov", "clip_cov": "Clip-Cov", "entropy_fork": "forking tokens",
    "gspo_token": "GSPO-token", "gspo_token_thr": "GSPO-token + THR p=-0.1",
    "gspo_token_thr_exploit": "GSPO-token + THR p=+0.1",
    "sft_control": "SFT control", "thr_random_mask": "random mask (THR's size)",
    "grpo_mass_matched": "GRPO x THR's mass (= GRPO under Adam)",
    "thr_lowprob_mask": "lowest-p mask (THR's size)",
    "thr_entropy_mask": "top-entropy mask (THR's size)",
}
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5,
    "lines.linewidth": 1.5, "lines.markersize": 4, "legend.frameon": False,
    "figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", "pdf.fonttype": 42,
    "svg.hashsalt": "thrlab", "axes.titleweight": "bold", "axes.titlelocation": "left",
}


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def color(method: str, i: int = 0) -> str:
    return METHOD_COLORS.get(method, plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10])


def figure(ncols: int = 1, nrows: int = 1, width: float = SINGLE, height: float = 2.4):
    """A styled figure of nrows x ncols panels (axes always returned as a flat array)."""
    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False,
                             layout="constrained")
    return fig, axes.ravel()


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write out_dir/name.png and .pdf (no creation dates, so re-runs are comparable).

    The figure stays open so a notebook shows it (Jupyter's inline backend closes it after).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], metadata={"Software": None})
    fig.savefig(paths[1], metadata={"CreationDate": None, "Producer": None, "Creator": None})
    return paths


def method_bars(ax, values: dict[str, list[float]], ylabel: str):
    """Bars of the seed mean per method, error bars = std over seeds, dots = single seeds."""
    if not values or not all(len(v) for v in values.values()):
        raise ValueError(f"nothing to plot for {ylabel!r}: {values} (metric not evaluated?)")
    for x, (m, v) in enumerate(values.items()):
        v = np.asarray(v, dtype=float)
        ax.bar(x, v.mean(), 0.8, color=color(m), alpha=0.55,
               yerr=v.std() if len(v) > 1 else None, capsize=3, ecolor="0.15", edgecolor=color(m))
        ax.scatter(np.full(len(v), x), v, s=6, color="0.2", zorder=3)
    ax.set_xticks(np.arange(len(values)), [label(m) for m in values], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    n = sorted({len(v) for v in values.values()})
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    ax.set_xlabel(f"bars: mean over {seeds} seed(s); whiskers: std; dots: seeds", fontsize=6)
    return ax


def diff_bars(ax, table, metric: str, baseline: str = "GRPO"):
    """The paired difference of each method to the baseline on one metric (rows of
    paired.paired_table): a dot at the mean, whiskers = the 95% interval over seeds and problems
    (none with one seed), a line at 0; the seeds and problems are named under the axis."""
    rows = table[table.metric == metric]
    if rows.empty:
        raise ValueError(f"no paired differences for {metric!r} in the table")
    for x, r in enumerate(rows.itertuples()):
        lo, hi = r.diff - r.ci_low, r.ci_high - r.diff
        ax.errorbar(x, r.diff, yerr=None if np.isnan(r.ci_low) else [[lo], [hi]], fmt="o",
                    color=color(r.method), capsize=3, markersize=4)
    ax.axhline(0, color="0.5", linewidth=0.8, zorder=1)
    ax.set_xticks(np.arange(len(rows)), [label(m) for m in rows.method], rotation=20, ha="right")
    ax.set_ylabel(f"{metric.replace('_acc', '')} minus {baseline}")
    seeds, probs = int(rows.seeds.max()), int(rows.problems.max())
    ci = "95% intervals" if seeds > 1 else "one seed: no interval"
    ax.set_xlabel(f"{seeds} seeds x {probs} problems, paired; {ci}", fontsize=6)
    return ax


def diff_curves(ax, table, ks: list[int], ylabel: str):
    """Paired differences over K (rows of paired.paired_table / gain_table with metrics pass@k):
    one line per method, the 95% interval as a band (none with one seed), a line at 0."""
    for i, (m, d) in enumerate(table.groupby("method", sort=False)):
        d = d.set_index("metric").reindex([f"pass@{k}" for k in ks])
        ax.plot(ks, d["diff"], marker="o", color=color(m, i), label=label(m))
        if d.ci_low.notna().all():
            ax.fill_between(ks, d.ci_low, d.ci_high, color=color(m, i), alpha=0.15, linewidth=0)
    ax.axhline(0, color="0.5", linewidth=0.8, zorder=1)
    ax.set_xscale("log", base=2)
    step = max(1, len(ks) // 9)
    ax.set_xticks(ks[::step], [f"{k:g}" for k in ks[::step]])
    ax.minorticks_off()
    ax.set_ylabel(ylabel)
    seeds, probs = int(table.seeds.max()), int(table.problems.max())
    ci = "bands: 95% intervals" if seeds > 1 else "one seed: no interval"
    ax.set_xlabel(f"K (samples)\n{seeds} seeds x {probs} problems, paired; {ci}", fontsize=6)
    ax.legend(fontsize=6, loc="lower left")
    return ax


AXIS_NAMES = {"greedy_acc": "greedy accuracy", "kl_start": "KL from the start policy"}


def frontier(ax, points, k: int, x: str = "greedy_acc", y: str | None = None):
    """The greedy-vs-Pass@K frontier (rows of frontier.frontier_points): one curve per method
    through its seed-mean (x, y) at each evaluated step, start to end, with 95% t-intervals
    over seeds on both axes (none with one seed). Default x greedy accuracy, y pass@k; x
    "kl_start" (frontier.with_kl) draws either against the KL from the start policy. A method
    that explores better lies above another at the same greedy accuracy; one that merely
    trains less stops short."""
    from scipy import stats as st

    y = y or f"pass@{k}"
    seeds = int(points.groupby("method").seed.nunique().max())
    for i, (m, d) in enumerate(points.groupby("method", sort=False)):
        g = d.groupby("step")[[x, y]]
        mean, n = g.mean(), g.count()[x]
        half = (g.std(ddof=1).mul(st.t.ppf(0.975, (n - 1).clip(lower=1)), axis=0)
                .div(np.sqrt(n), axis=0))
        ax.plot(mean[x], mean[y], marker="o", color=color(m, i), label=label(m))
        if seeds > 1:
            ax.errorbar(mean[x], mean[y], xerr=half[x], yerr=half[y],
                        fmt="none", ecolor=color(m, i), alpha=0.4, linewidth=0.8)
    ci = "bars: 95% intervals over seeds" if seeds > 1 else "one seed: no interval"
    ax.set_xlabel(f"{AXIS_NAMES.get(x, x)}\n{seeds} seeds; each point one evaluation, start to "
                  f"end; {ci}", fontsize=6)
    ax.set_ylabel(AXIS_NAMES.get(y, y.replace("pass@", "Pass@")))
    ax.legend(fontsize=6)
    return ax


def dose_response(ax, table, metric: str):
    """One metric of controls.dose_table against p: THR at each p minus GRPO with its 95%
    interval (over seeds and problems), a line at 0 (GRPO)."""
    d = table[table.metric == metric].sort_values("p")
    ax.errorbar(d.p, d["diff"], yerr=[d["diff"] - d.ci_low, d.ci_high - d["diff"]], marker="o",
                capsize=3, color=color("thr", 0))
    ax.axhline(0, color="0.5", linewidth=0.8)
    seeds = int(d.seeds.min()) if len(d) else 0
    ax.set_xlabel(f"p\n{seeds} seeds; bars: 95% intervals over seeds and problems", fontsize=6)
    ax.set_ylabel(f"{AXIS_NAMES.get(metric, metric.replace('pass@', 'Pass@'))} minus GRPO")
    return ax


STRATEGY_COLORS = {"split_a": "#0072B2", "split_b": "#E69F00", "round_b": "#009E73",
                   "direct": "#CC79A7", "other": "#999999"}


def strategy_bars(ax, table):
    """Stacked bars per method: the mean share of each strategy label after RL (the share_*
    columns of paper.strategy_table), over seeds."""
    shares = [c for c in table.columns if c.startswith("share_")]
    means = table.groupby("method", sort=False)[shares].mean()
    bottom = np.zeros(len(means))
    for c in shares:
        name = c[len("share_"):]
        ax.bar(np.arange(len(means)), means[c], 0.7, bottom=bottom, label=name,
               color=STRATEGY_COLORS.get(name, "0.7"))
        bottom += means[c].to_numpy()
    ax.set_xticks(np.arange(len(means)), [label(m) for m in means.index], rotation=20, ha="right")
    ax.set_ylabel("share of samples")
    ax.legend(fontsize=6)
    return ax


def reference_line(ax, y: float, text: str):
    """A dashed horizontal reference (e.g. the model before RL), labelled at its right end."""
    ax.axhline(y, color="0.4", linestyle="--", linewidth=0.8, zorder=1)
    ax.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                textcoords="offset points", ha="right", va="bottom", fontsize=6, color="0.3")
    return ax


def curves(ax, xs: dict[str, list], ys: dict[str, list], xlabel: str, ylabel: str, *,
           err: dict[str, list] | None = None, logx: bool = False, marker: str | None = "o"):
    """One line per method (optional shaded +-err band), coloured and labelled by method."""
    for i, m in enumerate(ys):
        x, y = np.asarray(xs[m], float), np.asarray(ys[m], float)
        ax.plot(x, y, marker=marker, color=color(m, i), label=label(m))
        if err and m in err:
            e = np.asarray(err[m], float)
            ax.fill_between(x, y - e, y + e, color=color(m, i), alpha=0.15, linewidth=0)
    if logx:
        ax.set_xscale("log", base=2)
        ticks = sorted({float(v) for x in xs.values() for v in x})
        step = max(1, len(ticks) // 9)  # at most ~9 labelled ticks
        ax.set_xticks(ticks[::step], [f"{t:g}" for t in ticks[::step]])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def thr_density(ax, thr_correct, thr_incorrect, bins: int = 60):
    """Histogram (log counts) of THR over tokens of correct and incorrect responses."""
    a, b = np.asarray(thr_correct, float), np.asarray(thr_incorrect, float)
    lim = max(np.abs(np.concatenate([a, b, [1e-12]])).max(), 1e-12)
    edges = np.linspace(-lim, lim, bins + 1)
    ax.hist(a, edges, color="#009E73", alpha=0.6, label=f"correct responses ({len(a)} tokens)")
    ax.hist(b, edges, color="#D55E00", alpha=0.6, label=f"incorrect responses ({len(b)} tokens)")
    ax.set_yscale("log")
    ax.axvline(0, color="0.3", linewidth=0.6)
    ax.set_xlabel("THR of a token (change of correct responses' log-lik., a.u.)")
    ax.set_ylabel("tokens")
    ax.legend(loc="upper left")
    return ax


def clean_token(tok: str) -> str:
    """Display form of a tokenizer piece (byte-level BPE markers to spaces / newlines)."""
    return tok.replace("\u0120", " ").replace("\u010a", "\\n").replace("\u2581", " ")


def _thr_rgb(value: float, scale: float) -> tuple[float, float, float]:
    """Blue for THR < 0 (exploration), red for THR > 0 (exploitation), white at 0."""
    t = float(np.clip(value / scale, -1, 1)) if scale > 0 else 0.0
    target = (0.84, 0.37, 0.0) if t > 0 else (0.0, 0.45, 0.70)
    return tuple(1 - abs(t) * (1 - c) for c in target)


def sign_scales(values) -> tuple[float, float]:
    """(largest THR > 0, largest |THR < 0|) of values: the HTML shades each sign on its own scale,
    because THR's negative tail is often an order of magnitude shorter than its positive one and
    on one scale the exploration tokens would be near white."""
    vals = list(values)
    return (max((v for v in vals if v > 0), default=0.0) or 1e-12,
            max((-v for v in vals if v < 0), default=0.0) or 1e-12)


def token_html(tokens: list[str], thr: list[float],
               scale: tuple[float, float] | None = None) -> str:
    """An HTML snippet of the tokens, each shaded by its THR, red > 0, blue < 0, each sign
    relative to its own largest magnitude (`sign_scales`; hover shows the value)."""
    pos, neg = scale or sign_scales(thr)
    spans = []
    for t, v in zip(tokens, thr):
        r, g, b = (int(255 * c) for c in _thr_rgb(v, pos if v > 0 else neg))
        spans.append(f'<span title="THR={v:.4g}" style="background:rgb({r},{g},{b});'
                     f'font-family:monospace;padding:1px;white-space:pre">'
                     f"{html.escape(clean_token(t))}</span>")
    return "".join(spans)


def group_html(rows: list[tuple[str, list[str], list[float]]]) -> str:
    """Several responses (title, tokens, thr) as HTML lines on shared colour scales (one per
    sign, `sign_scales` over every row)."""
    scale = sign_scales(v for _, _, thr in rows for v in thr)
    return "<br>".join(f'<span style="font-family:monospace">{html.escape(t):<9}</span> '
                       + token_html(toks, thr, scale) for t, toks, thr in rows)


def _token_lines(rows, per_line: int) -> list[tuple[str, list[tuple[str, float, float, float]]]]:
    """Rows (title, tokens, thr) laid out as lines of (shown text, thr, x, width): a token is as
    wide as its text (one unit for a character), and a line holds at most per_line units."""
    lines = []
    for title, toks, thr in rows:
        line, x, first = [], 0.0, len(lines)
        for t, v in zip(toks, thr):
            shown = (clean_token(t) if clean_token(t).strip() else "\u2423")[:12]  # visible space
            w = max(1.0, 0.62 * len(shown))
            if line and x + w > per_line:
                lines.append(("" if len(lines) > first else title, line))
                line, x = [], 0.0
            line.append((shown, v, x, w))
            x += w
        lines.append(("" if len(lines) > first else title, line))
    return lines


def token_strip(ax, rows: list[tuple[str, list[str], list[float]]], scale: float | None = None,
                per_line: int = 48):
    """Rows of tokens (title, tokens, thr) drawn as boxes shaded by THR, for the PNG figure;
    a response longer than per_line units (characters) wraps onto further lines."""
    vals = [abs(v) for _, _, thr in rows for v in thr]
    scale = scale or max(max(vals, default=0.0), 1e-12)
    lines = _token_lines(rows, per_line)
    ax.set_axis_off()
    left = 6
    cols = min(per_line, max(max((x + w for *_, x, w in line), default=0) for _, line in lines))
    for r, (title, line) in enumerate(lines):
        y = len(lines) - r - 1
        ax.text(0, y + 0.5, title, ha="left", va="center", fontsize=7)
        for shown, v, x, w in line:
            ax.add_patch(plt.Rectangle((left + x, y + 0.1), w - 0.05, 0.8,
                                       color=_thr_rgb(v, scale)))
            ax.text(left + x + w / 2 - 0.03, y + 0.5, shown, ha="center", va="center",
                    fontsize=6, family="monospace")
    ax.set_xlim(0, left + max(cols, 16))
    ax.set_ylim(0, len(lines))
    ax.set_title(f"tokens shaded by THR (red > 0 exploit, blue < 0 explore; |max| = {scale:.3g})",
                 fontsize=7, fontweight="normal")
    return ax


def token_figure(rows: list[tuple[str, list[str], list[float]]], per_line: int = 48):
    """A double-column figure of token_strip, its height fitted to the wrapped lines."""
    n = len(_token_lines(rows, per_line))
    fig, ax = figure(width=DOUBLE, height=0.22 * n + 0.4)
    token_strip(ax[0], rows, per_line=per_line)
    return fig, ax


def stacked_bars(ax, table: dict[str, dict[str, float]], ylabel: str):
    """Stacked bars: table[method][phase] = seconds; one colour per phase."""
    phases = list(dict.fromkeys(p for row in table.values() for p in row))
    palette = ["#0072B2", "#009E73", "#E69F00", "#CC79A7", "#D55E00", "#56B4E9", "#999999"]
    bottom = np.zeros(len(table))
    for i, p in enumerate(phases):
        v = np.array([table[m].get(p, 0.0) for m in table])
        ax.bar(np.arange(len(table)), v, 0.7, bottom=bottom, label=p,
               color=palette[i % len(palette)])
        bottom += v
    ax.set_xticks(np.arange(len(table)), [label(m) for m in table], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6, ncols=2)
    return ax


def scatter_fit(ax, x, y, xlabel: str, ylabel: str, *, groups: dict[str, np.ndarray] | None = None,
                diagonal: bool = False, title: str | None = None, symlog_y: bool = False):
    """Scatter of y against x (optionally split into labelled point groups), with y = x line;
    symlog_y for heavy-tailed y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    groups = groups or {"": np.ones(len(x), bool)}
    cols = {"correct": "#009E73", "incorrect": "#D55E00"}
    for name, sel in groups.items():
        ax.scatter(x[sel], y[sel], s=8, alpha=0.7, color=cols.get(name, "#0072B2"),
                   label=name or None)
    if diagonal and len(x):
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="0.5", linewidth=0.8, linestyle="--", label="y = x")
    ax.axhline(0, color="0.7", linewidth=0.5)
    ax.axvline(0, color="0.7", linewidth=0.5)
    if symlog_y and len(y):  # heavy tails: linear within the middle half of |y|, log outside
        ax.set_yscale("symlog", linthresh=max(float(np.quantile(np.abs(y), 0.5)), 1e-12),
                      linscale=2.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    return ax
