#!/usr/bin/env bash
# A one-node Slurm cluster, started and stopped here: munged, slurmctld and slurmd,
# configured under a temporary folder. Runs the smoke experiment once locally and once
# as a job array (`tessera reproduce --slurm --submit`, one task per shard, then the
# report job) and checks that both give the same results.json. Installs slurm-wlm and
# munge from Debian's packages when missing (needs root, as CI has). Fails, saying why,
# when a daemon cannot start: it never passes without having run the array.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() {
    echo "slurm-test: FAILED: $*" >&2
    exit 1
}

need=()
for c in slurmctld slurmd sbatch squeue sinfo; do
    command -v "$c" > /dev/null 2>&1 || need=(slurm-wlm)
done
command -v munged > /dev/null 2>&1 || need+=(munge)
# shellcheck source=scripts/debian-packages.sh
. scripts/debian-packages.sh
install_debian_packages "${need[@]}" || fail "needs ${need[*]}"
[ "$(id -u)" = 0 ] || fail "slurmd must start as root to launch jobs; run this as root"

bash scripts/setup-libtorch.sh > /dev/null
cargo build --locked -p tessera-cli --quiet
bin="$PWD/target/debug/tessera"
t="$(mktemp -d "${TMPDIR:-/tmp}/tessera-slurm.XXXXXX")"
host="$(cat /proc/sys/kernel/hostname)"
started=()
cleanup() {
    status=$?
    for pid in "${started[@]}"; do kill "$pid" 2> /dev/null || true; done
    for pid in "${started[@]}"; do wait "$pid" 2> /dev/null || true; done
    if [ "$status" != 0 ]; then
        for log in "$t"/*.log; do
            [ -f "$log" ] && { echo "--- $log (last lines)"; tail -n 15 "$log"; }
        done
    fi
    rm -rf "$t"
}
trap cleanup EXIT

# Munge: a fresh key, its own socket, in the foreground so that we own its pid.
mkdir -p "$t/munge" "$t/state" "$t/spool"
chmod 711 "$t/munge"
head -c 1024 /dev/urandom > "$t/munge/munge.key"
chmod 400 "$t/munge/munge.key"
munged --foreground --force --key-file="$t/munge/munge.key" --socket="$t/munge/munge.sock" \
    --pid-file="$t/munge/munged.pid" --seed-file="$t/munge/munge.seed" \
    > "$t/munged.log" 2>&1 &
started+=($!)

# Free ports for the controller and the node daemon.
ports="$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')"
read -r ctld_port slurmd_port <<< "$ports"
cpus="$(nproc)"
export SLURM_CONF="$t/slurm.conf"
cat > "$SLURM_CONF" << EOF
ClusterName=tessera-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$t/munge/munge.sock
StateSaveLocation=$t/state
SlurmdSpoolDir=$t/spool
SlurmctldPidFile=$t/slurmctld.pid
SlurmdPidFile=$t/slurmd.pid
SlurmctldLogFile=$t/slurmctld.log
SlurmdLogFile=$t/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=tessera-node NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=tessera-node Default=YES MaxTime=INFINITE State=UP
EOF

for _ in $(seq 50); do [ -S "$t/munge/munge.sock" ] && break; sleep 0.1; done
[ -S "$t/munge/munge.sock" ] || fail "munged did not start (see munged.log)"
slurmctld -D -i -f "$SLURM_CONF" > "$t/slurmctld.out.log" 2>&1 &
started+=($!)
slurmd -D -N tessera-node -f "$SLURM_CONF" > "$t/slurmd.out.log" 2>&1 &
started+=($!)
state=""
for _ in $(seq 120); do
    state="$(sinfo -h -n tessera-node -o %T 2> /dev/null || true)"
    [ "$state" = idle ] && break
    sleep 0.5
done
[ "$state" = idle ] || fail "the node did not come up (state '${state:-none}'): Slurm's daemons cannot run here"
echo "slurm-test: one-node cluster up ($cpus CPUs, controller on 127.0.0.1:$ctld_port)"

cp tests/smoke-datasets.toml "$t/datasets.toml"
common=(--registry "$t/datasets.toml" --data "$t/data")
start=$SECONDS
"$bin" reproduce "${common[@]}" --runs "$t/local" --out "$t/local-report" smoke > "$t/local.log" 2>&1 ||
    fail "the local run failed (see local.log)"
echo "slurm-test: local run in $((SECONDS - start)) s"

start=$SECONDS
"$bin" reproduce "${common[@]}" --runs "$t/cluster" --out "$t/cluster-report" smoke \
    --slurm --submit | tee "$t/submit.log"
grep -q "submitted job array" "$t/submit.log" || fail "nothing was submitted"
for _ in $(seq 480); do
    [ -z "$(squeue -h 2> /dev/null)" ] && break
    sleep 0.5
done
[ -z "$(squeue -h)" ] || fail "jobs still queued or running after 240 s: $(squeue -h)"
echo "slurm-test: job array and report job done in $((SECONDS - start)) s"

logs="$t/cluster/smoke-quick/slurm/logs"
shards=$(grep -l "^shard " "$logs"/shard-*.out 2> /dev/null | wc -l)
[ "$shards" -ge 2 ] || fail "expected every array task to report its shard; found $shards (logs in $logs)"
grep -q "missing: none" "$logs/report.out" || fail "the report job did not find every arm: $(cat "$logs/report.out")"
cmp "$t/local/smoke-quick/results.json" "$t/cluster/smoke-quick/results.json" ||
    fail "the cluster's results differ from the local run's"
cmp "$t/local-report/tables/summary.md" "$t/cluster-report/tables/summary.md" ||
    fail "the cluster's report differs from the local run's"
echo "slurm-test: ok: $shards shards on Slurm gave the local run's results.json and tables"
