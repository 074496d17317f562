//! Mask expansion against its physical limit, the raw ChaCha20 keystream, in one run.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tessera_secagg::crypto::{MaskSeed, add_mask_stream, raw_keystream};

const COORDINATES: usize = 1_000_000;

fn keystream_vs_mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("one neighbour, 10^6 coordinates, one thread");
    group.throughput(Throughput::Bytes((COORDINATES * 4) as u64));
    let seed = MaskSeed::from_bytes([7; 32]);
    let mut bytes = vec![0u8; COORDINATES * 4];
    group.bench_function("raw ChaCha20 keystream (limit)", |b| {
        b.iter(|| raw_keystream(black_box(&mut bytes), &seed))
    });
    let mut acc = vec![0u32; COORDINATES];
    group.bench_function("mask stream added into the vector", |b| {
        b.iter(|| add_mask_stream(black_box(&mut acc), &seed))
    });
    group.finish();
}

criterion_group!(benches, keystream_vs_mask);
criterion_main!(benches);
