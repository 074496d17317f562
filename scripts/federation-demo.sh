#!/usr/bin/env bash
# A federation of real processes on 127.0.0.1: a PKI, a coordinator and three sites
# (the synthetic Hong Kong cohorts of datasets.toml) that train the tiny detector for
# 3 rounds over QUIC with mutual TLS and secure aggregation. The coordinator evaluates
# each global model on an external cohort it holds (ct-seg) and exports the final one;
# then every site's signed transcript is audited (tessera audit report).
#
#   bash scripts/federation-demo.sh [FOLDER]      (default: demo/)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-demo}"
bash scripts/setup-libtorch.sh
cargo build --release --locked -p tessera-cli
bin="$PWD/target/release/tessera"
start=$(date +%s)

rm -rf "$work"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done; }
trap cleanup EXIT

sites=(hk-a hk-b hk-c)
"$bin" pki init --dir "$work/pki" > /dev/null
"$bin" pki issue --dir "$work/pki" --coordinator > /dev/null
for i in "${!sites[@]}"; do
    "$bin" pki issue --dir "$work/pki" --site "${sites[$i]}" --id "$i" > /dev/null
done
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cat > "$work/coordinator.toml" << TOML
listen = "127.0.0.1:$port"
pki = "$work/pki"
sites = 3
join_timeout_s = 300
rounds = 3
checkpoint = "$work/coordinator/checkpoint.bin"
output = "$work/coordinator"
model = { kind = "detector", profile = "quick", init_seed = 1 }
training = { local_steps = 20, batch_size = 6, learning_rate = 0.001 }
evaluate = { registry = "$PWD/datasets.toml", cohort = "ct-seg", data_root = "$PWD/data" }
strategy = "fedavg"
protocol = "secagg"
dropout_rate = 0.05
corruption_rate = 0.0
bits = 32
clip = 1.0
max_weight = 100000
training_timeout_s = 600
phase_timeout_s = 60
TOML
for site in "${sites[@]}"; do
    mkdir -p "$work/$site"
    cat > "$work/$site/site.toml" << TOML
coordinator = "127.0.0.1:$port"
pki = "$work/pki"
name = "$site"
transcript = "$work/$site/egress.transcript"
keep_payloads = true
keylog = true
connect_timeout_s = 300
model = { kind = "detector", profile = "quick" }
data = { registry = "$PWD/datasets.toml", cohort = "$site", data_root = "$PWD/data" }
TOML
done

# With dumpcap (Debian's tshark package) and the right to capture, the traffic is
# recorded too, for the wire audit at the end.
capture=""
if command -v dumpcap > /dev/null && command -v tshark > /dev/null; then
    dumpcap -q -i lo -f "udp port $port" -w "$work/capture.pcapng" 2> "$work/dumpcap.log" &
    capture=$!
    sleep 2
    kill -0 "$capture" 2> /dev/null || capture=""
fi
echo "coordinator on 127.0.0.1:$port; sites: ${sites[*]}"
"$bin" coordinator --config "$work/coordinator.toml" > "$work/coordinator.log" 2>&1 &
coordinator=$!
pids+=("$coordinator")
for site in "${sites[@]}"; do
    SSLKEYLOGFILE="$work/$site/tls.keys" "$bin" site --config "$work/$site/site.toml" \
        > "$work/$site/site.log" 2>&1 &
    pids+=("$!")
done
status=0
wait "$coordinator" || status=$?
for p in "${pids[@]:1}"; do wait "$p" || status=$?; done
grep -E "^round|verdict" "$work/coordinator.log" || true
if [ "$status" -ne 0 ]; then
    echo "error: the federation failed (exit $status); see $work/coordinator.log and $work/*/site.log" >&2
    exit 1
fi
# The auditor's check: every transcript against the PKI, the coordinator's receipts and
# the sites' policy (all three run the same one), views compared across sites.
transcripts=()
for site in "${sites[@]}"; do transcripts+=("$work/$site/egress.transcript"); done
"$bin" audit report --pki "$work/pki" --policy "$work/${sites[0]}/site.toml" \
    --receipts "$work/coordinator/checkpoint.receipts.json" --out "$work/audit" "${transcripts[@]}"
# Against the wire: every byte each site sent, decrypted with its own key log, is in
# its transcript.
if [ -n "$capture" ]; then
    kill -INT "$capture"; wait "$capture" || true
    for site in "${sites[@]}"; do
        "$bin" audit wire --pki "$work/pki" --capture "$work/capture.pcapng" \
            --keylog "$work/$site/tls.keys" --transcript "$work/$site/egress.transcript"
    done
else
    echo "(wire audit skipped: dumpcap/tshark missing or not allowed to capture)"
fi
echo
echo "done in $(( $(date +%s) - start )) s (after the build):"
echo "  final model        $work/coordinator/global.safetensors"
echo "  round log (JSON)   $work/coordinator/rounds.jsonl"
echo "  checkpoint         $work/coordinator/checkpoint.bin"
echo "  logs               $work/coordinator.log, $work/<site>/site.log"
echo "  transcripts        $work/<site>/egress.transcript (audited above: $work/audit/audit.md)"
echo "  PKI                $work/pki (the CA key is there too: a demo, not a deployment)"
