#!/bin/bash
#SBATCH --job-name=hetmpi
#SBATCH --time=01:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=1
#SBATCH --mem=8G
#SBATCH --output=%x-%j.out
# Rendered by `hetmpi submit` (mpi job); change the scheduler: section and re-render.
set -eo pipefail
set -u

# Threads per rank: cpus_per_rank = 1.
export OMP_NUM_THREADS=1
export MKL_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }--xla_cpu_multi_thread_eigen=false"

srun --ntasks=4 --ntasks-per-node=4 --cpus-per-task=1 --cpu-bind=cores hetmpi run /scratch/user/run/cfg.yaml --output /scratch/user/run/out
