#!/usr/bin/env bash
# The test command of the README and of CI: libtorch set-up (a no-op when present),
# formatting, lints, then every test, closing with the total over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
awk '/^test result:/ { p += $4; f += $6 } END { printf "all crates: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log"
