//! Site pipeline for 10^6 coordinates (rotate, clip, round, noise, encode) with the exact
//! discrete Gaussian, the patient unit's pipeline (16 sampled patients clipped one by
//! one, summed, rotated, rounded, noised), sampler throughput (ours versus OpenDP's, in the same run), and the
//! PLD accountant for 10^4 composed rounds.

use chacha20::ChaCha20Rng;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dashu::rational::RBig;
use rand_core::SeedableRng;
use std::hint::black_box;
use tessera_dp::{
    DiscreteGaussian, DpConfig, Mechanism, PrivacyUnit, PrivateCodec, PrivateCodecSpec, Ratio,
    RoundShape, Unit, plan,
};

const DIM: usize = 1_000_000;

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("site_pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(DIM as u64));
    let shape = RoundShape {
        sites: 10,
        guaranteed: 7,
        bits: 20,
        dim: DIM,
    };
    let update: Vec<f32> = (0..DIM)
        .map(|i| ((i as f32) * 0.001).sin() * 1e-3)
        .collect();
    for mechanism in [Mechanism::Ddg, Mechanism::Skellam] {
        let cfg = DpConfig {
            mechanism,
            epsilon: 5.0,
            delta: 1e-5,
            rounds: 20,
            l2_clip: 1.0,
            ..Default::default()
        };
        let p = plan(&cfg, shape).expect("feasible plan");
        eprintln!(
            "{}: γ = {:.3e}, per-site noise {:.1} grid units, wrap bound {:.1e}",
            mechanism.name(),
            p.gamma,
            p.noise,
            p.wrap_probability
        );
        let codec = PrivateCodec::new(PrivateCodecSpec {
            bits: 20,
            l2_clip: 1.0,
            gamma: p.gamma,
            dim: DIM,
            max_sites: 10,
            max_weight: 1000,
            rotation_seed: [1; 32],
            site_noise: p.site_noise,
            unit: Default::default(),
        })
        .expect("codec");
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        group.bench_function(BenchmarkId::new("encode", mechanism.name()), |b| {
            b.iter(|| black_box(codec.encode(&update, 500, &mut rng).expect("encode")))
        });
    }
    group.finish();
}

/// The patient unit at one site: 16 sampled patients' changes of 10^6 coordinates each.
fn patient_pipeline(c: &mut Criterion) {
    const PATIENTS: usize = 16;
    let mut group = c.benchmark_group("patient_pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(DIM as u64));
    let cfg = DpConfig {
        mechanism: Mechanism::Ddg,
        epsilon: 8.0,
        delta: 1e-5,
        rounds: 20,
        l2_clip: 0.1,
        unit: PrivacyUnit::Patient,
        sampling_rate: 0.5,
        patients: 60,
    };
    let shape = RoundShape {
        sites: 3,
        guaranteed: 2,
        bits: 32,
        dim: DIM,
    };
    let p = plan(&cfg, shape).expect("feasible plan");
    eprintln!(
        "patient unit: γ = {:.3e}, per-site σ {:.1} grid units, wrap bound {:.1e}",
        p.gamma, p.noise, p.wrap_probability
    );
    let codec = PrivateCodec::new(PrivateCodecSpec {
        bits: 32,
        l2_clip: 0.1,
        gamma: p.gamma,
        dim: DIM,
        max_sites: 3,
        max_weight: 1,
        rotation_seed: [1; 32],
        site_noise: p.site_noise,
        unit: Unit::Patient {
            sampling_rate: 0.5,
            denominator: cfg.denominator(),
        },
    })
    .expect("codec");
    let patients: Vec<Vec<f32>> = (0..PATIENTS)
        .map(|k| {
            (0..DIM)
                .map(|i| ((i + 7 * k) as f32 * 0.001).sin() * 1e-3)
                .collect()
        })
        .collect();
    let mut rng = ChaCha20Rng::from_seed([2; 32]);
    group.bench_function(BenchmarkId::new("encode_contributions", PATIENTS), |b| {
        b.iter(|| {
            black_box(
                codec
                    .encode_contributions(&patients, &mut rng)
                    .expect("encode"),
            )
        })
    });
    group.finish();
}

fn samplers(c: &mut Criterion) {
    let mut group = c.benchmark_group("discrete_gaussian");
    const N: usize = 20_000;
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    for (num, den) in [(3u64, 2u64), (300, 1), (100_000, 7)] {
        let label = format!("sigma={:.1}", num as f64 / den as f64);
        let g = DiscreteGaussian::new(Ratio::new(num, den).expect("ratio"));
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        group.bench_function(BenchmarkId::new("tessera", &label), |b| {
            b.iter(|| (0..N).map(|_| g.sample(&mut rng)).sum::<i64>())
        });
        let scale = RBig::from_parts(num.into(), den.into());
        group.bench_function(BenchmarkId::new("opendp", &label), |b| {
            b.iter(|| {
                (0..N)
                    .map(|_| {
                        opendp::traits::samplers::sample_discrete_gaussian(scale.clone())
                            .map(|x| i64::try_from(x).unwrap_or(0))
                            .unwrap_or(0)
                    })
                    .sum::<i64>()
            })
        });
    }
    group.finish();
}

/// The PLD accountant for 10^4 composed rounds of a subsampled Gaussian (z = 1, q = 0.01,
/// δ = 1e-5) and without subsampling (exact Gaussian DP).
fn accountant(c: &mut Criterion) {
    let mut group = c.benchmark_group("pld_10000_rounds");
    group.sample_size(10);
    for q in [0.01, 1.0] {
        group.bench_function(BenchmarkId::from_parameter(q), |b| {
            b.iter(|| {
                tessera_dp::pld::gaussian_epsilon(
                    black_box(1.0),
                    q,
                    10_000,
                    1e-5,
                    tessera_dp::pld::DEFAULT_STEP,
                )
                .expect("ε")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline, patient_pipeline, samplers, accountant);
criterion_main!(benches);
