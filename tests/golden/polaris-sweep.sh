#!/bin/bash -l
#PBS -N hetmpi
#PBS -A MyProject
#PBS -q debug
#PBS -l walltime=00:30:00
#PBS -l select=1:ncpus=32:mpiprocs=4:ompthreads=8:ngpus=4:system=polaris
#PBS -l filesystems=home:eagle
#PBS -J 0-1
#PBS -j oe
#PBS -l place=scatter
# Rendered by `hetmpi submit` (sweep job); change the scheduler: section and re-render.
set -eo pipefail
module use /soft/modulefiles
module load conda
set -u

# Threads per rank: cpus_per_rank = 8.
export OMP_NUM_THREADS=8
export MKL_NUM_THREADS=8
export OPENBLAS_NUM_THREADS=8
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

# PBS Pro sets PBS_ARRAY_INDEX, Torque PBS_ARRAYID, Slurm (and its qsub) SLURM_ARRAY_TASK_ID.
TASK_ID="${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-}}}"
case "${TASK_ID}" in
    '' | *[!0-9]*)
        echo "hetmpi: not an array task: none of PBS_ARRAY_INDEX, PBS_ARRAYID, SLURM_ARRAY_TASK_ID holds an index (got '${TASK_ID}')" >&2
        exit 2
        ;;
esac
INDEX="${TASK_ID}"
# Sweep entries: q0, q1
CONFIGS=(
    /scratch/user/run/out/jobs/sweep/q0.yaml
    /scratch/user/run/out/jobs/sweep/q1.yaml
)
OUTPUTS=(
    /scratch/user/run/out/sweep/q0
    /scratch/user/run/out/sweep/q1
)
mpiexec -n 4 --ppn 4 --depth=8 --cpu-bind depth bash -c "${HETMPI_GPU_BIND}" hetmpi-gpu-bind hetmpi run "${CONFIGS[INDEX]}" --output "${OUTPUTS[INDEX]}"
