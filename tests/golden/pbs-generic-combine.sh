#!/bin/bash -l
#PBS -N hetmpi-combine
#PBS -q workq
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=1:mpiprocs=1:ompthreads=1:mem=8gb
#PBS -j oe
# Rendered by `hetmpi submit` (combine job); change the scheduler: section and re-render.
set -eo pipefail
set -u

# Threads per rank: cpus_per_rank = 1.
export OMP_NUM_THREADS=1
export MKL_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }--xla_cpu_multi_thread_eigen=false"

hetmpi combine /scratch/user/run/out
