#!/bin/bash -l
#PBS -N hetmpi
#PBS -A MyProject
#PBS -q debug
#PBS -l walltime=00:30:00
#PBS -l select=1:ncpus=8:mpiprocs=1:ompthreads=8:ngpus=1:system=polaris
#PBS -l filesystems=home:eagle
#PBS -J 0-7
#PBS -j oe
#PBS -l place=scatter
# Rendered by `hetmpi submit` (array job); change the scheduler: section and re-render.
set -eo pipefail
module use /soft/modulefiles
module load conda
set -u

# Threads per rank: cpus_per_rank = 8.
export OMP_NUM_THREADS=8
export MKL_NUM_THREADS=8
export OPENBLAS_NUM_THREADS=8
export XLA_PYTHON_CLIENT_PREALLOCATE=false

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
