#!/usr/bin/env bash
# Install, configure and start a single-node Slurm cluster on this machine (as root).
#
# Debian's slurm-wlm with munge authentication; slurm-wlm-torque adds the qsub/qstat
# wrappers used to exercise the PBS template. Idempotent: re-running with the daemons
# already up only waits for the node to be idle. Exits non-zero if the node is not idle
# within SLURM_UP_TIMEOUT seconds (default 120). Undo with scripts/slurm-down.sh.
set -euo pipefail

timeout_s="${SLURM_UP_TIMEOUT:-120}"
conf=/etc/slurm/slurm.conf

if [[ "$(id -u)" != 0 ]]; then
    echo "slurm-up: must run as root" >&2
    exit 1
fi

log() { echo "slurm-up: $*"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v qsub >/dev/null; then
        return
    fi
    log "installing slurm-wlm slurm-wlm-torque munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm slurm-wlm-torque munge
}

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        mungekey -c -k /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.5
    done
    echo "slurm-up: munged did not come up" >&2
    exit 1
}

write_conf() {
    local host cpus mem_mb real_mem node_line
    host="$(hostname -s)"
    cpus="$(nproc --all)"
    mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
    # Leave headroom: slurmd marks the node invalid if RealMemory exceeds what it finds.
    real_mem=$((mem_mb * 9 / 10))
    node_line="NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN"
    install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat >"$conf" <<EOF
# Written by hetmpi scripts/slurm-up.sh: single-node test cluster.
ClusterName=hetmpi-test
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MaxArraySize=1001
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=300
${node_line}
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
    log "wrote ${conf}"
}

sinfo_state() {
    sinfo --noheader --nodes="$(hostname -s)" --format=%T 2>/dev/null | head -n 1
}

start_daemons() {
    if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
        log "starting slurmctld"
        slurmctld
    fi
    if ! pgrep -F /run/slurmd.pid >/dev/null 2>&1; then
        log "starting slurmd"
        slurmd
    fi
}

wait_idle() {
    local state deadline resumed=0
    deadline=$((SECONDS + timeout_s))
    while ((SECONDS < deadline)); do
        state="$(sinfo_state || true)"
        case "$state" in
            idle | mixed | allocated)
                log "node $(hostname -s) is ${state}"
                return 0
                ;;
            down* | drain* | unk*)
                if ((resumed == 0)) && [[ "$state" != unk* ]]; then
                    scontrol update NodeName="$(hostname -s)" State=RESUME || true
                    resumed=1
                fi
                ;;
        esac
        sleep 1
    done
    echo "slurm-up: node not idle after ${timeout_s}s (state: ${state:-none})" >&2
    sinfo >&2 || true
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    return 1
}

install_packages
start_munge
if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
    write_conf
fi
start_daemons
wait_idle
