#!/bin/bash
#SBATCH --job-name=hetmpi
#SBATCH --account=m0000
#SBATCH --qos=debug
#SBATCH --constraint=cpu
#SBATCH --time=00:30:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --array=0-7
#SBATCH --output=%x-%A_%a.out
# Rendered by `hetmpi submit` (array job); change the scheduler: section and re-render.
set -eo pipefail
module load python
set -u

# Threads per rank: cpus_per_rank = 8.
export OMP_NUM_THREADS=8
export MKL_NUM_THREADS=8
export OPENBLAS_NUM_THREADS=8
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }--xla_cpu_multi_thread_eigen=true"

# PBS Pro sets PBS_ARRAY_INDEX, Torque PBS_ARRAYID, Slurm (and its qsub) SLURM_ARRAY_TASK_ID.
TASK_ID="${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-}}}"
case "${TASK_ID}" in
    '' | *[!0-9]*)
        echo "hetmpi: not an array task: none of PBS_ARRAY_INDEX, PBS_ARRAYID, SLURM_ARRAY_TASK_ID holds an index (got '${TASK_ID}')" >&2
        exit 2
        ;;
esac
INDEX="${TASK_ID}"
hetmpi run-shard /scratch/user/run/out --index "${INDEX}"
