#!/usr/bin/env bash
# Stop the cluster started by cluster-up.sh: cancel jobs, stop slurmctld/slurmd (by pid file),
# and munged if cluster-up.sh started it. Safe to run when nothing is running.
set -uo pipefail
BASE=${SLURM_TESTBED_DIR:-/tmp/forgather-slurm}
export SLURM_CONF=$BASE/etc/slurm.conf

alive() { # pidfile expected-comm
  [ -s "$1" ] || return 1
  local p; p=$(cat "$1")
  [ -d "/proc/$p" ] && [ "$(cat /proc/$p/comm 2>/dev/null)" = "$2" ] \
    && ! grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null   # zombies count as gone
}

if [ -f "$SLURM_CONF" ] && alive "$BASE/run/slurmctld.pid" slurmctld; then
  ids=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
  if [ -n "$ids" ]; then
    scancel $ids 2>/dev/null || true
    for _ in $(seq 30); do [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  timeout 10 scontrol shutdown >/dev/null 2>&1 || true
fi

# wait for the daemons, then TERM / KILL whatever is left (only pids from our pid files)
for f in "$BASE"/run/slurmctld.pid "$BASE"/run/slurmd-*.pid; do
  [ -e "$f" ] || continue
  comm=slurmd; case "$f" in *slurmctld.pid) comm=slurmctld;; esac
  for _ in $(seq 20); do alive "$f" "$comm" || break; sleep 0.5; done
  if alive "$f" "$comm"; then kill -TERM "$(cat "$f")"; sleep 2; fi
  if alive "$f" "$comm"; then kill -KILL "$(cat "$f")"; fi
  rm -f "$f"
done

if [ -e "$BASE/run/munged.ours" ]; then
  if alive /run/munge/munged.pid munged; then
    kill -TERM "$(cat /run/munge/munged.pid)"
    for _ in $(seq 20); do alive /run/munge/munged.pid munged || break; sleep 0.25; done
  fi
  rm -f "$BASE/run/munged.ours"
fi
echo "cluster-down: done"
