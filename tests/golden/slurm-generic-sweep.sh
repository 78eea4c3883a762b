#!/bin/bash
#SBATCH --job-name=hetmpi
#SBATCH --time=01:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=1
#SBATCH --mem=8G
#SBATCH --array=0-1
#SBATCH --output=%x-%A_%a.out
# Rendered by `hetmpi submit` (sweep job); change the scheduler: section and re-render.
set -eo pipefail
set -u

# Threads per rank: cpus_per_rank = 1.
export OMP_NUM_THREADS=1
export MKL_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }--xla_cpu_multi_thread_eigen=false"

# PBS Pro sets PBS_ARRAY_INDEX, Torque PBS_ARRAYID, Slurm (and its qsub) SLURM_ARRAY_TASK_ID.
TASK_ID="${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-}}}"
case "${TASK_ID}" in
    '' | *[!0-9]*)
        echo "hetmpi: not an array task: none of PBS_ARRAY_INDEX, PBS_ARRAYID, SLURM_ARRAY_TASK_ID holds an index (got '${TASK_ID}')" >&2
        exit 2
        ;;
esac
INDEX="${TASK_ID}"
# Sweep entries: q0, q1
CONFIGS=(
    /scratch/user/run/out/jobs/sweep/q0.yaml
    /scratch/user/run/out/jobs/sweep/q1.yaml
)
OUTPUTS=(
    /scratch/user/run/out/sweep/q0
    /scratch/user/run/out/sweep/q1
)
srun --ntasks=4 --ntasks-per-node=4 --cpus-per-task=1 --cpu-bind=cores hetmpi run "${CONFIGS[INDEX]}" --output "${OUTPUTS[INDEX]}"
