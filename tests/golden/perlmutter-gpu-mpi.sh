#!/bin/bash
#SBATCH --job-name=hetmpi
#SBATCH --account=m0000
#SBATCH --qos=debug
#SBATCH --constraint=gpu
#SBATCH --time=00:30:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --gpus-per-node=4
#SBATCH --output=%x-%j.out
# Rendered by `hetmpi submit` (mpi job); change the scheduler: section and re-render.
set -eo pipefail
module load python
set -u

# Threads per rank: cpus_per_rank = 32.
export OMP_NUM_THREADS=32
export MKL_NUM_THREADS=32
export OPENBLAS_NUM_THREADS=32
export XLA_PYTHON_CLIENT_PREALLOCATE=false

# One GPU per rank: the rank's local index on its node picks the device. The MPI launcher's
# own variable comes first: under mpiexec in a Slurm job every rank inherits SLURM_LOCALID=0.
HETMPI_GPU_BIND='local_rank="${PMI_LOCAL_RANK:-${PALS_LOCAL_RANKID:-${MPI_LOCALRANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-}}}}}"
if [ -z "${local_rank}" ]; then
    echo "hetmpi: cannot tell the local rank (PMI_LOCAL_RANK, PALS_LOCAL_RANKID, MPI_LOCALRANKID, OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID unset)" >&2
    exit 2
fi
export CUDA_VISIBLE_DEVICES=$((local_rank % 4))
exec "$@"'

srun --ntasks=4 --ntasks-per-node=4 --cpus-per-task=32 --cpu-bind=cores bash -c "${HETMPI_GPU_BIND}" hetmpi-gpu-bind hetmpi run /scratch/user/run/cfg.yaml --output /scratch/user/run/out
