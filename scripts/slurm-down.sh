#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by scripts/slurm-up.sh: slurmctld and slurmd
# (scontrol shutdown), then munged, each by the process id in its pid file. Packages and
# /etc/slurm/slurm.conf stay, so slurm-up.sh restarts quickly. Safe to run when nothing is up.
set -uo pipefail

log() { echo "slurm-down: $*"; }

# wait_gone PIDFILE: wait (at most 20 s) for the process named in PIDFILE to exit.
wait_gone() {
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 0
    [[ -n "$pid" ]] || return 0
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    log "process $pid ($1) still running after 20 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q 'is UP'; then
    log "scontrol shutdown (slurmctld and slurmd)"
    scontrol shutdown || true
fi
for pidfile in /run/slurmctld.pid /run/slurmd.pid; do
    pid="$(cat "$pidfile" 2>/dev/null)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
    wait_gone "$pidfile"
done

munge_pid=/run/munge/munged.pid
munged="$(cat "$munge_pid" 2>/dev/null)"
if [[ -n "$munged" ]] && kill -0 "$munged" 2>/dev/null; then
    log "stopping munged"
    kill -TERM "$munged"
    wait_gone "$munge_pid"
fi
log "done"
