#!/usr/bin/env bash
# Do reproductions agree across CPUs? Runs the smoke experiment four times on this
# machine: with tessera's kernel pins (ATen, oneDNN and MKL capped at AVX2) natively and
# on an emulated AVX2-only CPU (glibc's hardware capabilities without AVX-512, MKL
# limited to AVX2), and the same two without the pins (each library at the CPU's best
# level). Prints whether each pair's results.json is byte-identical. On a CPU without
# AVX-512 the "native" runs are AVX2 runs already and both pairs agree trivially.
# Exits non-zero when the pinned pair differs. Run by scripts/test.sh (so by CI).
# Usage: bash scripts/isa-check.sh   (about a minute on 2 cores after the build)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh > /dev/null
cargo build --locked -p tessera-cli --quiet
bin="$PWD/target/debug/tessera"
t="$(mktemp -d "${TMPDIR:-/tmp}/tessera-isa.XXXXXX")"
trap 'rm -rf "$t"' EXIT
grep -q avx512f /proc/cpuinfo && native=avx512 || native=avx2
echo "this CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) (best: $native)"

no_avx512="glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL,-AVX512_VNNI,-AVX512_BF16"
run() { # name, then environment assignments
    local name="$1"
    shift
    env "$@" "$bin" reproduce --registry tests/smoke-datasets.toml --data "$t/data" \
        --runs "$t/runs-$name" --out "$t/report-$name" smoke > "$t/$name.log" 2>&1 ||
        { tail -n 20 "$t/$name.log"; exit 1; }
    grep -o '"ATEN_CPU_CAPABILITY": "[^"]*"\|"ONEDNN_MAX_CPU_ISA": "[^"]*"\|"MKL_CBWR": "[^"]*"' \
        "$t/runs-$name/smoke-quick/manifest.json" | tr '\n' ' ' | sed "s/^/$name: /"
    echo
}
pinned=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2)
unpinned=(ATEN_CPU_CAPABILITY="$native" ONEDNN_MAX_CPU_ISA=ALL MKL_CBWR=AUTO)
emulate_avx2=(GLIBC_TUNABLES="$no_avx512" MKL_ENABLE_INSTRUCTIONS=AVX2)
run pinned-native "${pinned[@]}"
run pinned-avx2 "${pinned[@]}" "${emulate_avx2[@]}"
run unpinned-native "${unpinned[@]}"
run unpinned-avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AUTO "${emulate_avx2[@]}"
same() {
    if cmp -s "$t/runs-$1/smoke-quick/results.json" "$t/runs-$2/smoke-quick/results.json"; then
        echo "$1 = $2: byte-identical results.json"
    else
        echo "$1 ≠ $2: results differ"
        return 1
    fi
}
status=0
same pinned-native pinned-avx2 || status=1
same unpinned-native unpinned-avx2 || true
exit $status
