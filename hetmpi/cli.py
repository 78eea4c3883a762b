"""The ``hetmpi`` command line. Heavy imports (JAX) happen inside commands, after the
process environment for JAX has been set."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hetmpi import __version__
from hetmpi.errors import InputError, RunError
from hetmpi.paths import CheckedPath, check_output_file
from hetmpi.runtime import launcher_rank
from hetmpi.text import counted

if TYPE_CHECKING:
    from hetmpi.warmstart import WarmStart

log = logging.getLogger("hetmpi")


class _Group(click.Group):
    """Turns InputError into exit status 2 and RunError into 1: one message, no traceback.

    Under an MPI launch every rank exits with that status, and only rank 0 prints.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (InputError, RunError) as exc:
            if launcher_rank(os.environ) == 0:
                click.echo(f"error: {exc}", err=True)
            ctx.exit(2 if isinstance(exc, InputError) else 1)


def _setup_logging() -> None:
    from hetmpi.runlog import quiet_warnings

    quiet_warnings()
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("hetmpi: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hetmpi")
def main() -> None:
    """Consensus Monte Carlo for XPCS heterodyne two-time correlations.

    Typical use: `hetmpi validate cfg.yaml`, then `hetmpi run cfg.yaml` (or
    `mpiexec -n 64 hetmpi run cfg.yaml` on a cluster).
    """
    _setup_logging()


def _load(config_path: str, output: str | None) -> Any:
    from hetmpi.configfile import load_config

    cfg = load_config(config_path)
    if output is not None:
        out = Path(output).expanduser().absolute()
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, directory=out))
    return cfg


@main.command()
@click.argument("config", type=CheckedPath(dir_okay=False))
@click.option(
    "--output",
    "-o",
    type=CheckedPath(file_okay=False),
    help="Output folder (overrides output.directory).",
)
@click.option(
    "--executor",
    type=click.Choice(["auto", "cpu", "multiprocessing", "mpi"]),
    default=None,
    help="Where shards run (overrides executor.name).",
)
@click.option("--overwrite", is_flag=True, help="Replace the results in an existing output folder.")
@click.option("--resume", is_flag=True, help="Reuse finished shard files in the output folder.")
def run(
    config: str, output: str | None, executor: str | None, overwrite: bool, resume: bool
) -> None:
    """Sample the consensus posterior described by CONFIG and write results.

    Under mpiexec/mpirun/srun with more than one rank the shards are spread over the ranks.
    """
    from hetmpi import runlog
    from hetmpi.launch import launch

    cfg = _load(config, output)
    name = executor or cfg.executor.name
    with runlog.journal(log):
        summary = launch(cfg, executor_name=name, overwrite=overwrite, resume=resume)
    if summary is not None:
        from hetmpi import report

        click.echo(report.format_table(summary))
        click.echo(f"results in {cfg.output.directory}")


def _configure_whole_process(cfg: Any) -> None:
    from hetmpi.launch import configure_whole_process

    configure_whole_process(cfg.executor)


@main.command()
@click.argument("config", type=CheckedPath(dir_okay=False))
@click.option("--output", "-o", type=CheckedPath(file_okay=False), help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace the results in an existing folder.")
def plan(config: str, output: str | None, overwrite: bool) -> None:
    """Prepare CONFIG for shard jobs: write OUT/config.yaml and OUT/plan.h5.

    Then `hetmpi run-shard OUT --index K` for every shard, and `hetmpi combine OUT`.
    """
    cfg = _load(config, output)
    _configure_whole_process(cfg)
    from hetmpi import arrayjob

    num_shards = arrayjob.plan_run(cfg, cfg.output.directory, overwrite=overwrite)
    click.echo(f"planned {counted(num_shards, 'shard')} in {cfg.output.directory}")


@main.command("run-shard")
@click.argument("out", type=CheckedPath(file_okay=False, exists=True))
@click.option("--index", required=True, type=int, help="Shard index (0-based).")
def run_shard(out: str, index: int) -> None:
    """Sample one shard of the run planned in OUT and write OUT/shards/shard_NNNN.h5."""
    from hetmpi.outdir import load_planned_config

    out_dir = Path(out).absolute()
    _configure_whole_process(load_planned_config(out_dir))
    from hetmpi import arrayjob

    result = arrayjob.run_shard(out_dir, index)
    click.echo(
        f"shard {index}: {result.divergences} divergences, "
        f"{result.mean_steps:.1f} leapfrog steps/draw, "
        f"{result.warmup_seconds + result.sample_seconds:.1f} s"
    )


@main.command()
@click.argument("out", type=CheckedPath(file_okay=False, exists=True))
def combine(out: str) -> None:
    """Combine the shard results of the run planned in OUT and write every output."""
    from hetmpi import arrayjob, report

    out_dir = Path(out).absolute()
    summary = arrayjob.combine(out_dir)
    click.echo(report.format_table(summary))
    click.echo(f"results in {out_dir}")


@main.command("report")
@click.argument("out", type=CheckedPath(file_okay=False, exists=True))
def report_command(out: str) -> None:
    """Print the results table of the finished run in OUT and draw its plots again
    (OUT/plots/); summary.json and posterior.nc stay as the run wrote them."""
    out_dir = Path(out).absolute()
    from hetmpi import arrayjob, report

    summary = arrayjob.report_run(out_dir)
    click.echo(report.format_table(summary))
    click.echo(f"plots in {out_dir / 'plots'}")


@main.command()
@click.argument("config", type=CheckedPath(dir_okay=False))
@click.option(
    "--fit",
    is_flag=True,
    help="Also search the posterior's basins and show how much the data inform each parameter.",
)
def validate(config: str, fit: bool) -> None:
    """Check CONFIG and its data file without sampling."""
    cfg = _load(config, None)
    if fit:
        _configure_whole_process(cfg)
    from hetmpi import context
    from hetmpi.basins import labelling_conflict
    from hetmpi.sharding import pool_points

    dataset = context.load_data(cfg)
    points = pool_points(dataset)
    dim = context.sampled_dimension(cfg, len(dataset.phi))
    shards = context.shard_count(cfg, points.size, len(dataset.phi))
    context.check_draw_memory(cfg, points.size, len(dataset.phi), shards)
    how = "exact: the full data as one" if cfg.sampler.method == "exact" else cfg.sharding.strategy
    click.echo(
        f"config OK: {len(dataset.phi)} angles x {len(dataset.t)} frames, {points.size} points, "
        f"{dim} sampled parameters, {counted(shards, 'shard')} ({how})"
    )
    if fit:
        warm = context.prepare(cfg, dataset, runnable=False).task.warm
        click.echo(_identification_table(warm))
        click.echo()
        click.echo(_basin_table(warm))
        conflict = labelling_conflict(warm.basins, warm.chain_basins, cfg.model.labelling)
        if conflict:
            raise InputError(conflict)


def _basin_table(warm: WarmStart) -> str:
    """The mode search's basins: nats relative to basin 1 (the most mass), Laplace share,
    starts, and the physics values of each (one column per basin)."""
    basins = warm.basins
    search = warm.search
    lines = [
        f"mode search: {len(basins)} basin(s) from {search['starts']} starts on "
        f"{search['cheap_points']} points, {search['seconds']:.1f} s "
        f"(competing: at least {search['mass_threshold']:.0%} of the mass)",
        f"{'basin':<18}" + "".join(f"{k + 1:>13}" for k in range(len(basins))),
        f"{'nats':<18}" + "".join(f"{b['delta_nlp']:>13.1f}" for b in basins),
        f"{'mass share':<18}" + "".join(f"{b['mass_share']:>13.3g}" for b in basins),
        f"{'starts':<18}" + "".join(f"{b['starts']:>13}" for b in basins),
        f"{'competing':<18}" + "".join(f"{'yes' if b['competing'] else 'no':>13}" for b in basins),
        f"{'reference':<18}"
        + "".join(f"{'slower' if b['reference_slower'] else 'faster':>13}" for b in basins),
    ]
    for name in warm.problem.model.names[: len(warm.problem.model.free_physics)]:
        lines.append(f"{name:<18}" + "".join(f"{b['values'][name]:>13.6g}" for b in basins))
    return "\n".join(lines)


def _identification_table(warm: WarmStart) -> str:
    """The warm start's mode, Laplace sd and sd over prior sd per parameter."""
    from hetmpi.warmstart import PRIOR_DOMINATED

    ratios = warm.prior_sd_ratio
    lines = [
        f"warm start: noise sd {warm.noise_sigma:.4g}, reduced chi2 {warm.reduced_chi2:.3f}",
        f"{'parameter':<18}{'mode':>13}{'Laplace sd':>13}{'sd/prior sd':>13}",
    ]
    model = warm.problem.model
    for name, value, sd in zip(model.names, warm.values, warm.parameter_sd, strict=True):
        ratio = ratios.get(name)
        shown = "" if ratio is None else f"{ratio:.3f}"
        weak = "  weakly identified" if ratio is not None and ratio >= PRIOR_DOMINATED else ""
        lines.append(f"{name:<18}{value:>13.6g}{sd:>13.4g}{shown:>13}{weak}")
    return "\n".join(lines)


@main.command()
@click.argument("truth", type=CheckedPath(dir_okay=False))
@click.option(
    "--output",
    "-o",
    required=True,
    type=CheckedPath(),
    metavar="FILE",
    help="HDF5 file to write.",
)
@click.option("--n-frames", type=int, help="Frames N (default: truth file's n_frames).")
@click.option("--dt", type=float, help="Frame step in seconds.")
@click.option("--t-start", type=float, help="Time of the first frame in seconds (default 0).")
@click.option("--q", type=float, help="Wavevector in 1/Angstrom.")
@click.option("--phi", type=float, multiple=True, help="Angle in degrees (repeat for each).")
@click.option("--contrast", type=float, multiple=True, help="Contrast per angle (or one for all).")
@click.option("--offset", type=float, multiple=True, help="Offset per angle (or one for all).")
@click.option("--sigma", type=float, help="Gaussian noise sd (0 writes the exact model).")
@click.option("--seed", type=int, help="Noise seed.")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
def simulate(truth: str, output: str, overwrite: bool, **options: Any) -> None:
    """Write a synthetic dataset in hetmpi's HDF5 schema from a TRUTH file (YAML/JSON)."""
    from hetmpi.formats.hetmpi_schema import write_dataset
    from hetmpi.simulate import simulate_dataset
    from hetmpi.truthfile import load_truth

    check_output_file(output, "--output", overwrite=overwrite)
    spec = load_truth(truth)
    settings = {key: spec.get(key) for key in ("n_frames", "dt", "q", "phi", "contrast",
                                                "offset", "sigma", "seed", "t_start")}  # fmt: skip
    for key, value in options.items():
        if value not in (None, ()):
            settings[key] = list(value) if isinstance(value, tuple) else value
    settings["t_start"] = settings["t_start"] or 0.0
    settings.setdefault("seed", 0)
    missing = [key for key, value in settings.items() if value is None and key != "seed"]
    if missing:
        options_text = ", ".join("--" + key.replace("_", "-") for key in missing)
        raise InputError(f"simulate: {options_text} not given and not in {truth}; give them")
    n_phi = len(settings["phi"])
    for key in ("contrast", "offset"):
        values = list(settings[key])
        if len(values) == 1:
            values *= n_phi
        if len(values) != n_phi:
            raise InputError(f"simulate: --{key} needs 1 or {n_phi} values, got {len(values)}")
        settings[key] = values
    _check_simulation_memory(settings["n_frames"], n_phi)
    dataset = simulate_dataset(
        spec["parameters"],
        n_frames=settings["n_frames"],
        dt=settings["dt"],
        q=settings["q"],
        phi=settings["phi"],
        contrast=settings["contrast"],
        offset=settings["offset"],
        sigma=settings["sigma"],
        seed=settings["seed"] or 0,
        t_start=settings["t_start"],
    )
    write_dataset(output, dataset)
    click.echo(
        f"wrote {output}: {n_phi} angles x {settings['n_frames']} frames, sigma {settings['sigma']}"
    )


@main.command("inspect")
@click.argument("file", type=CheckedPath())
@click.option(
    "--q-index",
    type=int,
    help="APS files: the q bin the config section fits (default: the first with two-time data).",
)
def inspect_file(file: str, q_index: int | None) -> None:
    """Show what the data FILE holds and print a `data:` config section that fits it."""
    from hetmpi.datainfo import describe

    click.echo(describe(file, q_index=q_index))


def _check_simulation_memory(n_frames: Any, n_phi: int) -> None:
    """InputError naming n_frames when the simulated c2 (about four float64 arrays of
    n_phi x N x N while it is made) would not fit in this machine's memory."""
    from hetmpi.memory import physical_memory

    have = physical_memory()
    if not isinstance(n_frames, int) or n_frames < 2 or have is None:
        return
    need = 4 * 8 * n_phi * n_frames**2
    if need > have:
        raise InputError(
            f"n_frames: {n_frames} frames at {n_phi} angles need about {need / 2**30:.3g} GiB "
            f"to simulate, more than this machine's {have / 2**30:.3g} GiB; give fewer with "
            "--n-frames"
        )


def _register_scheduler_commands() -> None:
    from hetmpi.scheduler.commands import status, submit

    main.add_command(submit)
    main.add_command(status)


_register_scheduler_commands()
