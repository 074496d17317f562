#!/usr/bin/env bash
# The test command of the README and of CI: libtorch set-up (a no-op when present),
# formatting, lints, then every test, closing with the total over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
# Debian packages some tests need: iproute2's `ip` (the network-namespace test) and
# tshark with dumpcap (the wire audit test, crates/audit/tests/wire.rs).
need=()
command -v ip > /dev/null 2>&1 || need+=(iproute2)
command -v tshark > /dev/null 2>&1 && command -v dumpcap > /dev/null 2>&1 || need+=(tshark)
# shellcheck source=scripts/debian-packages.sh
. scripts/debian-packages.sh
install_debian_packages "${need[@]}" || true
# Disk is the scarce resource on CI machines (a run once failed with ENOSPC): no
# incremental caches, line tables only (Cargo.toml), and every temporary folder the
# tests make lives under target/test-tmp, emptied before and after the run.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
tmp_root="$PWD/target/test-tmp"
rm -rf "$tmp_root"
mkdir -p "$tmp_root"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets must compile (running them needs nightly and cargo-fuzz: see README);
# `check` proves that without the disk of a second full build.
cargo check --manifest-path fuzz/Cargo.toml --locked --quiet
log="$tmp_root/test.log"
trap 'rm -rf "$tmp_root"' EXIT
TMPDIR="$tmp_root" cargo test --workspace --locked 2>&1 | tee "$log"
awk '/^test result:/ { p += $4; f += $6 } END { printf "all crates: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log"
# Sharded reproduction on a one-node Slurm cluster it starts and stops itself.
bash scripts/slurm-test.sh
# Pinned CPU kernels give byte-identical results natively and on an emulated AVX2 CPU.
bash scripts/isa-check.sh
