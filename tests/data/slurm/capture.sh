#!/bin/sh
# How the files of this directory were captured: real Slurm 22.05.8 output (Debian's slurm-wlm) of
# the test cluster, for the parser tests of tests/test_slurm_jobs.py. Run it against a fresh
# 4-node devcluster with no jobs and no reservations:
#   python scripts/devcluster.py up --dir /tmp/ghx && SLURM_CONF=/tmp/ghx/etc/slurm.conf sh capture.sh
# It writes here; it takes about 2 minutes (it waits for PURGE_COMP to end a reservation).
set -eu
out=$(cd "$(dirname "$0")" && pwd)
cd /tmp
v=22.05

squeue --json > "$out/squeue-$v-empty.json"
scontrol show reservation --oneliner > "$out/scontrol-show-reservation-$v-none.txt"

# an active MAINT reservation on gpu-002, an inactive (future) one on gpu-[003-004]
scontrol create reservation ReservationName=gpuhc-q-gpu-002 Nodes=gpu-002 StartTime=now Duration=30 \
    Flags=MAINT,IGNORE_JOBS Users=root
scontrol create reservation ReservationName=future Nodes=gpu-003,gpu-004 StartTime=now+3600 \
    Duration=1-00:00:00 Flags=MAINT Users=root,nobody
# the MAINTENANCE flag shows only some seconds after the reservation is created (~5 s here)
for _ in $(seq 60); do
    [ "$(sinfo -h -N -n gpu-002 -o %T)" = maint ] && break
    sleep 0.5
done
scontrol update NodeName=gpu-002 State=DRAIN Reason="gpuhc: drained in the reservation"
sinfo --json > "$out/sinfo-$v-drain-maint-reserved.json"
scontrol update NodeName=gpu-002 State=RESUME
sbatch --parsable > "$out/sbatch-parsable-$v.txt" -w gpu-002 --exclusive --reservation=gpuhc-q-gpu-002 \
    -J gpuhc-quarantine --comment "gpuhc quarantine of gpu-002" -t 5 --wrap "sleep 8"
ok=$(sbatch --parsable -J ex3 --wrap "exit 3")
sbatch --parsable -J dep -d "afterok:$ok" --deadline=now+1hour -t 10 --comment "a b=c; |x" --nice=5 \
    -o /tmp/o-%j.txt --export=ALL,FOO=bar -D /tmp --wrap "sleep 60" >/dev/null
kill=$(sbatch --parsable -J killed --wrap "sleep 60")
sbatch --parsable -J ordinary -N 4 --wrap "sleep 1" >/dev/null          # pends: gpu-002 is reserved
sbatch --parsable -J "two nodes" -N 2 -w gpu-001,gpu-003 -t 5 --wrap "sleep 20" >/dev/null
sleep 3
scancel "$kill"
sleep 2
squeue --json > "$out/squeue-$v-mixed.json"
scontrol show reservation --oneliner > "$out/scontrol-show-reservation-$v-active-inactive.txt"
scontrol show job --oneliner "$kill" > "$out/scontrol-show-job-$v-cancelled.txt"
scontrol reboot ASAP nextstate=RESUME reason="gpuhc: test" gpu-004 > "$out/scontrol-reboot-$v-no-rebootprogram.txt" 2>&1 || true

# PURGE_COMP: the reservation ends itself once its job is gone, and leaves the node MAINTENANCE
scancel -u root
scontrol delete ReservationName=gpuhc-q-gpu-002
scontrol delete ReservationName=future
scontrol create reservation ReservationName=pc Nodes=gpu-004 StartTime=now Duration=30 \
    Flags=MAINT,IGNORE_JOBS,PURGE_COMP=00:00:05 Users=root
scontrol show reservation --oneliner > "$out/scontrol-show-reservation-$v-purge-comp.txt"
sbatch --parsable --reservation=pc -w gpu-004 --wrap true >/dev/null
for _ in $(seq 120); do
    scontrol show reservation --oneliner | grep -q ReservationName=pc || break
    sleep 1
done
sleep 10
sinfo --json > "$out/sinfo-$v-maint-stale-after-purge-comp.json"
