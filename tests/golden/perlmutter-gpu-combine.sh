#!/bin/bash
#SBATCH --job-name=hetmpi-combine
#SBATCH --account=m0000
#SBATCH --qos=debug
#SBATCH --constraint=gpu
#SBATCH --time=00:30:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --output=%x-%j.out
# Rendered by `hetmpi submit` (combine job); change the scheduler: section and re-render.
set -eo pipefail
module load python
set -u

# Threads per rank: cpus_per_rank = 32.
export OMP_NUM_THREADS=32
export MKL_NUM_THREADS=32
export OPENBLAS_NUM_THREADS=32
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }--xla_cpu_multi_thread_eigen=true"
export XLA_PYTHON_CLIENT_PREALLOCATE=false

hetmpi combine /scratch/user/run/out
