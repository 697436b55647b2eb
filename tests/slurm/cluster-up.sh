#!/usr/bin/env bash
# Start the throw-away SLURM 22.05 cluster the test suite runs against, on this one machine
# (Debian 12, root, no systemd). Used by .ci/run and by developers; the tests find it
# through $SLURM_CONF (default: $SLURM_TESTBED_DIR/etc/slurm.conf).
#   bash tests/slurm/cluster-up.sh                  # 2 fake nodes n1,n2 (the default; the
#                                                   # tests use it for 1- and 2-node jobs)
#   SLURM_NODES=1 bash tests/slurm/cluster-up.sh    # 1 node named $(hostname -s)
# Afterwards:  export SLURM_CONF=${SLURM_TESTBED_DIR:-/tmp/forgather-slurm}/etc/slurm.conf
# Re-running it tears down the previous instance first (via cluster-down.sh) and wipes job state.
# Only one such cluster can run per machine (slurmctld/slurmd ports 6817/6818).
# Fake node names n1, n2 do not resolve as host names: use 127.0.0.1 as the master address there.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${SLURM_TESTBED_DIR:-/tmp/forgather-slurm}
NODES=${SLURM_NODES:-2}
CPUS=$(nproc)
export SLURM_CONF=$BASE/etc/slurm.conf
t0=$(date +%s)

# 1. packages (only if missing)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

# 2. stop a previous instance (slurm daemons from our pid files; munged only if we started it)
SLURM_TESTBED_DIR=$BASE bash "$HERE/cluster-down.sh" >/dev/null 2>&1 || true

# 3. munge: key + daemon
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key --force
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  mkdir -p "$BASE/run"; touch "$BASE/run/munged.ours"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null

# 4. config + fresh state
rm -rf "$BASE/state" "$BASE/spool" "$BASE/log"
mkdir -p "$BASE/etc" "$BASE/state" "$BASE/spool" "$BASE/log" "$BASE/run"
H=$(hostname -s)
if [ "$NODES" = 1 ]; then
  NAMES=("$H")
  NODELINES="NodeName=$H NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 State=UNKNOWN"
else
  NAMES=(); NODELINES=""
  for i in $(seq 1 "$NODES"); do
    NAMES+=("n$i")
    NODELINES+="NodeName=n$i NodeHostname=$H NodeAddr=127.0.0.1 Port=$((17000+i)) CPUs=$CPUS RealMemory=1000 State=UNKNOWN"$'\n'
  done
fi
for n in "${NAMES[@]}"; do mkdir -p "$BASE/spool/slurmd-$n"; done
cat > "$SLURM_CONF" <<EOF
ClusterName=testbed
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# a pending or requeued job is looked at every few seconds, not after the 60 s default:
# a test's requeued job waited 2 minutes once for the next pass
SchedulerParameters=sched_interval=3,bf_interval=3
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd-%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
InactiveLimit=0
$NODELINES
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# 5. daemons (they daemonize themselves; pid files under $BASE/run)
slurmctld
for n in "${NAMES[@]}"; do slurmd -N "$n"; done

# 6. wait until every node is idle
ok=0
for _ in $(seq 60); do
  st=$(sinfo -h -N -o '%t' 2>/dev/null | sort -u | tr '\n' ' ')
  if [ "$st" = "idle " ]; then ok=1; break; fi
  case "$st" in *down*|*drain*) scontrol update NodeName="$(IFS=,; echo "${NAMES[*]}")" State=RESUME 2>/dev/null || true;; esac
  sleep 0.5
done
if [ $ok != 1 ]; then
  echo "cluster-up: nodes not idle: $(sinfo -N 2>&1)" >&2
  tail -n 20 "$BASE"/log/*.log >&2 || true
  exit 1
fi
timeout 60 srun -N"$NODES" -n"$NODES" true
echo "cluster-up: ready in $(( $(date +%s) - t0 ))s, nodes: ${NAMES[*]}"
echo "export SLURM_CONF=$SLURM_CONF"
