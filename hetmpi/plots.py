"""PNG figures of a run: traces, per-parameter forest panels, c2 data vs fit per angle.

Drawn with plain matplotlib ``Figure`` objects (Agg canvas, no pyplot state) rather than
``az.plot_*``, whose API differs between ArviZ 0.23 and 1.x. Files are replaced atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hetmpi.atomic import atomic_path
from hetmpi.diagnostics import hdi, summarize


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _chains(draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not draws:
        raise ValueError("draws: at least one parameter is needed")
    return {name: np.asarray(values, dtype=np.float64) for name, values in draws.items()}


def plot_trace(draws: Mapping[str, np.ndarray], path: Path) -> None:
    """One row per parameter: draws per chain against draw index, and per-chain histograms."""
    chains = _chains(draws)
    figure = Figure(figsize=(10, 1.8 * len(chains)), layout="constrained")
    axes = figure.subplots(len(chains), 2, squeeze=False, width_ratios=(3, 1))
    for (name, values), (trace_ax, hist_ax) in zip(chains.items(), axes, strict=True):
        for chain, series in enumerate(values):
            color = f"C{chain % 10}"
            trace_ax.plot(series, color=color, lw=0.6, alpha=0.8, label=f"chain {chain}")
            hist_ax.hist(series, bins=30, density=True, histtype="step", color=color)
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
    ax: Axes, name: str, values: np.ndarray, stats: dict[str, float], prob: float
) -> None:
    rows = [("all", values)] + [(f"chain {c}", chain[None]) for c, chain in enumerate(values)]
    for y, (label, samples) in enumerate(rows):
        low, high = hdi(samples, prob)
        color = "k" if label == "all" else f"C{(y - 1) % 10}"
        ax.plot([low, high], [y, y], color=color, lw=2.5 if label == "all" else 1.5)
        ax.plot(samples.mean(), y, "o", color=color, ms=4)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize="small")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_title(
        f"{name}: mean {stats['mean']:.4g}, sd {stats['sd']:.3g}, "
        f"R-hat {stats['r_hat']:.3f}, ESS bulk {stats['ess_bulk']:.0f}",
        loc="left",
        fontsize="medium",
    )
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))


def plot_forest(draws: Mapping[str, np.ndarray], path: Path, *, hdi_prob: float = 0.94) -> None:
    """One panel per parameter, each on its own x scale: mean and HDI pooled and per chain.

    Parameters span many orders of magnitude, so panels do not share an axis.
    """
    chains = _chains(draws)
    summary = summarize(chains, hdi_prob=hdi_prob)
    n_rows = 1 + next(iter(chains.values())).shape[0]
    figure = Figure(figsize=(8, (0.5 + 0.25 * n_rows) * len(chains) + 0.5), layout="constrained")
    axes = figure.subplots(len(chains), 1, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, chains.items(), strict=True):
        _forest_panel(ax, name, values, summary[name], hdi_prob)
    figure.suptitle(f"posterior mean and {hdi_prob:.0%} HDI")
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
