"""Config loading and validation: defaults, round trips, the documented example, every rule."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from hetmpi.config import (
    EXECUTORS,
    PARAMETER_NAMES,
    Config,
    ConfigError,
    ConsensusConfig,
    DataConfig,
    ExecutorConfig,
    ModelConfig,
    NoiseConfig,
    OutputConfig,
    SamplerConfig,
    ShardingConfig,
    config_from_dict,
    default_parameter,
)
from hetmpi.configfile import config_to_dict, load_config
from hetmpi.errors import InputError
from hetmpi.model.parameters import DEFAULT_SPECS, PHYSICS_NAMES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BASE = Path("/runs/study")


def parse(raw: dict[str, Any]) -> Config:
    return config_from_dict(raw, BASE)


def errors_of(raw: Any) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, BASE)
    return info.value.errors


def with_data(**sections: Any) -> dict[str, Any]:
    return {"data": {"path": "c2.h5"}, **sections}


def docs_example() -> str:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Full example", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


# --- defaults and round trips ---------------------------------------------------------------


def test_minimal_config_gives_documented_defaults() -> None:
    cfg = parse({"data": {"path": "c2.h5"}})
    assert cfg.data == DataConfig(path=BASE / "c2.h5")
    assert cfg.model == ModelConfig()
    assert cfg.model.per_angle_mode == "individual"
    assert cfg.model.noise == NoiseConfig(sigma=None, sample=True)
    assert [p.name for p in cfg.model.parameters] == list(PARAMETER_NAMES)
    assert cfg.model.free_physics == PHYSICS_NAMES
    assert cfg.sharding == ShardingConfig()
    assert cfg.sampler == SamplerConfig()
    assert cfg.consensus == ConsensusConfig()
    assert cfg.executor == ExecutorConfig()
    assert cfg.output == OutputConfig(directory=BASE / "out")
    assert cfg.scheduler is None


def test_default_parameters_come_from_the_parameter_table() -> None:
    model = ModelConfig()
    for name, spec in DEFAULT_SPECS.items():
        p = model.parameter(name)
        assert (p.value, p.fixed, p.bounds) == (spec.default, False, spec.bounds)
        assert (p.prior_mean, p.prior_sd, p.log_space) == (
            spec.prior_mean,
            spec.prior_sd,
            spec.log_space,
        )


def test_empty_sections_mean_defaults() -> None:
    cfg = parse(with_data(model=None, sampler=None, scheduler=None, output={}))
    assert cfg == parse(with_data())


@pytest.mark.parametrize("through_yaml", [False, True])
def test_defaults_round_trip(through_yaml: bool) -> None:
    cfg = parse(with_data())
    plain = config_to_dict(cfg)
    if through_yaml:
        plain = yaml.safe_load(yaml.safe_dump(plain))
    assert config_from_dict(plain, Path("/somewhere/else")) == cfg


def test_to_dict_is_plain_yaml_layout() -> None:
    plain = config_to_dict(parse(with_data(scheduler={"kind": "slurm", "nodes": [1, 2]})))
    assert plain["data"]["path"] == str(BASE / "c2.h5")
    assert plain["sharding"]["num_shards"] == "auto"
    assert plain["model"]["noise"]["sigma"] == "auto"
    assert plain["model"]["parameters"]["D0_ref"] == {
        "value": 1e4,
        "fixed": False,
        "bounds": [1e2, 1e6],
        "prior": {"mean": 1e4, "sd": 1e4, "log_space": True},
    }
    assert plain["scheduler"] == {"kind": "slurm", "nodes": [1, 2]}
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
    assert "scheduler" not in config_to_dict(parse(with_data()))


def test_changed_config_round_trips() -> None:
    raw = with_data(
        data={"path": "c2.h5", "phi_indices": [2, 0], "frames": [1, 40], "format": "aps"},
        model={
            "per_angle_mode": "averaged",
            "parameters": {"f2": {"fixed": True}, "v0": {"value": 1e-3, "bounds": [1e-6, 1]}},
            "noise": {"sigma": 0.01, "sample": False},
        },
        sharding={"num_shards": 3, "max_points_per_shard": None},
        executor={"name": "mpi", "shard_timeout": 60},
        scheduler={"account": "abc"},
    )
    cfg = parse(raw)
    plain = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))
    assert config_from_dict(plain, Path("/other")) == cfg


# --- the documented example and the docs ----------------------------------------------------


def test_docs_full_example_parses(tmp_path: Path) -> None:
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    file = config_dir / "cfg.yaml"
    file.write_text(docs_example(), encoding="utf-8")
    cfg = load_config(file)
    assert cfg.data.path == tmp_path / "data" / "sample_c2.h5"  # configs/../data
    assert cfg.data.phi_indices == (0, 1, 2)
    assert cfg.data.frames == (1, 50)
    assert cfg.model.parameter("f2").fixed
    assert cfg.model.parameter("alpha_ref").value == -0.2
    assert cfg.model.parameter("D0_sample").value == 2e3
    assert cfg.model.free_physics == tuple(n for n in PHYSICS_NAMES if n != "f2")
    assert cfg.sharding.num_shards == 4
    assert cfg.sharding.max_points_per_shard == 200000
    assert isinstance(cfg.sharding.max_points_per_shard, int)
    assert cfg.sampler.num_warmup == 300
    assert cfg.executor.shard_timeout == 3600.0
    assert cfg.output.directory == config_dir / "results" / "run1"
    assert config_from_dict(config_to_dict(cfg), Path("/x")) == cfg


def test_docs_name_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    plain = config_to_dict(parse(with_data(scheduler={})))
    keys = set(plain)
    for section in plain.values():
        keys.update(section)
    keys.update(plain["model"]["noise"])
    keys.update(("value", "fixed", "bounds", "prior.mean", "prior.sd", "prior.log_space"))
    keys.update(EXECUTORS)
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert missing == []


# --- load_config ----------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "cfg.yaml").write_text("data:\n  path: data/c2.h5\noutput:\n  directory: res\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("job/cfg.yaml")
    assert cfg.data.path == tmp_path / "job" / "data" / "c2.h5"
    assert cfg.output.directory == tmp_path / "job" / "res"
    assert cfg.data.path.is_absolute()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    cfg = parse({"data": {"path": str(tmp_path / "x.h5")}, "output": {"directory": "/scratch/o"}})
    assert cfg.data.path == tmp_path / "x.h5"
    assert cfg.output.directory == Path("/scratch/o")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "config file not found"),
        ("data: [unclosed\n", "not valid YAML"),
        ("- data\n- model\n", "must be a YAML mapping of sections"),
        ("", "the file is empty"),
        ("just a string\n", "must be a YAML mapping"),
    ],
)
def test_load_config_file_problems_name_the_file(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    file = tmp_path / "cfg.yaml"
    if content is not None:
        file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value).startswith(f"{file}: ")
    assert expected in str(info.value)
    assert len(info.value.errors) == 1


def test_load_config_reports_yaml_position(tmp_path: Path) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text("data:\n  path: a.h5\nsampler: {num_chains: 2\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        load_config(file)


DUPLICATES = [
    ("data:\n  path: a.h5\n  path: b.h5\n", "data.path: given twice in {file} (lines 2 and 3)"),
    ("sampler: {num_chains: 2}\ndata: {path: a.h5}\nsampler: {num_warmup: 9}\n",
     "sampler: given twice in {file} (lines 1 and 3)"),
    ("data: {path: a.h5}\nmodel:\n  parameters:\n    f2: {value: 1, fixed: true, value: 2}\n",
     "model.parameters.f2.value: given twice in {file} (line 4, columns 10 and 33)"),
    ("data: {path: a.h5}\nscheduler:\n  sweep:\n    - {name: q0, name: q1}\n",
     "scheduler.sweep[0].name: given twice in {file} (line 4, columns 8 and 18)"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "expected"), DUPLICATES)
def test_a_key_given_twice_is_refused_at_any_depth(
    tmp_path: Path, content: str, expected: str
) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.errors == (expected.format(file=file) + "; keep one",)


def test_merged_keys_may_still_be_overridden(tmp_path: Path) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text(
        "data: {path: a.h5}\nsampler:\n  <<: {num_chains: 3, num_warmup: 10}\n  num_chains: 4\n"
    )
    cfg = load_config(file)
    assert (cfg.sampler.num_chains, cfg.sampler.num_warmup) == (4, 10)


def test_load_config_on_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path)


def test_load_config_collects_key_errors(tmp_path: Path) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text("sampler:\n  num_chains: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.errors == (
        "sampler.num_chains: must be >= 1, got 0",
        "data.path: required; give the HDF5 file to fit",
    )


# --- numbers --------------------------------------------------------------------------------


def test_numeric_strings_are_numbers() -> None:
    raw = yaml.safe_load(
        "data: {path: a.h5}\n"
        "model:\n  parameters:\n    D0_ref: {value: 2e4, bounds: [1e2, 1e6]}\n"
        "  noise: {sigma: 1e-3}\n"
        "sharding: {min_points_per_shard: 1e4, max_points_per_shard: 2e5}\n"
        "executor: {shard_timeout: 1e3}\n"
    )
    assert raw["sharding"]["min_points_per_shard"] == "1e4"  # what PyYAML does
    cfg = parse(raw)
    assert cfg.model.parameter("D0_ref").value == 2e4
    assert cfg.model.parameter("D0_ref").bounds == (1e2, 1e6)
    assert cfg.model.noise.sigma == 1e-3
    assert cfg.sharding.min_points_per_shard == 10000
    assert cfg.sharding.max_points_per_shard == 200000
    assert type(cfg.sharding.min_points_per_shard) is int
    assert cfg.executor.shard_timeout == 1000.0


def test_integral_floats_are_integers_and_ints_are_floats() -> None:
    cfg = parse(with_data(sampler={"num_chains": 4.0, "target_accept": "0.9"}))
    assert cfg.sampler.num_chains == 4 and type(cfg.sampler.num_chains) is int
    assert cfg.sampler.target_accept == 0.9
    cfg = parse(with_data(model={"parameters": {"f2": {"value": 3}}}))
    assert cfg.model.parameter("f2").value == 3.0
    assert type(cfg.model.parameter("f2").value) is float


@pytest.mark.parametrize(
    ("section", "key", "value", "text"),
    [
        ("sampler", "num_chains", "two", "must be an integer, got 'two'"),
        ("sampler", "num_chains", 2.5, "must be an integer, got 2.5"),
        ("sampler", "num_chains", True, "must be an integer, got true"),
        ("sampler", "num_warmup", "1e2.5", "must be an integer"),
        ("sampler", "target_accept", "high", "must be a number, got 'high'"),
        ("sampler", "target_accept", False, "must be a number, got false"),
        ("sampler", "target_accept", float("nan"), "must be a finite number"),
        ("sampler", "target_accept", "inf", "must be a finite number, got 'inf'"),
        ("sampler", "target_accept", [0.8], "must be a number, got [0.8]"),
        ("sampler", "dense_mass", "true", "must be true or false, got 'true'"),
        ("sampler", "dense_mass", 1, "must be true or false, got 1"),
        ("sharding", "num_shards", "many", "must be an integer or auto, got 'many'"),
        ("sharding", "max_points_per_shard", "none", "must be an integer or null"),
        ("executor", "shard_timeout", "1 h", "must be a number or null, got '1 h'"),
    ],
)
def test_wrong_types(section: str, key: str, value: Any, text: str) -> None:
    (error,) = errors_of(with_data(**{section: {key: value}}))
    assert error.startswith(f"{section}.{key}: {text}")


INT64_TEXT = "must be at most 9223372036854775807 (the largest 64-bit integer), got "


@pytest.mark.parametrize(
    ("section", "key", "value", "text"),
    [
        ("sampler", "num_chains", 10**20, INT64_TEXT + "100000000000000000000"),
        ("sampler", "num_chains", "1e20", INT64_TEXT + "100000000000000000000"),
        ("sampler", "num_chains", 1e20, INT64_TEXT + "100000000000000000000"),
        ("sampler", "seed", 2**63, INT64_TEXT + "9223372036854775808"),
        ("sharding", "num_shards", "1e19", INT64_TEXT + "10000000000000000000 or auto"),
        ("executor", "workers", 2**64, INT64_TEXT + "18446744073709551616 or null"),
        ("sampler", "num_chains", 1e20 + 0.5, INT64_TEXT),  # 1e20 + 0.5 == 1e20 in floats
        ("sampler", "num_warmup", "2.5e0", "must be an integer, got '2.5e0'"),
    ],
)
def test_integers_must_fit_64_bits(section: str, key: str, value: Any, text: str) -> None:
    (error,) = errors_of(with_data(**{section: {key: value}}))
    assert error.startswith(f"{section}.{key}: {text}"), error


def test_largest_64_bit_integer_is_accepted() -> None:
    assert parse(with_data(sampler={"seed": 2**63 - 1})).sampler.seed == 2**63 - 1


def test_index_lists_must_fit_64_bits() -> None:
    (error,) = errors_of(with_data(data={"path": "a.h5", "phi_indices": [0, 10**20]}))
    assert error == f"data.phi_indices[1]: {INT64_TEXT}100000000000000000000"
    (error,) = errors_of(with_data(data={"path": "a.h5", "frames": [0, "1e20"]}))
    assert error == f"data.frames[1]: {INT64_TEXT}100000000000000000000"


@pytest.mark.parametrize(
    ("section", "key", "value", "text"),
    [
        ("data", "path", "c2\0.h5", "contains a NUL character (\\0), which no path can hold"),
        ("output", "directory", "a\0b", "contains a NUL character (\\0)"),
        ("executor", "compile_cache", "cache\0", "contains a NUL character (\\0)"),
        ("output", "directory", "\ud800", "contains '\\ud800', which no file name can hold"),
        ("output", "directory", "runs/" + "x" * 256, "has a name of 256 bytes"),
        ("output", "directory", "/".join(["y" * 200] * 21), "is 4220 bytes long"),
    ],
)
def test_paths_the_os_cannot_use_are_refused(section: str, key: str, value: str, text: str) -> None:
    raw = with_data(**{section: {key: value}}) if section != "data" else {"data": {key: value}}
    (error,) = errors_of(raw)
    assert error.startswith(f"{section}.{key}: {text}"), error
    assert "\n" not in error


# --- the corpus of bad configs --------------------------------------------------------------

BAD = [
    ("missing data", {}, "data.path", "required; give the HDF5 file to fit"),
    ("data not a mapping", {"data": "c2.h5"}, "data", "must be a mapping"),
    ("empty path", {"data": {"path": ""}}, "data.path", "non-empty path"),
    ("path not a string", {"data": {"path": 3}}, "data.path", "got 3"),
    ("format", with_data(data={"path": "a", "format": "h5"}), "data.format", "'aps'"),
    ("q_index", with_data(data={"path": "a", "q_index": -1}), "data.q_index", ">= 0, got -1"),
    ("phi empty", with_data(data={"path": "a", "phi_indices": []}), "data.phi_indices", "empty"),
    (
        "phi repeated",
        with_data(data={"path": "a", "phi_indices": [1, 2, 1]}),
        "data.phi_indices",
        "index 1 more than once",
    ),
    (
        "phi negative",
        with_data(data={"path": "a", "phi_indices": [0, -2]}),
        "data.phi_indices[1]",
        ">= 0, got -2",
    ),
    ("frames one", with_data(data={"path": "a", "frames": [3]}), "data.frames", "[start, stop]"),
    ("frames order", with_data(data={"path": "a", "frames": [9, 9]}), "data.frames", "below stop"),
    (
        "frames negative",
        with_data(data={"path": "a", "frames": [-1, 5]}),
        "data.frames[0]",
        ">= 0",
    ),
    (
        "per_angle_mode",
        with_data(model={"per_angle_mode": "avg"}),
        "model.per_angle_mode",
        "'individual', 'averaged', 'constant'",
    ),
    (
        "unknown parameter",
        with_data(model={"parameters": {"D0": {}}}),
        "model.parameters.D0",
        "unknown parameter",
    ),
    (
        "reversed bounds",
        with_data(model={"parameters": {"D0_ref": {"bounds": ["1e6", "1e2"]}}}),
        "model.parameters.D0_ref.bounds",
        "lower bound must be below upper bound, got [1e6, 100]",
    ),
    (
        "equal bounds",
        with_data(model={"parameters": {"f1": {"bounds": [1, 1.0]}}}),
        "model.parameters.f1.bounds",
        "got [1, 1]",
    ),
    (
        "bounds length",
        with_data(model={"parameters": {"f0": {"bounds": [0, 1, 2]}}}),
        "model.parameters.f0.bounds",
        "[lower, upper]",
    ),
    (
        "value outside bounds",
        with_data(model={"parameters": {"f2": {"value": "2e4"}}}),
        "model.parameters.f2.value",
        "2e4 is outside bounds [-1e4, 1e4]; choose a value inside",
    ),
    (
        "fixed value outside narrowed bounds",
        with_data(model={"parameters": {"f0": {"value": 0.9, "fixed": True, "bounds": [0, 0.5]}}}),
        "model.parameters.f0.value",
        "0.9 is outside bounds [0, 0.5]",
    ),
    (
        "prior sd zero",
        with_data(model={"parameters": {"beta": {"prior": {"sd": 0}}}}),
        "model.parameters.beta.prior.sd",
        "must be > 0, got 0",
    ),
    (
        "prior sd negative",
        with_data(model={"parameters": {"beta": {"prior": {"sd": -1}}}}),
        "model.parameters.beta.prior.sd",
        "must be > 0, got -1",
    ),
    (
        "log space with negative bounds",
        with_data(model={"parameters": {"beta": {"prior": {"log_space": True, "mean": 1}}}}),
        "model.parameters.beta.prior.log_space",
        "needs bounds above 0, got [-2, 2]",
    ),
    (
        "log space default, bounds reaching 0",
        with_data(model={"parameters": {"D0_ref": {"bounds": [0, 1e6]}}}),
        "model.parameters.D0_ref.bounds",
        "set prior.log_space: false",
    ),
    (
        "log space with non-positive mean",
        with_data(model={"parameters": {"v0": {"prior": {"mean": -5}}}}),
        "model.parameters.v0.prior.mean",
        "needs a mean above 0",
    ),
    (
        "parameter not a mapping",
        with_data(model={"parameters": {"f2": 0.0}}),
        "model.parameters.f2",
        "e.g. f2: {value: 0, fixed: true}",
    ),
    (
        "parameter key",
        with_data(model={"parameters": {"f2": {"fix": True}}}),
        "model.parameters.f2.fix",
        "did you mean 'fixed'?",
    ),
    ("sigma negative", with_data(model={"noise": {"sigma": -0.1}}), "model.noise.sigma", "> 0"),
    (
        "sigma word",
        with_data(model={"noise": {"sigma": "estimate"}}),
        "model.noise.sigma",
        "or auto",
    ),
    (
        "all fixed",
        with_data(
            model={
                "per_angle_mode": "constant",
                "parameters": {name: {"fixed": True} for name in PHYSICS_NAMES},
            }
        ),
        "model.parameters",
        "every parameter is fixed",
    ),
    ("strategy", with_data(sharding={"strategy": "stratified"}), "sharding.strategy", "'random'"),
    ("num_shards 0", with_data(sharding={"num_shards": 0}), "sharding.num_shards", ">= 1 or auto"),
    (
        "cap below floor",
        with_data(sharding={"max_points_per_shard": 5000}),
        "sharding.max_points_per_shard",
        "must be >= min_points_per_shard (50000), got 5000",
    ),
    ("shard seed", with_data(sharding={"seed": -3}), "sharding.seed", ">= 0, got -3"),
    ("chains", with_data(sampler={"num_chains": 0}), "sampler.num_chains", "must be >= 1, got 0"),
    ("warmup", with_data(sampler={"num_warmup": -10}), "sampler.num_warmup", ">= 0, got -10"),
    ("samples", with_data(sampler={"num_samples": 0}), "sampler.num_samples", ">= 1"),
    (
        "target_accept high",
        with_data(sampler={"target_accept": 1.2}),
        "sampler.target_accept",
        "must be between 0 and 1 (exclusive), got 1.2",
    ),
    (
        "target_accept one",
        with_data(sampler={"target_accept": 1}),
        "sampler.target_accept",
        "(exclusive), got 1",
    ),
    ("tree depth", with_data(sampler={"max_tree_depth": 16}), "sampler.max_tree_depth", "15"),
    ("tree depth 0", with_data(sampler={"max_tree_depth": 0}), "sampler.max_tree_depth", "1 and"),
    (
        "retry rate",
        with_data(sampler={"retry_divergence_rate": 1.5}),
        "sampler.retry_divergence_rate",
        "between 0 and 1 (inclusive)",
    ),
    (
        "retry below target",
        with_data(sampler={"target_accept": 0.97}),
        "sampler.retry_target_accept",
        "must be >= target_accept (0.97), got 0.95",
    ),
    ("retries", with_data(sampler={"max_retries": -1}), "sampler.max_retries", ">= 0"),
    (
        "chain method",
        with_data(sampler={"chain_method": "paralel"}),
        "sampler.chain_method",
        "did you mean 'parallel'?",
    ),
    (
        "min_samples",
        with_data(sampler={"min_samples": 0}),
        "sampler.min_samples",
        "must be >= 1, got 0",
    ),
    ("method", with_data(consensus={"method": "median"}), "consensus.method", "'consensus'"),
    (
        "divergence rate",
        with_data(consensus={"max_divergence_rate": -0.1}),
        "consensus.max_divergence_rate",
        "between 0 and 1 (inclusive)",
    ),
    (
        "success rate zero",
        with_data(consensus={"min_success_rate": 0}),
        "consensus.min_success_rate",
        "must be > 0 and <= 1, got 0",
    ),
    (
        "executor",
        with_data(executor={"name": "slurm"}),
        "executor.name",
        "'auto', 'cpu', 'multiprocessing', 'mpi'",
    ),
    ("timeout", with_data(executor={"shard_timeout": 0}), "executor.shard_timeout", "> 0"),
    ("hdi", with_data(output={"hdi_prob": 0}), "output.hdi_prob", "(exclusive), got 0"),
    ("plots", with_data(output={"plots": "no"}), "output.plots", "true or false"),
    ("scheduler", with_data(scheduler=["slurm"]), "scheduler", "must be a mapping"),
    ("top level", with_data(sampling={}), "sampling", "did you mean 'sampler'?"),
    ("whole config", ["data"], "config", "must be a mapping"),
]


def test_corpus_is_large_and_covers_every_section() -> None:
    assert len(BAD) >= 20
    sections = {path.split(".")[0].split("[")[0] for _, _, path, _ in BAD}
    assert {"data", "model", "sharding", "sampler", "consensus", "executor", "output"} <= sections


@pytest.mark.parametrize(("raw", "path", "text"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_the_key_and_the_problem(raw: Any, path: str, text: str) -> None:
    errors = errors_of(raw)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}: "), errors
    assert text in errors[0], errors
    assert "\n" not in errors[0]


# --- unknown keys and suggestions -----------------------------------------------------------


def test_did_you_mean_text() -> None:
    assert errors_of(with_data(sampler={"num_chain": 2})) == (
        "sampler.num_chain: unknown key; did you mean 'num_chains'?",
    )


def test_unknown_parameter_suggestion_ignores_case() -> None:
    assert errors_of(with_data(model={"parameters": {"d0_sample": {}}})) == (
        "model.parameters.d0_sample: unknown parameter; did you mean 'D0_sample'?",
    )


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    (error,) = errors_of(with_data(consensus={"zzz": 1}))
    assert error == (
        "consensus.zzz: unknown key; allowed keys are method, max_divergence_rate, "
        "min_success_rate, check_draws"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (with_data(sampler={"num_shards": 4}), "sampler.num_shards: unknown key; num_shards "),
        (with_data(num_chains=4), "num_chains: unknown key; num_chains belongs under sampler"),
        (with_data(model={"contrast": {}}), "model.contrast: unknown key; contrast belongs under "),
        (with_data(model={"sigma": 0.1}), "model.sigma: unknown key; sigma belongs under model."),
        (with_data(consensus={"seed": 1}), "consensus.seed: unknown key; seed belongs under shar"),
        (with_data(data={"path": "a", "output": {}}), "data.output: unknown key; output belongs "),
    ],
)
def test_keys_in_the_wrong_place_say_where_they_belong(raw: Any, expected: str) -> None:
    (error,) = errors_of(raw)
    assert error.startswith(expected)


def test_non_string_keys_are_unknown() -> None:
    (error,) = errors_of(with_data(sampler={1: 2}))
    assert error.startswith("sampler.1: unknown key")


# --- collecting, order, cross-field rules ---------------------------------------------------


def test_all_problems_reported_at_once_in_document_order() -> None:
    raw = {
        "sampler": {"target_accept": 2, "num_chain": 1},
        "model": {"parameters": {"f2": {"value": 1e5}}},
        "data": {"path": "a.h5", "frames": [5, 1]},
        "output": {"hdi_prob": 2},
    }
    with pytest.raises(ConfigError) as info:
        parse(raw)
    errors = info.value.errors
    assert [e.split(":")[0] for e in errors] == [
        "sampler.target_accept",
        "sampler.num_chain",
        "model.parameters.f2.value",
        "data.frames",
        "output.hdi_prob",
    ]
    assert str(info.value) == "\n".join(errors)
    assert isinstance(info.value, InputError)


def test_an_invalid_path_is_not_also_reported_missing() -> None:
    assert errors_of({"data": {"path": None}}) == (
        "data.path: must be a non-empty path string, got null",
    )


def test_bad_bounds_do_not_cause_a_second_value_error() -> None:
    raw = with_data(model={"parameters": {"f2": {"value": 5e4, "bounds": [1e5, 1e4]}}})
    (error,) = errors_of(raw)
    assert error.startswith("model.parameters.f2.bounds:")


def test_bad_target_accept_does_not_cause_a_retry_error() -> None:
    (error,) = errors_of(with_data(sampler={"target_accept": "x", "retry_target_accept": 0.5}))
    assert error.startswith("sampler.target_accept:")


def test_retry_equal_to_target_is_fine() -> None:
    cfg = parse(with_data(sampler={"target_accept": 0.9, "retry_target_accept": 0.9}))
    assert cfg.sampler.retry_target_accept == 0.9


def test_min_counts_above_counts_are_allowed() -> None:
    cfg = parse(with_data(sampler={"num_warmup": 50, "min_warmup": 100, "num_samples": 10}))
    assert (cfg.sampler.num_warmup, cfg.sampler.min_warmup) == (50, 100)
    assert (cfg.sampler.num_samples, cfg.sampler.min_samples) == (10, 200)


def test_zero_warmup_and_no_cap_are_allowed() -> None:
    cfg = parse(with_data(sampler={"num_warmup": 0}, sharding={"max_points_per_shard": None}))
    assert cfg.sampler.num_warmup == 0
    assert cfg.sharding.max_points_per_shard is None


def test_all_physics_fixed_is_fine_while_scaling_is_sampled() -> None:
    fixed = {name: {"fixed": True} for name in PHYSICS_NAMES}
    cfg = parse(with_data(model={"parameters": fixed}))
    assert cfg.model.free_physics == ()
    everything = {name: {"fixed": True} for name in PARAMETER_NAMES}
    (error,) = errors_of(with_data(model={"parameters": everything}))
    assert error.startswith("model.parameters: every parameter is fixed")


def test_auto_and_null_mean_none() -> None:
    for word in ("auto", None):
        cfg = parse(with_data(sharding={"num_shards": word}, model={"noise": {"sigma": word}}))
        assert cfg.sharding.num_shards is None
        assert cfg.model.noise.sigma is None


# --- parameters -----------------------------------------------------------------------------


def test_parameter_entries_merge_with_defaults() -> None:
    raw = with_data(
        model={
            "parameters": {
                "f2": {"fixed": True},
                "alpha_ref": {"value": -0.2, "prior": {"sd": 0.5}},
                "contrast": None,
            }
        }
    )
    model = parse(raw).model
    assert model.parameter("f2") == replace(default_parameter("f2"), fixed=True)
    alpha = model.parameter("alpha_ref")
    assert (alpha.value, alpha.prior_sd, alpha.prior_mean, alpha.bounds) == (-0.2, 0.5, 0, (-5, 5))
    assert model.parameter("contrast") == default_parameter("contrast")
    assert "f2" not in model.free_physics


def test_start_value_moves_inside_bounds_that_exclude_the_default() -> None:
    raw = with_data(
        model={
            "parameters": {
                "D0_ref": {"bounds": [1e5, 1e7]},
                "alpha_ref": {"bounds": [1, 3]},
            }
        }
    )
    model = parse(raw).model
    assert math.isclose(model.parameter("D0_ref").value, math.sqrt(1e5 * 1e7))
    assert model.parameter("alpha_ref").value == 2.0


def test_model_config_lookups() -> None:
    model = ModelConfig()
    assert model.parameter("offset").bounds == (0.5, 1.5)
    with pytest.raises(KeyError):
        model.parameter("gamma")
    with pytest.raises(ValueError):
        ModelConfig(parameters=model.parameters[::-1])


# --- scheduler and errors -------------------------------------------------------------------


def test_scheduler_is_kept_as_an_unchecked_copy() -> None:
    section = {"kind": "pbs", "resources": {"nodes": 2}, "anything": [1, "x"]}
    cfg = parse(with_data(scheduler=section))
    assert cfg.scheduler == section
    section["resources"]["nodes"] = 99
    assert cfg.scheduler is not None and cfg.scheduler["resources"] == {"nodes": 2}


def test_config_error_holds_its_lines() -> None:
    error = ConfigError(["a.b: bad", "c: worse"])
    assert error.errors == ("a.b: bad", "c: worse")
    assert str(error) == "a.b: bad\nc: worse"
    assert ConfigError("x: one").errors == ("x: one",)
