#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian/Ubuntu packages, run as root):
# slurmctld + slurmd + munge, one partition "debug" holding this host with all its CPUs.
# Used by CI (.ci/run) before the test suite; tests/launch/test_slurm_cluster.py submits
# real jobs to it through the project's submitit launcher.
#   sudo tools/ci/slurm_local.sh          # start (idempotent: a running cluster is kept)
#   sudo tools/ci/slurm_local.sh stop     # stop the daemons
# State, spool and logs go to $SLURM_LOCAL_DIR (default /tmp/albef-slurm).
set -euo pipefail
STATE=${SLURM_LOCAL_DIR:-/tmp/albef-slurm}

if [ "${1:-start}" = stop ]; then
    for pid_file in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null || true
    done
    exit 0
fi

if sinfo -h -o %t 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    echo "slurm_local: a cluster is already up"; sinfo; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "slurm_local: must run as root (installs packages, starts daemons)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

HOST=$(hostname -s)
# what the node really has (a configured RealMemory above it would drain the node)
MEMORY_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$STATE"/{state,spool,log} /etc/slurm /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    head -c 1024 /dev/urandom > /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
chown munge:munge /run/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=albefci
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# a CI cluster: schedule and clean up quickly
SchedulerParameters=sched_interval=2
KillWait=30
MinJobAge=300
NodeName=$HOST CPUs=$(nproc) RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

/usr/sbin/slurmctld -c
/usr/sbin/slurmd -c
for _ in $(seq 1 30); do
    sinfo -h -o %t 2>/dev/null | grep -q idle && break
    sleep 1
done
sinfo -h -o %t | grep -q idle || { echo "slurm_local: the node did not come up; see $STATE/log" >&2; exit 1; }
sinfo
