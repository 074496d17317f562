#!/usr/bin/env bash
# The README's main command: libtorch set-up (a no-op when present), a release build,
# then `tessera reproduce` (default: the study, quick profile). Arguments go to
# `tessera reproduce`, e.g. `--profile full` or `dp-epsilon`.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=cpu
for arg in "$@"; do
    if [ "$arg" = full ] && command -v nvidia-smi > /dev/null 2>&1; then variant=cuda; fi
done
bash scripts/setup-libtorch.sh "$variant"
cargo run --release --locked -p tessera-cli -- reproduce "$@"
