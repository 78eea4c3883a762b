"""Scheduler settings, job-script rendering and the submit/status commands, without a scheduler.

Rendered scripts are compared with golden files (tests/golden/, rewrite them with
HETMPI_UPDATE_GOLDEN=1), run under bash with stand-in srun/hetmpi executables, and attacked
with injection strings by a property test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import h5py
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetmpi.errors import InputError
from hetmpi.scheduler.commands import (
    deliver,
    load_profile,
    prepare_retry,
    prepare_submission,
    profile_names,
    resolve_settings,
    status,
    status_report,
    submit,
)
from hetmpi.scheduler.directives import SchedulerConfig, from_mapping
from hetmpi.scheduler.render import (
    SweepRun,
    compress_indices,
    render_array,
    render_mpi,
    render_sweep,
)
from hetmpi.scheduler.submit import parse_job_id, query_states, read_record, submit_command

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
CFG = Path("/scratch/user/run/cfg.yaml")
OUT = Path("/scratch/user/run/out")
SLURM = {"scheduler": "slurm", "walltime": "01:00:00"}
PBS = {"scheduler": "pbs", "walltime": "01:00:00"}


def problems(raw: dict[str, Any]) -> str:
    with pytest.raises(InputError) as info:
        from_mapping(raw)
    return str(info.value)


# ---------------------------------------------------------------- validation corpus


@pytest.mark.parametrize("walltime", ["01:00:00", "00:00:30", "100:00:00", "48:59:59"])
def test_walltime_accepts_hh_mm_ss(walltime: str) -> None:
    assert from_mapping({**SLURM, "walltime": walltime}).walltime == walltime


@pytest.mark.parametrize(
    "walltime",
    ["10", "10:00", "1:00:00", "00:60:00", "00:00:60", "00:00:00", "aa:bb:cc", "01:00:00 ",
     "01:00:00\n", "-1:00:00", "", 36000, 1.5, None, True],
)  # fmt: skip
def test_walltime_rejects_everything_else(walltime: Any) -> None:
    message = problems({**SLURM, "walltime": walltime})
    assert message.startswith("scheduler.walltime:")
    assert "\n" not in message


def test_unquoted_yaml_walltime_explains_the_sexagesimal_trap() -> None:
    raw = yaml.safe_load("scheduler: slurm\nwalltime: 10:00:00\n")
    assert raw["walltime"] == 36000
    assert "quote" in problems(raw)


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("account", ["m1234", "m1234_g", "MyProject", "a.b-c+d", "x" * 64, 12345],
         ["", "-A", "a b", "$(id)", "x;y", "a'b", "x" * 65, "é", True, ["m1"]]),
        ("partition", ["debug", "gpu_a100"], ["de bug", "-p", "a/b", "a=b"]),
        ("qos", ["regular", "debug"], ["", "re gular", "`id`"]),
        ("job_name", ["hetmpi", "run-1.x"], ["1run", "_x", "-x", "a b", "a\tb"]),
        ("constraint", ["cpu", "gpu&hbm80g", "a|b"], ["gpu hbm", "$x", "&gpu"]),
        ("memory", ["64G", "500M", "1T", "2048K"],
         ["64GB", "64", "0G", "1.5G", "64g", "G", "-1G", 64]),
        ("venv", ["/opt/venv", "/with space/venv", "$HOME/x"],
         ["", "   ", 3, "/x/" + "v" * 256, "/x/\ud800"]),
    ],
)  # fmt: skip
def test_string_fields_follow_their_patterns(key: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert getattr(from_mapping({**SLURM, key: value}), key) == str(value)
    for value in bad:
        assert problems({**SLURM, key: value}).startswith(f"scheduler.{key}:"), value


@pytest.mark.parametrize("value", ["home:eagle", "home", "home:eagle:grand", "a_1:b2"])
def test_filesystems_accepts_colon_lists(value: str) -> None:
    assert from_mapping({**PBS, "filesystems": value}).filesystems == value


@pytest.mark.parametrize("value", ["home,eagle", "Home", "home:", ":home", "home eagle", "a::b"])
def test_filesystems_rejects_other_spellings(value: str) -> None:
    assert problems({**PBS, "filesystems": value}).startswith("scheduler.filesystems:")


@pytest.mark.parametrize("key", ["nodes", "ranks_per_node", "cpus_per_rank", "array_throttle"])
@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True, None, [1], 2**63])
def test_counts_are_positive_integers(key: str, value: Any) -> None:
    if value is None and key == "array_throttle":
        assert from_mapping({**SLURM, key: value}).array_throttle is None
        return
    assert problems({**SLURM, key: value}).startswith(f"scheduler.{key}:")


def test_gpus_per_node_may_be_zero_but_not_negative() -> None:
    assert from_mapping({**SLURM, "gpus_per_node": 0}).gpus_per_node == 0
    assert problems({**SLURM, "gpus_per_node": -1}).startswith("scheduler.gpus_per_node:")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("account", "m1\nx"), ("partition", "p\r"), ("job_name", "a\0"), ("venv", "/v\n#SBATCH"),
        ("walltime", "01:00:00\r"), ("memory", "8G\n"), ("modules", ["a\nb"]),
        ("module_paths", ["/m\r\n"]), ("env", ["A=b\nc"]), ("env", ["A=b\0"]),
        ("extra_directives", ["--x\n#SBATCH --y"]), ("launcher_args", ["--a\n"]),
        ("sweep", [{"name": "a\nb"}]),
    ],
)  # fmt: skip
def test_cr_lf_nul_are_rejected_in_every_value(key: str, value: Any) -> None:
    message = problems({**SLURM, key: value})
    assert message.startswith(f"scheduler.{key}")


@pytest.mark.parametrize("line", ["OMP_PROC_BIND=close", "A=", "_X1=a b $Y ' \" `id`"])
def test_env_lines_take_any_value(line: str) -> None:
    name, _, value = line.partition("=")
    assert from_mapping({**SLURM, "env": [line]}).env == ((name, value),)


@pytest.mark.parametrize("line", ["1A=x", "A", "A B=x", "=x", "A-B=x", "export A=x"])
def test_env_lines_need_an_identifier(line: str) -> None:
    assert problems({**SLURM, "env": [line]}).startswith("scheduler.env[0]:")


@pytest.mark.parametrize(
    "directive", ["--mail-type=END", "-l place=scatter", "--exclusive", "--exclude=nid[001-003]"]
)
def test_extra_directives_accept_single_options(directive: str) -> None:
    assert from_mapping({**SLURM, "extra_directives": [directive]}).extra_directives == (directive,)


@pytest.mark.parametrize(
    "directive", ["#SBATCH --x", "x", "--a b c", "--x;id", "--x=$(id)", "--x='a'", "- x", ""]
)
def test_extra_directives_reject_anything_else(directive: str) -> None:
    assert problems({**SLURM, "extra_directives": [directive]}).startswith(
        "scheduler.extra_directives[0]:"
    )


@pytest.mark.parametrize("module", ["cray-python/3.11", "PrgEnv-gnu", "py@3.11", "conda"])
def test_module_names(module: str) -> None:
    assert from_mapping({**SLURM, "modules": [module]}).modules == (module,)
    assert problems({**SLURM, "modules": [module + " x"]}).startswith("scheduler.modules[0]:")


def test_lists_must_be_lists() -> None:
    assert problems({**SLURM, "modules": "conda"}).startswith("scheduler.modules:")


def test_unknown_key_suggests_the_close_one() -> None:
    assert "did you mean 'account'?" in problems({**SLURM, "acount": "m1"})
    assert "scheduler.zzz: unknown key" in problems({**SLURM, "zzz": 1})


def test_required_keys_and_scheduler_choice() -> None:
    assert "scheduler.walltime: is required" in problems({"scheduler": "slurm"})
    assert "scheduler.scheduler: is required" in problems({"walltime": "01:00:00"})
    assert problems({**SLURM, "scheduler": "lsf"}).startswith("scheduler.scheduler:")


def test_keys_of_the_other_scheduler_are_errors() -> None:
    assert "use scheduler.partition" in problems({**SLURM, "queue": "debug"})
    assert "use scheduler.queue" in problems({**PBS, "partition": "debug"})
    assert problems({**PBS, "constraint": "cpu"}).startswith("scheduler.constraint:")
    assert problems({**SLURM, "filesystems": "home"}).startswith("scheduler.filesystems:")


def test_every_problem_is_reported_at_once() -> None:
    lines = problems({"scheduler": "slurm", "walltime": "10", "nodes": 0, "acount": 1}).split("\n")
    assert [line.split(":")[0] for line in lines] == [
        "scheduler.walltime",
        "scheduler.nodes",
        "scheduler.acount",
    ]


def test_null_drops_an_optional_value() -> None:
    assert from_mapping({**SLURM, "account": None}).account is None


def test_settings_round_trip_through_to_mapping() -> None:
    sc = from_mapping(
        {**PBS, "account": "a", "env": ["A=1 2"], "nodes": 3, "sweep": [{"name": "q0"}]}
    )
    assert from_mapping(sc.to_mapping()) == sc


def test_sweep_entries_are_checked() -> None:
    assert "duplicate" in problems({**SLURM, "sweep": [{"name": "a"}, {"name": "a"}]})
    assert problems({**SLURM, "sweep": [{"name": "a", "overrides": {"output": {}}}]}).startswith(
        "scheduler.sweep[0].overrides.output:"
    )
    assert problems({**SLURM, "sweep": [{"name": "a", "data": {}}]}).startswith(
        "scheduler.sweep[0].data:"
    )
    assert problems({**SLURM, "sweep": [{"name": "../x"}]}).startswith("scheduler.sweep[0].name:")


# ---------------------------------------------------------------- arrays


def test_compress_indices() -> None:
    assert compress_indices([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert compress_indices([3]) == "3"
    assert compress_indices([4, 2, 3, 3]) == "2-4"


def test_slurm_array_limit_is_max_array_size() -> None:
    sc = from_mapping(SLURM)
    render_array(sc, OUT, range(1001))
    with pytest.raises(InputError, match=r"^scheduler.max_array_size: .*MaxArraySize is 1001"):
        render_array(sc, OUT, range(1002))
    with pytest.raises(InputError, match="index 7"):
        render_array(from_mapping({**SLURM, "max_array_size": 7}), OUT, [1, 7])
    small = from_mapping({**SLURM, "max_array_size": 50})
    assert "#SBATCH --array=0-49\n" in render_array(small, OUT, range(50))[0].text


def test_pbs_array_limit_counts_subjobs() -> None:
    sc = from_mapping({**PBS, "max_array_size": 4})
    render_array(sc, OUT, [10, 20, 30, 40])
    with pytest.raises(InputError, match="needs 5 subjobs"):
        render_array(sc, OUT, range(5))


def test_pbs_single_task_is_a_plain_job() -> None:
    sc = from_mapping({**PBS, "array_throttle": 2})
    text = render_array(sc, OUT, [7])[0].text
    assert "#PBS -J" not in text and "max_run_subjobs" not in text
    assert "\nINDEX=7\n" in text and "TASK_ID" not in text


def test_pbs_arrays_use_ranges_or_a_task_table() -> None:
    sc = from_mapping({**PBS, "array_throttle": 2})
    contiguous = render_array(sc, OUT, [3, 4, 5])[0].text
    assert "#PBS -J 3-5\n#PBS -W max_run_subjobs=2\n" in contiguous
    assert "TASKS=" not in contiguous
    gappy = render_array(sc, OUT, [1, 4, 9])[0].text
    assert "#PBS -J 0-2\n" in gappy and "TASKS=(1 4 9)\n" in gappy


def test_slurm_arrays_list_the_indices() -> None:
    sc = from_mapping({**SLURM, "array_throttle": 3})
    scripts = render_array(sc, OUT, [9, 1, 2, 4], tag="-retry1")
    assert [s.filename for s in scripts] == ["array-retry1.sh", "combine-retry1.sh"]
    assert "#SBATCH --array=1-2,4,9%3\n" in scripts[0].text
    assert scripts[0].indices == (1, 2, 4, 9)
    assert scripts[1].depends_on == "array-retry1.sh"
    assert "--array" not in scripts[1].text


def test_array_tasks_ask_for_one_rank_and_one_gpu() -> None:
    sc = from_mapping({**SLURM, "nodes": 4, "ranks_per_node": 4, "gpus_per_node": 4})
    array, combine = (s.text for s in render_array(sc, OUT, range(3)))
    assert "--nodes=1\n" in array and "--ntasks-per-node=1\n" in array
    assert "--gpus-per-node=1\n" in array and "gpus" not in combine
    mpi = render_mpi(sc, CFG, OUT).text
    assert "--nodes=4\n" in mpi and "srun --ntasks=16 --ntasks-per-node=4" in mpi


def test_paths_with_line_breaks_are_refused() -> None:
    sc = from_mapping(SLURM)
    with pytest.raises(InputError, match="line feed"):
        render_mpi(sc, Path("/a\n#SBATCH --x/cfg.yaml"), OUT)


# ---------------------------------------------------------------- golden files


def profile_settings(name: str) -> SchedulerConfig:
    raw = load_profile(name)
    raw["sweep"] = [
        {"name": "q0", "overrides": {"data": {"q_index": 0}}},
        {"name": "q1", "overrides": {"data": {"q_index": 1}}},
    ]
    return from_mapping(raw)


def golden_scripts(name: str, mode: str) -> dict[str, str]:
    sc = profile_settings(name)
    if mode == "mpi":
        scripts = [render_mpi(sc, CFG, OUT)]
    elif mode == "array":
        scripts = render_array(sc, OUT, range(8))
    else:
        runs = [
            SweepRun(e.name, OUT / "jobs" / "sweep" / f"{e.name}.yaml", OUT / "sweep" / e.name)
            for e in sc.sweep
        ]
        scripts = [render_sweep(sc, runs)]
    return {f"{name}-{s.filename}": s.text for s in scripts}


def test_profiles_are_the_five_clusters() -> None:
    assert profile_names() == [
        "pbs-generic",
        "perlmutter-cpu",
        "perlmutter-gpu",
        "polaris",
        "slurm-generic",
    ]
    assert sorted(p.name for p in (REPO / "jobs" / "profiles").glob("*.yaml")) == [
        f"{n}.yaml" for n in profile_names()
    ]


@pytest.mark.parametrize("mode", ["mpi", "array", "sweep"])
@pytest.mark.parametrize(
    "name", ["polaris", "perlmutter-cpu", "perlmutter-gpu", "slurm-generic", "pbs-generic"]
)
def test_golden_scripts(name: str, mode: str) -> None:
    for filename, text in golden_scripts(name, mode).items():
        path = GOLDEN / filename
        if os.environ.get("HETMPI_UPDATE_GOLDEN"):
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
        assert text == path.read_text(), f"{filename} changed; HETMPI_UPDATE_GOLDEN=1 rewrites it"
        check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr


def test_scripts_shown_in_the_docs_are_current() -> None:
    blocks = re.findall(
        r"```bash\n(#!/bin/bash.*?)```", (REPO / "docs" / "hpc.md").read_text(), re.S
    )
    goldens = {p.read_text() for p in GOLDEN.glob("*.sh")}
    assert len(blocks) == 4
    for block in blocks:
        assert block in goldens, block[:200]


def test_golden_polaris_mpi_has_the_site_settings() -> None:
    text = (GOLDEN / "polaris-mpi.sh").read_text()
    for line in [
        "#PBS -l select=1:ncpus=32:mpiprocs=4:ompthreads=8:ngpus=4:system=polaris",
        "#PBS -l filesystems=home:eagle",
        "#PBS -l place=scatter",
        "module use /soft/modulefiles",
        "export CUDA_VISIBLE_DEVICES=$((local_rank % 4))",
        'mpiexec -n 4 --ppn 4 --depth=8 --cpu-bind depth bash -c "${HETMPI_GPU_BIND}" '
        "hetmpi-gpu-bind hetmpi run /scratch/user/run/cfg.yaml --output /scratch/user/run/out",
    ]:
        assert line in text.splitlines()


# ---------------------------------------------------------------- running rendered scripts


def fake_bin(tmp_path: Path) -> Path:
    """A bin/ with stand-ins: hetmpi prints its args and env; srun/mpiexec start 2 local ranks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hetmpi").write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, sys
            keys = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "XLA_FLAGS", "HETMPI_NOTE")
            print(" ".join(sys.argv[1:]), "|", {{k: os.environ.get(k) for k in keys}})
            """
        )
    )
    launcher = textwrap.dedent(
        """\
        #!/bin/bash
        while [[ "$1" == -* ]]; do
            case "$1" in -n|--ppn|--cpu-bind) shift ;; esac
            shift
        done
        for rank in 0 1; do SLURM_LOCALID=$rank PMI_LOCAL_RANK=$rank "$@"; done
        """
    )
    for name in ("srun", "mpiexec"):
        (bin_dir / name).write_text(launcher)
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return bin_dir


def run_script(text: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(exist_ok=True)
    script = tmp_path / "job.sh"
    script.write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_"))}
    clean["PATH"] = f"{fake_bin(tmp_path)}:{clean['PATH']}"
    return subprocess.run(
        ["bash", str(script)], env={**clean, **env}, text=True, capture_output=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "index"),
    [
        ({"PBS_ARRAY_INDEX": "1", "PBS_ARRAYID": "2", "SLURM_ARRAY_TASK_ID": "0"}, "4"),
        ({"PBS_ARRAYID": "2", "SLURM_ARRAY_TASK_ID": "0"}, "9"),
        ({"SLURM_ARRAY_TASK_ID": "0"}, "1"),
    ],
)
def test_array_index_comes_from_pbs_torque_or_slurm(
    tmp_path: Path, env: dict[str, str], index: str
) -> None:
    sc = from_mapping({**PBS, "env": ["HETMPI_NOTE=a 'b' $c"]})
    text = render_array(sc, Path("/o u/t"), [1, 4, 9])[0].text
    done = run_script(text, tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"run-shard /o u/t --index {index} |")
    assert "'HETMPI_NOTE': \"a 'b' $c\"" in done.stdout


@pytest.mark.parametrize("env", [{}, {"SLURM_ARRAY_TASK_ID": "x"}, {"PBS_ARRAY_INDEX": "3"}])
def test_array_task_without_a_usable_index_fails_clearly(
    tmp_path: Path, env: dict[str, str]
) -> None:
    text = render_array(from_mapping(PBS), OUT, [1, 4, 9])[0].text
    done = run_script(text, tmp_path, **env)
    assert done.returncode == 2
    assert "hetmpi:" in done.stderr and done.stdout == ""


def test_gpu_ranks_get_one_device_each(tmp_path: Path) -> None:
    for base in (SLURM, PBS):
        sc = from_mapping({**base, "ranks_per_node": 2, "gpus_per_node": 2, "cpus_per_rank": 3})
        done = run_script(render_mpi(sc, CFG, OUT).text, tmp_path / base["scheduler"])
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert [line.split("'CUDA_VISIBLE_DEVICES': ")[1][:3] for line in lines] == ["'0'", "'1'"]
        assert all("'OMP_NUM_THREADS': '3'" in line for line in lines)


def test_cpu_ranks_get_single_threaded_xla(tmp_path: Path) -> None:
    done = run_script(render_mpi(from_mapping(SLURM), CFG, OUT).text, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=false'" in done.stdout


def test_sweep_task_runs_its_entry(tmp_path: Path) -> None:
    sc = from_mapping(SLURM)
    runs = [SweepRun(n, Path(f"/c/{n}.yaml"), Path(f"/o/sweep/{n}")) for n in ("a", "b", "c")]
    done = run_script(render_sweep(sc, runs).text, tmp_path, SLURM_ARRAY_TASK_ID="2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("run /c/c.yaml --output /o/sweep/c |")


# ---------------------------------------------------------------- injection property test

MARKERS: dict[str, str] = {
    "account": "zqmarker",
    "partition": "zqmarker",
    "queue": "zqmarker",
    "qos": "zqmarker",
    "constraint": "zqmarker",
    "filesystems": "zqmarker",
    "job_name": "zqmarker",
    "walltime": "12:34:56",
    "memory": "977G",
    "venv": "/zq/marker",
    "modules": "zqmarker/1.0",
    "module_paths": "/zq/marker",
    "env": "ZQMARK=zqvalue",
    "env_value": "zqvalue",
    "extra_directives": "--zq-marker",
    "launcher_args": "--zqmarker",
    "select_extra": "zq=marker",
    "sweep_name": "zqmarker",
    "config_path": "/zq/marker.yaml",
    "out_dir": "/zq/markerout",
}
SLURM_FIELDS = sorted(set(MARKERS) - {"queue", "filesystems", "select_extra"})
PBS_FIELDS = sorted(set(MARKERS) - {"partition", "qos", "constraint"})
LIST_FIELDS = ("modules", "module_paths", "env", "extra_directives", "launcher_args")
INJECTIONS = [
    "\n#SBATCH --x", "\r\n#PBS -x", "x\n", "\r", "\0", "$(id)", "`id`", "; rm -rf ~", "' ; id '",
    '"', "{{ 7*7 }}", "{% raw %}", "${HOME}", "a b", "-x", "--wrap=id", "\u2028", "\x85", "#",
    "%", "\\", "*", "~", "&", "|", "=", ":", "[", "]", "@",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(max_size=20),
    st.tuples(st.text(max_size=8), st.sampled_from(INJECTIONS), st.text(max_size=8)).map("".join),
    st.tuples(st.text(max_size=8), st.sampled_from(INJECTIONS)).map(lambda p: "/" + "".join(p)),
    st.text(st.characters(blacklist_characters="\r\n\0"), max_size=12).map(lambda p: "/" + p),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,10}", fullmatch=True),
    st.from_regex(r"--?[a-z][a-z-]{0,8}(=[a-z0-9:/]{1,8})?", fullmatch=True),
    st.from_regex(r"\d{2}:[0-5]\d:[0-5]\d|[1-9]\d{0,3}[KMGT]", fullmatch=True),
    st.from_regex(r"[a-z]{1,5}=[a-z0-9]{1,5}|[A-Z_]{1,5}=.{0,5}", fullmatch=True),
)  # fmt: skip


def base_settings(kind: str) -> dict[str, Any]:
    common = {
        "scheduler": kind, "walltime": "01:00:00", "account": "acct", "job_name": "job",
        "memory": "8G", "modules": ["mod/1"], "module_paths": ["/mods"], "env": ["FOO=bar"],
        "extra_directives": ["--mail-type=END"], "launcher_args": ["--cpu-bind=cores"],
        "venv": "/venv", "array_throttle": 2, "sweep": [{"name": "first"}, {"name": "second"}],
    }  # fmt: skip
    if kind == "slurm":
        return {**common, "partition": "part", "qos": "q", "constraint": "cpu"}
    return {**common, "queue": "workq", "filesystems": "home", "select_extra": ["a=b"]}


def render_all(kind: str, field: str, value: str) -> str:
    """Every script of every mode, with ``value`` put into ``field``."""
    raw = base_settings(kind)
    config, out_dir = Path("/cfg/c.yaml"), Path("/out")
    if field == "config_path":
        config = Path(value)
    elif field == "out_dir":
        out_dir = Path(value)
    elif field == "env_value":
        raw["env"] = ["FOO=" + value]
    elif field == "sweep_name":
        raw["sweep"] = [{"name": value}, {"name": "second"}]
    elif field in LIST_FIELDS or field == "select_extra":
        raw[field] = [value]
    else:
        raw[field] = value
    sc = from_mapping(raw)
    runs = [
        SweepRun(e.name, out_dir / "jobs" / "sweep" / f"{e.name}.yaml", out_dir / "sweep" / e.name)
        for e in sc.sweep
    ]
    scripts = [render_mpi(sc, config, out_dir), *render_array(sc, out_dir, [0, 1, 3])]
    return "".join(s.text for s in [*scripts, render_sweep(sc, runs)])


def replacements(kind: str, field: str, value: str) -> list[tuple[str, str]]:
    """(text in the marker's script, text expected instead) pairs for an accepted value."""
    marker = MARKERS[field]
    if field in ("config_path", "out_dir"):
        # Paths are quoted whole, so each path built on the directory is replaced whole.
        suffixes = [""] if field == "config_path" else [
            "/jobs/sweep/first.yaml", "/jobs/sweep/second.yaml", "/sweep/first", "/sweep/second", ""
        ]  # fmt: skip
        return [
            (
                marker + sfx,
                shlex.quote(str(Path(value) / sfx.lstrip("/")) if sfx else str(Path(value))),
            )
            for sfx in suffixes
        ]
    if field == "venv":
        return [(marker + "/bin/activate", shlex.quote(value + "/bin/activate"))]
    if field == "env":
        name, _, text = value.partition("=")
        return [(marker, f"{name}={shlex.quote(text)}")]
    if field in ("env_value", "modules", "module_paths", "launcher_args"):
        return [(marker, shlex.quote(value))]
    if field == "memory" and kind == "pbs":
        return [(marker[:-1] + "gb", value[:-1] + value[-1].lower() + "b")]
    return [(marker, value)]


def check_injection(kind: str, field: str, value: str) -> None:
    """Either the value is refused, or the script is the marker's script with exactly the
    value's (quoted) text in the marker's places: no new line, no unquoted shell text."""
    try:
        text = render_all(kind, field, value)
    except InputError:
        return
    assert not any(c in value for c in "\r\n\0"), "a value with CR/LF/NUL was accepted"
    expected = render_all(kind, field, MARKERS[field])
    for old, new in replacements(kind, field, value):
        expected = expected.replace(old, new)
    assert text == expected
    assert text.count("\n") == render_all(kind, field, MARKERS[field]).count("\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(SLURM_FIELDS), value=VALUES)
def test_injection_never_adds_a_line_slurm(field: str, value: str) -> None:
    check_injection("slurm", field, value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(PBS_FIELDS), value=VALUES)
def test_injection_never_adds_a_line_pbs(field: str, value: str) -> None:
    check_injection("pbs", field, value)


@pytest.mark.parametrize("field", SLURM_FIELDS)
@pytest.mark.parametrize(
    "value", ["a\n#SBATCH --evil", "$(touch /tmp/x)", "x' ; id ; '", "/a b/$(id)/`id`'\"\\"]
)
def test_known_injections_slurm(field: str, value: str) -> None:
    check_injection("slurm", field, value)


# ---------------------------------------------------------------- submit / status commands


def write_config(tmp_path: Path, scheduler: dict[str, Any] | None = None) -> Path:
    """cfg.yaml with an empty HDF5 file as its data (submit checks that data.path opens)."""
    h5py.File(tmp_path / "data.h5", "w").close()
    cfg = tmp_path / "cfg.yaml"
    raw: dict[str, Any] = {"data": {"path": "data.h5"}, "output": {"directory": "out"}}
    if scheduler is not None:
        raw["scheduler"] = scheduler
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_profile_values_are_overridden_by_the_config_then_the_cli() -> None:
    sc = resolve_settings({"account": "m9", "qos": None}, "perlmutter-cpu", None)
    assert (sc.account, sc.qos, sc.constraint) == ("m9", None, "cpu")
    with pytest.raises(InputError, match=r"scheduler\.qos: is not used by PBS"):
        resolve_settings({}, "perlmutter-cpu", "pbs")
    with pytest.raises(InputError, match="did you mean 'polaris'"):
        resolve_settings({}, "polaris2", None)


def test_profile_may_be_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("scheduler: {scheduler: slurm, walltime: '02:00:00', partition: big}\n")
    assert resolve_settings(None, str(path), None).partition == "big"
    path.write_text("walltime: 1\n")
    with pytest.raises(InputError, match="must hold one mapping"):
        resolve_settings(None, str(path), None)


def test_profile_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("scheduler:\n  walltime: '02:00:00'\n  partition: big\n  partition: small\n")
    with pytest.raises(InputError) as info:
        resolve_settings(None, str(path), None)
    assert str(info.value) == (
        f"--profile {path}: scheduler.partition: given twice (lines 3 and 4); keep one"
    )


def test_dry_run_prints_and_writes_but_submits_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"walltime": "00:10:00", "account": "m1"})
    result = CliRunner().invoke(submit, [str(cfg), "--scheduler", "slurm", "--dry-run"])
    assert result.exit_code == 0, result.output
    script = tmp_path / "out" / "jobs" / "mpi.sh"
    assert script.read_text().rstrip("\n") in result.output
    assert f"hetmpi run {cfg} --output {tmp_path / 'out'}" in script.read_text()
    assert "nothing submitted" in result.output
    assert not (tmp_path / "out" / "jobs" / "submitted.json").exists()


def test_bad_settings_exit_2_and_write_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"walltime": "10:00", "acount": "m1"})
    result = CliRunner().invoke(submit, [str(cfg), "--scheduler", "pbs", "--dry-run"])
    assert result.exit_code == 2
    assert "scheduler.walltime: must be HH:MM:SS" in result.output
    assert "did you mean 'account'?" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_submit_needs_a_config_or_retry(tmp_path: Path) -> None:
    result = CliRunner().invoke(submit, ["--scheduler", "slurm"])
    assert result.exit_code == 2 and "give a config file" in result.output


def test_array_mode_plans_then_renders(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"scheduler": "slurm", "walltime": "00:10:00"})
    planned: list[Path] = []

    def plan(_cfg: Any, out_dir: Path) -> int:
        planned.append(out_dir)
        return 5

    prepared = prepare_submission(cfg, scheduler=None, mode="array", plan=plan)
    assert planned == [tmp_path / "out"]
    assert prepared.info["num_shards"] == 5
    assert [s.filename for s in prepared.scripts] == ["array.sh", "combine.sh"]
    assert "#SBATCH --array=0-4\n" in prepared.scripts[0].text


def test_array_limit_is_checked_before_planning(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"path": "d.h5"},
                "sharding": {"num_shards": 2000},
                "scheduler": {"scheduler": "slurm", "walltime": "00:10:00"},
            }
        )
    )

    def plan(_cfg: Any, _out: Path) -> int:
        raise AssertionError("plan must not run")

    with pytest.raises(InputError, match="MaxArraySize"):
        prepare_submission(cfg, scheduler=None, mode="array", plan=plan)


def test_sweep_mode_writes_one_checked_config_per_entry(tmp_path: Path) -> None:
    sweep = [
        {"name": "q0", "overrides": {"data": {"q_index": 0}}},
        {"name": "q3", "overrides": {"data": {"q_index": 3}}},
    ]
    cfg = write_config(tmp_path, {"scheduler": "pbs", "walltime": "00:10:00", "sweep": sweep})
    prepared = prepare_submission(cfg, scheduler=None, mode="sweep")
    deliver(prepared, dry_run=True, echo=lambda _line: None)
    jobs = tmp_path / "out" / "jobs"
    q3 = yaml.safe_load((jobs / "sweep" / "q3.yaml").read_text())
    assert q3["data"]["q_index"] == 3
    assert q3["output"]["directory"] == str(tmp_path / "out" / "sweep" / "q3")
    assert "scheduler" not in q3
    text = (jobs / "sweep.sh").read_text()
    assert "#PBS -J 0-1\n" in text and str(jobs / "sweep" / "q0.yaml") in text


def test_sweep_overrides_are_checked_like_the_config(tmp_path: Path) -> None:
    sweep = [{"name": "bad", "overrides": {"data": {"q_indx": 1}}}]
    cfg = write_config(tmp_path, {"scheduler": "slurm", "walltime": "00:10:00", "sweep": sweep})
    with pytest.raises(InputError, match=r"^scheduler.sweep\[0\] \(bad\): data.q_indx"):
        prepare_submission(cfg, scheduler=None, mode="sweep")
    cfg = write_config(tmp_path, {"scheduler": "slurm", "walltime": "00:10:00"})
    with pytest.raises(InputError, match="mode sweep needs a list"):
        prepare_submission(cfg, scheduler=None, mode="sweep")


class FakeScheduler:
    """Answers sbatch/qsub/squeue/qstat argument lists like the real commands (no shell)."""

    def __init__(self, squeue_out: str = "", qstat_out: str = "") -> None:
        self.calls: list[list[str]] = []
        self.next_id = 100
        self.squeue_out, self.qstat_out = squeue_out, qstat_out

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert isinstance(args, list) and "shell" not in kwargs
        self.calls.append(args)
        out = ""
        if args[0] == "sbatch":
            self.next_id += 1
            out = f"{self.next_id}\n"
        elif args[0] == "qsub":
            self.next_id += 1
            out = f"{self.next_id}[].pbs01\n"
        elif args[0] == "squeue":
            out = self.squeue_out
        elif args[0] == "qstat":
            out = self.qstat_out
        return subprocess.CompletedProcess(args, 0, out, "")


def submitted_array(tmp_path: Path, scheduler: str, runner: FakeScheduler) -> Path:
    cfg = write_config(tmp_path, {"scheduler": scheduler, "walltime": "00:10:00"})
    prepared = prepare_submission(cfg, scheduler=None, mode="array", plan=lambda _c, _o: 4)
    lines: list[str] = []
    deliver(prepared, dry_run=False, runner=runner, echo=lines.append)
    assert lines[0].startswith("submitted array job 101")
    assert lines[0].endswith(" (array.sh, tasks 0-3)")
    return prepared.out_dir


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_submission_chains_combine_after_the_array(tmp_path: Path, scheduler: str) -> None:
    runner = FakeScheduler()
    out_dir = submitted_array(tmp_path, scheduler, runner)
    jobs = out_dir / "jobs"
    if scheduler == "slurm":
        assert runner.calls == [
            ["sbatch", "--parsable", str(jobs / "array.sh")],
            ["sbatch", "--parsable", "--dependency=afterok:101", str(jobs / "combine.sh")],
        ]
    else:
        assert runner.calls[1] == [
            "qsub", "-W", "depend=afterok:101[].pbs01", str(jobs / "combine.sh")
        ]  # fmt: skip
    record = read_record(jobs)
    assert [j["role"] for j in record[0]["jobs"]] == ["array", "combine"]
    assert record[0]["num_shards"] == 4 and record[0]["mode"] == "array"


def test_retry_resubmits_only_unfinished_shards(tmp_path: Path) -> None:
    runner = FakeScheduler()
    out_dir = submitted_array(tmp_path, "slurm", runner)
    shards = {0: "done", 1: "failed", 2: "done", 3: "missing"}
    prepared = prepare_retry(out_dir, shard_status=lambda _o, n: shards)
    assert prepared is not None
    assert [s.filename for s in prepared.scripts] == ["array-retry1.sh", "combine-retry1.sh"]
    assert "#SBATCH --array=1,3\n" in prepared.scripts[0].text
    deliver(prepared, dry_run=False, runner=runner, echo=lambda _line: None)
    assert runner.calls[-1][-2:] == [
        "--dependency=afterok:103",
        str(out_dir / "jobs" / "combine-retry1.sh"),
    ]
    second = prepare_retry(out_dir, shard_status=lambda _o, n: shards)
    assert second is not None and second.scripts[0].filename == "array-retry2.sh"
    assert (
        prepare_retry(out_dir, shard_status=lambda _o, n: dict.fromkeys(range(n), "done")) is None
    )


def test_retry_without_an_array_submission_is_an_input_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(submit, ["--retry-failed", str(tmp_path)])
    assert result.exit_code == 2 and "records no array submission" in result.output


def test_status_reports_jobs_and_shards(tmp_path: Path) -> None:
    runner = FakeScheduler(squeue_out="101|101_2|RUNNING\n101|101_3|PENDING\n101|101_1|PENDING\n")
    out_dir = submitted_array(tmp_path, "slurm", runner)
    shards = {0: "done", 1: "failed", 2: "missing", 3: "missing"}
    lines = status_report(out_dir, runner=runner, shard_status=lambda _o, n: shards)
    text = "\n".join(lines)
    assert "101 array    PENDING 2, RUNNING" in text
    assert "102 combine  not listed by the scheduler" in text
    assert "shards: 1 done, 1 failed, 2 missing (of 4)" in text
    assert "  failed: 1\n  missing: 2-3" in text
    assert lines[-1] == "posterior: not written yet"


def test_status_command_without_submissions(tmp_path: Path) -> None:
    result = CliRunner().invoke(status, [str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no submissions recorded" in result.output
    assert "shards: 0 result files" in result.output


def test_status_parses_qstat_tables() -> None:
    table = textwrap.dedent(
        """\
        Job id            Name             User              Time Use S Queue
        ----------------  ---------------- ----------------  -------- - -----
        7[].pbs01         hetmpi           me                       0 B debug
        8.pbs01           hetmpi-combine   me                       0 H debug
        """
    )
    states = query_states(
        "pbs", ["7[].pbs01", "8.pbs01", "9.pbs01"], FakeScheduler(qstat_out=table)
    )
    assert states == {"7[].pbs01": {"ARRAY_RUNNING": 1}, "8.pbs01": {"HELD": 1}, "9.pbs01": {}}


def test_submit_commands_and_job_ids() -> None:
    assert submit_command("slurm", Path("a b.sh"), None) == ["sbatch", "--parsable", "a b.sh"]
    assert parse_job_id("slurm", "123;cluster\n") == "123"
    assert parse_job_id("pbs", "4567[].polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n").startswith(
        "4567[]"
    )
    with pytest.raises(Exception, match="cannot read a job id"):
        parse_job_id("slurm", "Submitted batch job; rm -rf")


# ---------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(
        REPO / "hetmpi", source / "hetmpi", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(root), str(source)], check=True)
    (wheel,) = root.glob("hetmpi-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True)  # fmt: skip
    return wheel


def test_wheel_ships_templates_and_profiles(installed_wheel: Path) -> None:
    names = zipfile.ZipFile(installed_wheel).namelist()
    assert {"hetmpi/templates/slurm.sh.j2", "hetmpi/templates/pbs.sh.j2"} <= set(names)
    assert {f"hetmpi/scheduler/profiles/{n}.yaml" for n in profile_names()} <= set(names)


def test_installed_wheel_renders(installed_wheel: Path, tmp_path: Path) -> None:
    site = installed_wheel.parent / "site"
    code = textwrap.dedent(
        f"""\
        import sys
        sys.path.insert(0, {str(site)!r})
        from pathlib import Path
        import hetmpi
        assert hetmpi.__file__.startswith({str(site)!r}), hetmpi.__file__
        from hetmpi.scheduler.commands import load_profile
        from hetmpi.scheduler.directives import from_mapping
        from hetmpi.scheduler.render import render_mpi
        sc = from_mapping(load_profile("polaris"))
        print(render_mpi(sc, Path("/c.yaml"), Path("/o")).text)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, text=True, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert "#PBS -l filesystems=home:eagle" in done.stdout


def test_slurm_launcher_mpiexec_renders_mpiexec_with_ranks_per_node() -> None:
    sc = from_mapping({**SLURM, "launcher": "mpiexec", "nodes": 2, "ranks_per_node": 4})
    text = render_mpi(sc, CFG, OUT).text
    assert re.search(r"^mpiexec -n 8 --ppn 4 .*hetmpi run ", text, re.MULTILINE), text
    assert "srun" not in text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({**PBS, "launcher": "srun"}, "scheduler.launcher: srun needs Slurm"),
        ({**SLURM, "launcher": "aprun"}, "scheduler.launcher:"),
    ],
)
def test_bad_launcher_is_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        from_mapping(settings)
