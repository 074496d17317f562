//! X25519 agreements as a site computes them: one secret with k peers' keys.
//!
//! `cargo bench -p tessera-secagg --bench agreement` prints the median time per
//! agreement for 48 peers (a SecAgg+ site's neighbours at 10,000 sites, rounded up to
//! whole batches of eight) through `x25519_many` (eight ladders at once on CPUs with
//! AVX-512 IFMA), one by one through AWS-LC with the key built once (what CPUs without
//! IFMA run), and through `curve25519-dalek`'s portable ladder.

mod common;

use std::hint::black_box;
use tessera_secagg::crypto::{x25519, x25519_many};

const PEERS: usize = 48;
const REPEATS: usize = 101;

fn median_per_agreement(f: impl FnMut()) -> f64 {
    common::median_seconds(5, REPEATS, f) / PEERS as f64
}

fn main() {
    let scalar = [0x5a; 32];
    let peers: Vec<[u8; 32]> = (0..PEERS as u8)
        .map(|i| {
            x25519([i.wrapping_mul(29).wrapping_add(1); 32], {
                let mut nine = [0u8; 32];
                nine[0] = 9;
                nine
            })
        })
        .collect();
    let batched = median_per_agreement(|| {
        black_box(x25519_many(scalar, black_box(&peers), true));
    });
    let one_by_one = median_per_agreement(|| {
        black_box(x25519_many(scalar, black_box(&peers), false));
    });
    let dalek = median_per_agreement(|| {
        for u in &peers {
            black_box(x25519(scalar, *black_box(u)));
        }
    });
    let ifma = std::arch::is_x86_feature_detected!("avx512ifma");
    println!("X25519, one secret with {PEERS} peers, median per agreement:");
    println!(
        "  x25519_many ({}): {:7.2} µs",
        if ifma {
            "eight IFMA lanes"
        } else {
            "no IFMA: AWS-LC"
        },
        batched * 1e6
    );
    println!("  AWS-LC one by one:  {:7.2} µs", one_by_one * 1e6);
    println!("  curve25519-dalek:   {:7.2} µs", dalek * 1e6);
    println!("  AWS-LC / x25519_many: {:.2}×", one_by_one / batched);
}
