#!/usr/bin/env bash
# Tessera's SecAgg/SecAgg+ against Flower's, same (n, k, m, dropout), one machine, one
# thread each: Tessera's `cargo bench -p tessera-secagg --bench rounds` (with
# RAYON_NUM_THREADS=1) and Flower's own client stages and server unmasking driven in
# process by scripts/bench_flower.py (in a virtualenv with the pinned `flwr` package).
# Prints a Markdown table with the ratios, the date and the CPU.
#
#   bash scripts/bench-flower.sh
#   TESSERA_BENCH_CONFIGS="secagg+:100:1000000:0.1" bash scripts/bench-flower.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FLWR_VERSION=1.42.0
venv="${TESSERA_FLOWER_VENV:-target/flower-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || {
        echo "bench-flower: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
fi
"$venv/bin/pip" install -q "flwr==$FLWR_VERSION"
bash scripts/setup-libtorch.sh > /dev/null
configs="${TESSERA_BENCH_CONFIGS:-secagg:10:100000:0,secagg:10:1000000:0,secagg+:100:100000:0.1,secagg+:100:1000000:0.1,secagg+:500:100000:0.1}"

echo "Tessera (cargo bench, one thread)…" >&2
tessera="$(RAYON_NUM_THREADS=1 TESSERA_BENCH_CONFIGS="$configs" TESSERA_BENCH_JSON=1 \
    cargo bench -q --locked -p tessera-secagg --bench rounds 2> /dev/null | grep '^{')"
# Flower gets Tessera's k (its graph needs an odd number of shares, so k may be one more).
specs="$(python3 -c '
import json, sys
for line in sys.stdin:
    j = json.loads(line)
    print("%d:%d:%d:%s" % (j["n"], j["k"], j["m"], j["dropout"]))' <<< "$tessera")"
echo "Flower $FLWR_VERSION (in process, one thread)…" >&2
# shellcheck disable=SC2086
flower="$(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$venv/bin/python" scripts/bench_flower.py $specs)"

python3 - "$tessera" "$flower" "$FLWR_VERSION" << 'EOF'
import json, platform, subprocess, sys, datetime
tessera = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
flower = [json.loads(l) for l in sys.argv[2].splitlines() if l.strip()]
cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print(f"{datetime.date.today()}, {cpu}, one thread each; Flower {sys.argv[3]}")
print()
print("| protocol | n | m | dropout | k (Tessera / Flower) | site masking: Tessera | Flower | Flower ÷ Tessera | server unmasking: Tessera | Flower | Flower ÷ Tessera |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for t, f in zip(tessera, flower):
    print(
        f"| {t['protocol']} | {t['n']} | {t['m']:.0e} | {t['dropout']:.0%} | {t['k']} / {f['k']} "
        f"| {t['site_masking_ms']:.1f} ms | {f['site_masking_ms']:.1f} ms | {f['site_masking_ms'] / t['site_masking_ms']:.1f}× "
        f"| {t['unmasking_ms']:.1f} ms | {f['unmasking_ms']:.1f} ms | {f['unmasking_ms'] / t['unmasking_ms']:.1f}× |"
    )
EOF
