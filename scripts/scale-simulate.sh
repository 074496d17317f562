#!/usr/bin/env bash
# How SecAgg+ scales with the number of sites: one `tessera simulate` round per n (in
# memory, 10^5 coordinates, 5% dropouts by default), with the planner's degree and
# threshold, wall time, CPU time per site and peak memory (GNU time's maximum RSS).
#
#   bash scripts/scale-simulate.sh                 # n = 100 300 1000 3000 10000
#   SITES="100 1000" DIM=1000000 bash scripts/scale-simulate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SITES="${SITES:-100 300 1000 3000 10000}"
DIM="${DIM:-100000}"
DROPOUT="${DROPOUT:-0.05}"
ROUNDS="${ROUNDS:-1}"
[ -x /usr/bin/time ] || {
    echo "scale-simulate: needs GNU time (/usr/bin/time; Debian package 'time')" >&2
    exit 1
}
bash scripts/setup-libtorch.sh > /dev/null
cargo build --release --locked -q -p tessera-cli
bin=target/release/tessera
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "$(date -u +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
    "m = $DIM, dropout $DROPOUT, $ROUNDS round(s) each"
echo
echo "| n | k | t | contributors | wall time | round time | CPU per site | peak memory |"
echo "|---|---|---|---|---|---|---|---|"
for n in $SITES; do
    /usr/bin/time -f "%e %U %S %M" -o "$out/time" "$bin" simulate --sites "$n" \
        --protocol secagg-plus --dim "$DIM" --dropout "$DROPOUT" --rounds "$ROUNDS" \
        > "$out/log" 2>&1 || {
        echo "scale-simulate: n = $n failed:" >&2
        tail -5 "$out/log" >&2
        exit 1
    }
    read -r wall user sys rss < "$out/time"
    kt="$(grep -o 'degree k = [0-9]*, threshold t = [0-9]*' "$out/log" | grep -o '[0-9]*' | paste -sd' ')"
    read -r k t <<< "${kt:-– –}"
    row="$(grep -E '^ +[0-9]+ \|' "$out/log" | tail -1)"
    contributors="$(cut -d'|' -f2 <<< "$row" | xargs)"
    round_time="$(cut -d'|' -f4 <<< "$row" | xargs)"
    awk -v n="$n" -v k="$k" -v t="$t" -v c="$contributors" -v w="$wall" -v r="$round_time" \
        -v u="$user" -v s="$sys" -v m="$rss" 'BEGIN {
        printf "| %d | %s | %s | %s | %.1f s | %s | %.1f ms | %.2f GiB |\n",
            n, k, t, c, w, r, (u + s) / n * 1000, m / 1048576 }'
done
