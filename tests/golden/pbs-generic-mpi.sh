#!/bin/bash -l
#PBS -N hetmpi
#PBS -q workq
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=4:mpiprocs=4:ompthreads=1:mem=8gb
#PBS -j oe
# Rendered by `hetmpi submit` (mpi job); change the scheduler: section and re-render.
set -eo pipefail
set -u

# Threads per rank: cpus_per_rank = 1.
export OMP_NUM_THREADS=1
export MKL_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }--xla_cpu_multi_thread_eigen=false"

mpiexec -n 4 --ppn 4 hetmpi run /scratch/user/run/cfg.yaml --output /scratch/user/run/out
