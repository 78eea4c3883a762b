#!/bin/bash -l
#PBS -N hetmpi
#PBS -q workq
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=1:mpiprocs=1:ompthreads=1:mem=8gb
#PBS -J 0-7
#PBS -j oe
# Rendered by `hetmpi submit` (array job); change the scheduler: section and re-render.
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
hetmpi run-shard /scratch/user/run/out --index "${INDEX}"
