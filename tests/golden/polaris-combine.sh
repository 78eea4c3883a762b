#!/bin/bash -l
#PBS -N hetmpi-combine
#PBS -A MyProject
#PBS -q debug
#PBS -l walltime=00:30:00
#PBS -l select=1:ncpus=8:mpiprocs=1:ompthreads=8:system=polaris
#PBS -l filesystems=home:eagle
#PBS -j oe
#PBS -l place=scatter
# Rendered by `hetmpi submit` (combine job); change the scheduler: section and re-render.
set -eo pipefail
module use /soft/modulefiles
module load conda
set -u

# Threads per rank: cpus_per_rank = 8.
export OMP_NUM_THREADS=8
export MKL_NUM_THREADS=8
export OPENBLAS_NUM_THREADS=8
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }--xla_cpu_multi_thread_eigen=true"
export XLA_PYTHON_CLIENT_PREALLOCATE=false

hetmpi combine /scratch/user/run/out
