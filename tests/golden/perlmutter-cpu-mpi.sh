#!/bin/bash
#SBATCH --job-name=hetmpi
#SBATCH --account=m0000
#SBATCH --qos=debug
#SBATCH --constraint=cpu
#SBATCH --time=00:30:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=8
#SBATCH --output=%x-%j.out
# Rendered by `hetmpi submit` (mpi job); change the scheduler: section and re-render.
set -eo pipefail
module load python
set -u

# Threads per rank: cpus_per_rank = 8.
export OMP_NUM_THREADS=8
export MKL_NUM_THREADS=8
export OPENBLAS_NUM_THREADS=8
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }--xla_cpu_multi_thread_eigen=true"

srun --ntasks=32 --ntasks-per-node=32 --cpus-per-task=8 --cpu-bind=cores hetmpi run /scratch/user/run/cfg.yaml --output /scratch/user/run/out
