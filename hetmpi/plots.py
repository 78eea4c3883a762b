"""PNG figures of a run: traces, forest panels (consensus beside each shard), the most
correlated pairs, prior against posterior, c2 data vs fit per angle, and 1-D cuts of c2.

Drawn with plain matplotlib ``Figure`` objects (Agg canvas, no pyplot state) rather than
``az.plot_*``, whose API differs between ArviZ 0.23 and 1.x. Where ``truth`` (name -> value)
is given, the true values are drawn in red. Files are replaced atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hetmpi.atomic import atomic_path
from hetmpi.diagnostics import hdi, summarize

TRUTH_COLOR = "red"


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _chains(draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not draws:
        raise ValueError("draws: at least one parameter is needed")
    return {name: np.asarray(values, dtype=np.float64) for name, values in draws.items()}


def plot_trace(
    draws: Mapping[str, np.ndarray], path: Path, truth: Mapping[str, float] | None = None
) -> None:
    """One row per parameter: draws per chain against draw index, and per-chain histograms."""
    chains = _chains(draws)
    truth = truth or {}
    figure = Figure(figsize=(10, 1.8 * len(chains)), layout="constrained")
    axes = figure.subplots(len(chains), 2, squeeze=False, width_ratios=(3, 1))
    for (name, values), (trace_ax, hist_ax) in zip(chains.items(), axes, strict=True):
        for chain, series in enumerate(values):
            color = f"C{chain % 10}"
            trace_ax.plot(series, color=color, lw=0.6, alpha=0.8, label=f"chain {chain}")
            hist_ax.hist(series, bins=30, density=True, histtype="step", color=color)
        if name in truth:
            trace_ax.axhline(truth[name], color=TRUTH_COLOR, lw=1, ls="--")
            hist_ax.axvline(truth[name], color=TRUTH_COLOR, lw=1, ls="--")
        trace_ax.set_ylabel(name)
        hist_ax.set_yticks([])
    n_chains = next(iter(chains.values())).shape[0]
    axes[0, 0].legend(loc="upper right", fontsize="small", ncols=min(n_chains, 4))
    axes[0, 0].set_title("trace")
    axes[0, 1].set_title("marginal")
    axes[-1, 0].set_xlabel("draw")
    axes[-1, 1].set_xlabel("value")
    _save(figure, path)


def _forest_panel(
    ax: Axes,
    name: str,
    rows: Sequence[tuple[str, np.ndarray]],
    stats: dict[str, float],
    prob: float,
    truth: float | None,
) -> None:
    for y, (label, samples) in enumerate(rows):
        low, high = hdi(samples, prob)
        color = "k" if y == 0 else ("0.6" if "excluded" in label else f"C{(y - 1) % 10}")
        ax.plot([low, high], [y, y], color=color, lw=2.5 if y == 0 else 1.5)
        ax.plot(samples.mean(), y, "o", color=color, ms=4)
    if truth is not None:
        ax.axvline(truth, color=TRUTH_COLOR, lw=1, ls="--")
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize="small")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_title(
        f"{name}: mean {stats['mean']:.4g}, sd {stats['sd']:.3g}, "
        f"R-hat {stats['r_hat']:.3f}, ESS bulk {stats['ess_bulk']:.0f}",
        loc="left",
        fontsize="medium",
    )
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))


def plot_forest(
    draws: Mapping[str, np.ndarray],
    path: Path,
    *,
    hdi_prob: float = 0.94,
    parts: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    truth: Mapping[str, float] | None = None,
) -> None:
    """One panel per parameter, each on its own x scale: mean and HDI of the posterior
    (top row), then of each of ``parts`` (label -> draws; e.g. "shard 3", a label holding
    "excluded" drawn grey), or of each chain where no parts are given.

    Parameters span many orders of magnitude, so panels do not share an axis.
    """
    chains = _chains(draws)
    summary = summarize(chains, hdi_prob=hdi_prob)
    truth = truth or {}
    if parts is None:
        first = next(iter(chains.values()))
        parts = {
            f"chain {c}": {n: v[c][None] for n, v in chains.items()} for c in range(len(first))
        }
    n_rows = 1 + len(parts)
    figure = Figure(figsize=(8, (0.5 + 0.25 * n_rows) * len(chains) + 0.5), layout="constrained")
    axes = figure.subplots(len(chains), 1, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, chains.items(), strict=True):
        rows = [("posterior", values)] + [
            (label, np.asarray(p[name])) for label, p in parts.items()
        ]
        _forest_panel(ax, name, rows, summary[name], hdi_prob, truth.get(name))
    figure.suptitle(f"posterior mean and {hdi_prob:.0%} HDI")
    _save(figure, path)


def most_correlated(draws: Mapping[str, np.ndarray], count: int) -> list[str]:
    """Up to ``count`` parameter names taken pair by pair in order of the posterior's
    strongest absolute correlations (parameters that do not vary beyond rounding are left
    out)."""
    names = [n for n, v in draws.items() if np.ptp(v) > 1e-9 * np.max(np.abs(v))]
    if len(names) < 2:
        return names
    corr = np.corrcoef(np.stack([np.ravel(draws[n]) for n in names]))
    pairs = sorted(
        ((abs(corr[i, j]), i, j) for i in range(len(names)) for j in range(i)), reverse=True
    )
    chosen: list[str] = []
    for _, i, j in pairs:
        for k in (i, j):
            if names[k] not in chosen and len(chosen) < count:
                chosen.append(names[k])
        if len(chosen) >= count:
            break
    return chosen


def plot_pair(
    draws: Mapping[str, np.ndarray],
    path: Path,
    *,
    count: int = 5,
    truth: Mapping[str, float] | None = None,
) -> None:
    """Scatter matrix of the ``count`` parameters in the posterior's strongest correlations:
    histograms on the diagonal, each panel below it titled with its correlation."""
    chosen = most_correlated(_chains(draws), count)
    if not chosen:
        raise ValueError("pair plot: no parameter varies")
    truth = truth or {}
    flat = {n: np.ravel(draws[n]) for n in chosen}
    n = len(chosen)
    figure = Figure(figsize=(2.4 * n + 0.5, 2.4 * n + 0.5), layout="constrained")
    axes = figure.subplots(n, n, squeeze=False)
    for row, y_name in enumerate(chosen):
        for col, x_name in enumerate(chosen):
            ax = axes[row, col]
            if col > row:
                ax.set_axis_off()
                continue
            if col == row:
                ax.hist(flat[x_name], bins=30, histtype="step", color="k")
                ax.set_yticks([])
                if x_name in truth:
                    ax.axvline(truth[x_name], color=TRUTH_COLOR, lw=1, ls="--")
            else:
                ax.plot(flat[x_name], flat[y_name], ".", ms=1.5, alpha=0.4, color="C0")
                r = np.corrcoef(flat[x_name], flat[y_name])[0, 1]
                ax.set_title(f"r = {r:+.2f}", fontsize="small")
                if x_name in truth and y_name in truth:
                    ax.plot(truth[x_name], truth[y_name], "x", color=TRUTH_COLOR, ms=8, mew=2)
            ax.ticklabel_format(style="sci", scilimits=(-3, 4))
            ax.tick_params(labelsize="x-small")
            if row == n - 1:
                ax.set_xlabel(x_name)
            if col == 0 and row > 0:
                ax.set_ylabel(y_name)
    figure.suptitle("the parameters most correlated in the posterior")
    _save(figure, path)


def plot_prior_posterior(
    draws: Mapping[str, np.ndarray],
    priors: Mapping[str, tuple[Callable[[np.ndarray], np.ndarray], tuple[float, float], bool]],
    ratios: Mapping[str, float],
    path: Path,
    *,
    count: int = 6,
    truth: Mapping[str, float] | None = None,
) -> None:
    """Posterior histogram against the prior density for the ``count`` parameters whose
    Laplace sd is the largest share of their prior sd (``ratios``: the data inform them
    least). ``priors`` maps a name to (density in parameter units, its central range)."""
    truth = truth or {}
    names = sorted((n for n in ratios if n in priors and n in draws), key=ratios.get, reverse=True)
    names = names[:count]
    if not names:
        raise ValueError("prior plot: no parameter has both a prior and a ratio")
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(4 * columns, 2.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        values = np.ravel(draws[name])
        density, (low, high), log_axis = priors[name]
        low, high = min(low, values.min()), max(high, values.max())
        spaced = np.geomspace if log_axis else np.linspace
        ax.hist(values, bins=spaced(values.min(), values.max(), 41), density=True, color="C0",
                alpha=0.6, label="posterior")  # fmt: skip
        grid = spaced(low, high, 400)
        ax.plot(grid, density(grid), color="k", lw=1.5, label="prior")
        if name in truth:
            ax.axvline(truth[name], color=TRUTH_COLOR, lw=1, ls="--", label="truth")
        ax.set_title(f"{name}: sd / prior sd {ratios[name]:.2f}", fontsize="medium")
        ax.set_yticks([])
        if log_axis:
            ax.set_xscale("log")
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize="small")
    figure.suptitle("prior and posterior where the data inform least")
    _save(figure, path)


def plot_c2_cuts(
    lag: np.ndarray,
    data: np.ndarray,
    band: np.ndarray,
    t1: np.ndarray,
    phi: np.ndarray,
    path: Path,
    flagged: Sequence[bool] = (),
) -> None:
    """c2 against t2 - t1 at a few t1 per angle: the data as dots, the posterior's median
    and 5-95% band of the model.

    ``lag`` (n_cut, M) in seconds (NaN past the end), ``data`` (n_phi, n_cut, M),
    ``band`` (3, n_phi, n_cut, M) as the 5%, 50% and 95% quantiles, ``t1`` (n_cut,) s,
    ``phi`` (n_phi,) degrees.
    """
    n_phi, n_cut = data.shape[:2]
    figure = Figure(figsize=(4 * n_cut, 2.8 * n_phi), layout="constrained")
    axes = figure.subplots(n_phi, n_cut, squeeze=False)
    for a in range(n_phi):
        marked = a < len(flagged) and flagged[a]
        for c in range(n_cut):
            ax = axes[a, c]
            ax.fill_between(lag[c], band[0, a, c], band[2, a, c], color="C1", alpha=0.35,
                            lw=0, label="model 5-95%")  # fmt: skip
            ax.plot(lag[c], band[1, a, c], color="C1", lw=1.2, label="model median")
            ax.plot(lag[c], data[a, c], ".", color="k", ms=2, label="data")
            ax.set_title(
                f"phi = {phi[a]:g} deg, t1 = {t1[c]:.3g} s" + (" (flagged)" if marked else ""),
                color="red" if marked else "black",
                fontsize="medium",
            )
            ax.set_xlabel("t2 - t1 [s]")
            if c == 0:
                ax.set_ylabel("c2")
    axes[0, 0].legend(fontsize="small")
    _save(figure, path)


def plot_c2_fit(
    t: np.ndarray,
    data: np.ndarray,
    fit: np.ndarray,
    phi: np.ndarray,
    path: Path,
    flagged: Sequence[bool] = (),
) -> None:
    """Per angle a row of data, fit and residual (data - fit) images over (t1, t2).

    ``t`` (N,) in seconds, ``phi`` (n_phi,) in degrees, ``data`` and ``fit`` (n_phi, N, N)
    indexed [angle, t1, t2]; t1 runs up the image, t2 across. Colour scales span the 1-99
    percentiles, so a bright diagonal does not wash out the rest. Angles marked in
    ``flagged`` (the fit check's) get red titles saying so.
    """
    t, data, fit, phi = (np.asarray(a, dtype=np.float64) for a in (t, data, fit, phi))
    expected = (phi.size, t.size, t.size)
    if phi.ndim != 1 or t.ndim != 1 or data.shape != expected or fit.shape != expected:
        raise ValueError(
            f"c2 plot: expected t (N,), phi (n_phi,), data and fit (n_phi, N, N) = {expected}; "
            f"got t {t.shape}, phi {phi.shape}, data {data.shape}, fit {fit.shape}"
        )
    extent = (t[0], t[-1], t[0], t[-1])
    figure = Figure(figsize=(12, 3.4 * phi.size), layout="constrained")
    axes = figure.subplots(phi.size, 3, squeeze=False)
    for row, angle in enumerate(phi):
        low, high = np.nanpercentile(data[row], [1, 99])
        residual = data[row] - fit[row]
        span = float(np.nanpercentile(np.abs(residual), 99)) or 1.0
        panels = (
            ("data", data[row], "viridis", low, high),
            ("fit", fit[row], "viridis", low, high),
            ("residual", residual, "RdBu_r", -span, span),
        )
        marked = row < len(flagged) and flagged[row]
        for ax, (label, image, cmap, vmin, vmax) in zip(axes[row], panels, strict=True):
            shown = ax.imshow(image, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax)
            figure.colorbar(shown, ax=ax, shrink=0.85)
            title = f"phi = {angle:g} deg: {label}" + (" (fit check: flagged)" if marked else "")
            ax.set_title(title, color="red" if marked else "black")
            ax.set_xlabel("t2 [s]")
            ax.set_ylabel("t1 [s]")
    _save(figure, path)
