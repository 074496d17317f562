//! Statistical checks of the samplers and the private pipeline (fixed seeds; the
//! OpenDP comparison uses OpenDP's own unseeded RNG, with a 1e-6 false-alarm level).

use chacha20::ChaCha20Rng;
use dashu::rational::RBig;
use rand_core::SeedableRng;
use tessera_dp::{
    DiscreteGaussian, DpConfig, Mechanism, PrivateCodec, PrivateCodecSpec, Ratio, RoundShape,
    SiteNoise, Skellam, plan, wrap_bound,
};
use tessera_secagg::{Modulus, PlainVector};

/// χ² critical value at false-alarm probability about 1e-6 (Wilson–Hilferty, z = 4.75).
fn chi2_critical(df: usize) -> f64 {
    let k = df as f64;
    let z = 4.75;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Counts per bin: each integer in [−w, w] and the two tails.
fn histogram(samples: &[i64], w: i64) -> Vec<f64> {
    let mut h = vec![0.0; (2 * w + 3) as usize];
    for &s in samples {
        let i = s.clamp(-w - 1, w + 1) + w + 1;
        h[i as usize] += 1.0;
    }
    h
}

/// Exact bin probabilities of N_Z(0, σ²) for the same bins.
fn discrete_gaussian_bins(sigma: f64, w: i64) -> Vec<f64> {
    let reach = (40.0 * sigma) as i64 + 40;
    let weight = |k: i64| (-(k as f64).powi(2) / (2.0 * sigma * sigma)).exp();
    let total: f64 = (-reach..=reach).map(weight).sum();
    let mut bins = vec![0.0; (2 * w + 3) as usize];
    for k in -reach..=reach {
        let i = k.clamp(-w - 1, w + 1) + w + 1;
        bins[i as usize] += weight(k) / total;
    }
    bins
}

fn goodness_of_fit(counts: &[f64], probs: &[f64]) -> (f64, usize) {
    let n: f64 = counts.iter().sum();
    let mut stat = 0.0;
    let mut df = 0;
    for (&c, &p) in counts.iter().zip(probs) {
        let e = n * p;
        if e >= 5.0 {
            stat += (c - e).powi(2) / e;
            df += 1;
        }
    }
    (stat, df - 1)
}

fn ours(sigma: Ratio, count: usize, seed: u8) -> Vec<i64> {
    let g = DiscreteGaussian::new(sigma);
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    (0..count).map(|_| g.sample(&mut rng)).collect()
}

#[test]
fn discrete_gaussian_matches_its_probability_mass_function() {
    for (num, den) in [(1u64, 2u64), (3, 2), (7, 3), (20, 1), (1000, 7)] {
        let sigma = Ratio::new(num, den).unwrap();
        let s = sigma.to_f64();
        let w = (3.0 * s).ceil() as i64;
        let samples = ours(sigma, 200_000, num as u8);
        let (stat, df) = goodness_of_fit(&histogram(&samples, w), &discrete_gaussian_bins(s, w));
        assert!(
            stat < chi2_critical(df),
            "σ = {num}/{den}: χ² {stat:.1}, df {df}"
        );
        let var = samples.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / samples.len() as f64;
        if s >= 1.0 {
            // The variance of N_Z(0, σ²) is within e^(−2π²σ²)-ish of σ² for σ ≥ 1.
            assert!((var / (s * s) - 1.0).abs() < 0.02, "σ {s}: variance {var}");
        }
    }
}

#[test]
fn the_fit_test_has_power() {
    // 1.5 versus 1.6 must be told apart with this many samples.
    let samples = ours(Ratio::new(3, 2).unwrap(), 200_000, 1);
    let (stat, df) = goodness_of_fit(&histogram(&samples, 5), &discrete_gaussian_bins(1.6, 5));
    assert!(stat > chi2_critical(df), "χ² {stat:.1}");
}

#[test]
fn discrete_gaussian_agrees_with_opendp() {
    for (num, den) in [(3u64, 2u64), (7, 3), (20, 1)] {
        let sigma = Ratio::new(num, den).unwrap();
        let w = (3.0 * sigma.to_f64()).ceil() as i64;
        let count = 60_000;
        let reference: Vec<i64> = (0..count)
            .map(|_| {
                let x = opendp::traits::samplers::sample_discrete_gaussian(RBig::from_parts(
                    num.into(),
                    den.into(),
                ))
                .unwrap();
                i64::try_from(x).unwrap()
            })
            .collect();
        let a = histogram(&ours(sigma, count, 9), w);
        let b = histogram(&reference, w);
        // Two-sample χ² test of homogeneity for equal sample sizes.
        let mut stat = 0.0;
        let mut df = 0;
        for (x, y) in a.iter().zip(&b) {
            if x + y >= 10.0 {
                stat += (x - y).powi(2) / (x + y);
                df += 1;
            }
        }
        assert!(stat < chi2_critical(df - 1), "σ {num}/{den}: χ² {stat:.1}");
    }
}

#[test]
fn skellam_has_variance_two_mu() {
    let s = Skellam::new(50.0).unwrap();
    let mut rng = ChaCha20Rng::from_seed([2; 32]);
    let n = 200_000;
    let xs: Vec<i64> = (0..n).map(|_| s.sample(&mut rng)).collect();
    let mean = xs.iter().sum::<i64>() as f64 / n as f64;
    let var = xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n as f64;
    assert!(mean.abs() < 5.0 * (100.0 / n as f64).sqrt(), "mean {mean}");
    assert!((var / 100.0 - 1.0).abs() < 0.02, "variance {var}");
}

fn config(mechanism: Mechanism) -> DpConfig {
    DpConfig {
        mechanism,
        epsilon: 3.0,
        delta: 1e-5,
        rounds: 10,
        l2_clip: 1.0,
        ..Default::default()
    }
}

fn codec_for(mechanism: Mechanism, shape: RoundShape, seed: u8) -> (PrivateCodec, f64) {
    let p = plan(&config(mechanism), shape).unwrap();
    let codec = PrivateCodec::new(PrivateCodecSpec {
        bits: shape.bits,
        l2_clip: 1.0,
        gamma: p.gamma,
        dim: shape.dim,
        max_sites: shape.sites,
        max_weight: 1,
        rotation_seed: [seed; 32],
        site_noise: p.site_noise,
        unit: Default::default(),
    })
    .unwrap();
    (codec, p.noise_std)
}

fn aggregate(codec: &PrivateCodec, updates: &[Vec<f32>], rng: &mut ChaCha20Rng) -> Vec<f32> {
    let modulus = Modulus::new(codec.spec().bits).unwrap();
    let mut sum = PlainVector::zeros(modulus, codec.encoded_len());
    for u in updates {
        sum.add_assign(&codec.encode(u, 1, rng).unwrap());
    }
    // Every weight is 1 = max_weight, so the decoded mean is the sum / n.
    let n = updates.len() as f32;
    codec
        .decode(&sum)
        .unwrap()
        .mean
        .iter()
        .map(|m| m * n)
        .collect()
}

#[test]
fn aggregate_noise_has_the_planned_variance() {
    for mechanism in [Mechanism::Ddg, Mechanism::Skellam] {
        let shape = RoundShape {
            sites: 5,
            guaranteed: 5,
            bits: 24,
            dim: 1000,
        };
        let (codec, noise_std) = codec_for(mechanism, shape, 3);
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let zeros = vec![vec![0f32; 1000]; 5];
        let mut squares = 0.0;
        let mut count = 0.0;
        for _ in 0..20 {
            for v in aggregate(&codec, &zeros, &mut rng) {
                squares += f64::from(v).powi(2);
                count += 1.0;
            }
        }
        let var = squares / count;
        let want = noise_std * noise_std;
        // 20 000 draws: the sample variance has a relative sd of about 1%.
        assert!(
            (var / want - 1.0).abs() < 0.05,
            "{mechanism:?}: {var} vs {want}"
        );
    }
}

#[test]
fn the_private_pipeline_is_unbiased() {
    let shape = RoundShape {
        sites: 4,
        guaranteed: 3,
        bits: 20,
        dim: 50,
    };
    let (codec, noise_std) = codec_for(Mechanism::Ddg, shape, 5);
    let mut rng = ChaCha20Rng::from_seed([6; 32]);
    let updates: Vec<Vec<f32>> = (0..4)
        .map(|s| {
            (0..50)
                .map(|i| ((i * 7 + s * 13) as f32).sin() * 0.1)
                .collect()
        })
        .collect();
    let truth: Vec<f64> = (0..50)
        .map(|i| updates.iter().map(|u| f64::from(u[i])).sum())
        .collect();
    let trials = 400;
    let mut average = vec![0.0f64; 50];
    for _ in 0..trials {
        for (a, v) in average
            .iter_mut()
            .zip(aggregate(&codec, &updates, &mut rng))
        {
            *a += f64::from(v) / trials as f64;
        }
    }
    // Noise of 4 sites (the plan's σ is for 3), averaged over the trials.
    let sd = noise_std * (4.0f64 / 3.0).sqrt() / (trials as f64).sqrt();
    let mut z_total = 0.0;
    for (a, t) in average.iter().zip(&truth) {
        let z = (a - t) / sd;
        assert!(z.abs() < 5.0, "z = {z}");
        z_total += z;
    }
    // The mean of 50 z-scores has sd 1/√50: no systematic bias.
    assert!((z_total / 50.0).abs() < 5.0 / 50f64.sqrt());
}

#[test]
fn wrap_around_stays_within_its_bound() {
    // Three identical (worst-case aligned) updates with noise, read in a 32-bit ring so
    // that the true sum is visible; count how often it would have wrapped in 12 bits.
    let sigma = Ratio::new(300, 1).unwrap();
    let dim = 4096;
    let gamma = 1.0 / 2000.0;
    let codec = PrivateCodec::new(PrivateCodecSpec {
        bits: 32,
        l2_clip: 1.0,
        gamma,
        dim,
        max_sites: 3,
        max_weight: 1,
        rotation_seed: [8; 32],
        site_noise: SiteNoise::DiscreteGaussian { sigma },
        unit: Default::default(),
    })
    .unwrap();
    let update: Vec<f32> = (0..dim)
        .map(|i| if i % 3 == 0 { 0.027 } else { 0.0 })
        .collect();
    let mut rng = ChaCha20Rng::from_seed([10; 32]);
    let modulus = Modulus::new(32).unwrap();
    let (mut wrapped, mut total) = (0u64, 0u64);
    for _ in 0..10 {
        let mut sum = PlainVector::zeros(modulus, codec.encoded_len());
        for _ in 0..3 {
            sum.add_assign(&codec.encode(&update, 1, &mut rng).unwrap());
        }
        for &w in &sum.as_slice()[..dim] {
            total += 1;
            wrapped += u64::from((w as i32).unsigned_abs() >= 1 << 11);
        }
    }
    let bound = wrap_bound(3, 1.0 / gamma, dim, 300.0 * 300.0, 12);
    let rate = wrapped as f64 / total as f64;
    assert!(
        bound > 1e-3 && bound < 0.5,
        "the set-up should make wraps observable: {bound}"
    );
    assert!(wrapped > 0, "no wraps observed; the check would be vacuous");
    // Allow 5 binomial standard deviations above the bound.
    let slack = 5.0 * (bound / total as f64).sqrt();
    assert!(rate <= bound + slack, "rate {rate} above bound {bound}");
}
