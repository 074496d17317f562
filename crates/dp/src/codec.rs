//! The site pipeline that turns an update into a noisy ring vector, and its inverse.
//!
//! Site: rotate (public seed) → clip to L2 norm c → weight by w/W → scale by 1/γ →
//! conditional randomised rounding → add this site's share of integer noise → wrap into
//! Z_{2^b} → append the weight digits. Coordinator: sign-extend the sum, optionally add
//! central noise (the trusted-coordinator baseline), multiply by γ, rotate back, divide
//! by the total weight.
//!
//! **Sensitivity.** Conditional rounding redraws the rounding until the integer vector
//! has squared norm at most ⌊B²⌋ with B = min(c/γ + √m, √((c/γ)² + m/4 +
//! √(2 ln(1/β))·(c/γ + √m/2))), β = e^(−1/2) (Kairouz, Liu, Steinke 2021). Adding or
//! removing one site therefore moves the integer sum by at most Δ₂ = √⌊B²⌋ in L2 and,
//! because the entries are integers, by at most Δ₁ = min(√m·Δ₂, Δ₂²) in L1. Both are
//! checked on the integers, so floating-point error in the rotation cannot break them.
//!
//! Site weights (sample counts) travel exactly in the weight digits and are treated as
//! public: the privacy guarantee covers the update vectors, not the sample counts.

use chacha20::ChaCha20Rng;
use rand_core::{CryptoRng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_secagg::{EncodingError, Modulus, PlainVector, WeightDigits, WeightedMean};

use crate::error::DpError;
use crate::rotation::Rotation;
use crate::sampler::{DiscreteGaussian, Ratio, Skellam};

/// β of the conditional rounding bound.
const BETA: f64 = 0.606_530_659_712_633_4; // e^(−1/2)

/// Rounding attempts before giving up; each fails with probability at most β.
const MAX_ROUNDING_ATTEMPTS: u32 = 200;

/// Coordinates per independently seeded noise stream.
const NOISE_CHUNK: usize = 1 << 14;

/// The noise each site adds before masking.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum SiteNoise {
    /// No local noise (no DP, or central DP added by the coordinator).
    None,
    /// Exact discrete Gaussian with this per-site σ (in grid units).
    DiscreteGaussian { sigma: Ratio },
    /// Symmetric Skellam with this per-site μ (variance 2μ, grid units); not exact.
    Skellam { mu: f64 },
}

/// What a site needs to encode its update; the coordinator sends it each round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateCodecSpec {
    pub bits: u8,
    /// L2 clipping norm of a site's update.
    pub l2_clip: f64,
    /// Grid step: one integer unit is γ in update units.
    pub gamma: f64,
    pub dim: usize,
    pub max_sites: usize,
    pub max_weight: u64,
    /// Public per-round randomness for the rotation.
    pub rotation_seed: [u8; 32],
    pub site_noise: SiteNoise,
    /// What one privacy unit is: a site's whole update, or one patient's contribution.
    #[serde(default)]
    pub unit: Unit,
}

/// The privacy unit a codec protects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unit {
    /// One site's update is clipped to c and weighted; neighbours differ by one site.
    #[default]
    Site,
    /// Each site sums the clipped contributions of the patients it sampled (each with
    /// probability `sampling_rate`, secretly); the coordinator divides the sum by the
    /// fixed `denominator` (the expected number of sampled patients), so no count is
    /// released. Neighbours differ by one patient.
    Patient {
        sampling_rate: f64,
        denominator: f64,
    },
}

/// L2 and L1 sensitivity of the integer sum to one site.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sensitivity {
    pub l2: f64,
    pub l1: f64,
}

/// The conditional rounding bound B for clip c/γ (grid units) in m dimensions.
pub fn rounding_bound(scaled_clip: f64, padded_dim: usize) -> f64 {
    let m = padded_dim as f64;
    let a = scaled_clip + m.sqrt();
    let b = (scaled_clip * scaled_clip
        + m / 4.0
        + (2.0 * (1.0 / BETA).ln()).sqrt() * (scaled_clip + m.sqrt() / 2.0))
        .sqrt();
    a.min(b)
}

/// Sensitivity of the integer sum to one patient, whose clipped contribution (c/γ in
/// grid units) joins a site's sum before that sum is randomly rounded once. Coupling the
/// rounding's uniforms, ⌊s + x + u⌋ − ⌊s + u⌋ differs from x by less than 1 in every
/// coordinate, so the integer sum moves by at most c/γ + √m in L2 for every draw of u;
/// Rényi divergence is jointly quasi-convex, so the mixture over u keeps that bound.
/// A relative 1e-9 absorbs floating-point error in the clipping and rotation.
pub fn patient_sensitivity(scaled_clip: f64, padded_dim: usize) -> Sensitivity {
    let bound = scaled_clip * (1.0 + 1e-9) + (padded_dim as f64).sqrt();
    let l2 = bound.powi(2).floor().sqrt();
    Sensitivity {
        l2,
        l1: ((padded_dim as f64).sqrt() * l2).min(l2 * l2),
    }
}

/// Sensitivity of the integer sum for clip c/γ in m dimensions.
pub fn sensitivity(scaled_clip: f64, padded_dim: usize) -> Sensitivity {
    let l2 = rounding_bound(scaled_clip, padded_dim)
        .powi(2)
        .floor()
        .sqrt();
    Sensitivity {
        l2,
        l1: ((padded_dim as f64).sqrt() * l2).min(l2 * l2),
    }
}

/// The update's length and finiteness.
fn check_update(update: &[f32], dim: usize) -> Result<(), DpError> {
    if update.len() != dim {
        return Err(EncodingError::WrongLength {
            got: update.len(),
            expected: dim,
        }
        .into());
    }
    if let Some((index, &value)) = update.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EncodingError::NonFinite { index, value }.into());
    }
    Ok(())
}

/// ⌊v⌋ + Bernoulli(v − ⌊v⌋): unbiased rounding to an integer.
fn randomised_round<R: CryptoRng + ?Sized>(v: f64, rng: &mut R) -> i64 {
    let floor = v.floor();
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    floor as i64 + i64::from(u < v - floor)
}

enum Noise {
    None,
    Gaussian(DiscreteGaussian),
    Skellam(Skellam),
}

impl Noise {
    fn sample<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> i64 {
        match self {
            Noise::None => 0,
            Noise::Gaussian(g) => g.sample(rng),
            Noise::Skellam(s) => s.sample(rng),
        }
    }
}

/// The codec of one round.
pub struct PrivateCodec {
    spec: PrivateCodecSpec,
    modulus: Modulus,
    rotation: Rotation,
    weights: WeightDigits,
    norm_bound_sq: u128,
    noise: Noise,
}

impl PrivateCodec {
    pub fn new(spec: PrivateCodecSpec) -> Result<Self, DpError> {
        let positive = |name, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(DpError::BadParameter {
                    name,
                    value: v,
                    expected: "positive and finite",
                })
            }
        };
        positive("l2_clip", spec.l2_clip)?;
        positive("gamma", spec.gamma)?;
        let modulus = Modulus::new(spec.bits).map_err(|_| DpError::BadParameter {
            name: "bits",
            value: f64::from(spec.bits),
            expected: "between 8 and 32",
        })?;
        if let Unit::Patient {
            sampling_rate,
            denominator,
        } = spec.unit
        {
            if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
                return Err(DpError::BadParameter {
                    name: "unit.sampling_rate",
                    value: sampling_rate,
                    expected: "in (0, 1]",
                });
            }
            positive("unit.denominator", denominator)?;
        }
        if spec.max_sites == 0 || spec.max_weight == 0 {
            return Err(DpError::BadParameter {
                name: "max_sites or max_weight",
                value: 0.0,
                expected: "positive",
            });
        }
        let weights = WeightDigits::new(modulus, spec.max_sites, spec.max_weight)?;
        let rotation = Rotation::new(spec.dim, spec.rotation_seed);
        let bound = rounding_bound(spec.l2_clip / spec.gamma, rotation.padded());
        let noise = match spec.site_noise {
            SiteNoise::None => Noise::None,
            SiteNoise::DiscreteGaussian { sigma } => Noise::Gaussian(DiscreteGaussian::new(sigma)),
            SiteNoise::Skellam { mu } => Noise::Skellam(Skellam::new(mu)?),
        };
        Ok(Self {
            norm_bound_sq: (bound * bound).floor() as u128,
            spec,
            modulus,
            rotation,
            weights,
            noise,
        })
    }

    pub fn spec(&self) -> &PrivateCodecSpec {
        &self.spec
    }

    /// Length of an encoded vector: the padded coordinates and the weight digits.
    pub fn encoded_len(&self) -> usize {
        self.rotation.padded() + self.weights.len()
    }

    /// Coordinates after padding for the rotation (the noise's dimension).
    pub fn padded_dim(&self) -> usize {
        self.rotation.padded()
    }

    pub fn sensitivity(&self) -> Sensitivity {
        let scaled = self.spec.l2_clip / self.spec.gamma;
        match self.spec.unit {
            Unit::Site => sensitivity(scaled, self.rotation.padded()),
            Unit::Patient { .. } => patient_sensitivity(scaled, self.rotation.padded()),
        }
    }

    /// Encodes one site's sampled patients: each contribution is clipped to c in L2 and
    /// the clipped vectors summed; the sum is rotated, scaled by 1/γ, randomly rounded
    /// once, noised and wrapped. The weight digits carry 1 (the site took part, which is
    /// public); how many patients were sampled is not sent.
    pub fn encode_contributions<R: CryptoRng + ?Sized>(
        &self,
        contributions: &[Vec<f32>],
        rng: &mut R,
    ) -> Result<PlainVector, DpError> {
        if self.spec.unit == Unit::Site {
            return Err(DpError::Infeasible(
                "per-patient contributions need a codec whose unit is \"patient\"".into(),
            ));
        }
        let mut sum = vec![0f64; self.spec.dim];
        for c in contributions {
            check_update(c, self.spec.dim)?;
            let norm = c.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            let scale = if norm > self.spec.l2_clip {
                self.spec.l2_clip / norm
            } else {
                1.0
            };
            for (s, &v) in sum.iter_mut().zip(c) {
                *s += f64::from(v) * scale;
            }
        }
        let rotated = self.rotation.forward_f64(&sum);
        let values: Vec<i64> = rotated
            .iter()
            .map(|v| randomised_round(v / self.spec.gamma, rng))
            .collect();
        let mut words: Vec<u32> = self.add_noise(values, rng);
        self.weights.push(1, &mut words);
        Ok(PlainVector::new(self.modulus, words))
    }

    /// Encodes one site's update and weight, noise included.
    pub fn encode<R: CryptoRng + ?Sized>(
        &self,
        update: &[f32],
        weight: u64,
        rng: &mut R,
    ) -> Result<PlainVector, DpError> {
        if self.spec.unit != Unit::Site {
            return Err(DpError::Infeasible(
                "a codec whose unit is \"patient\" encodes per-patient contributions, not a \
                 site's update"
                    .into(),
            ));
        }
        let values = self.round(update, weight, rng)?;
        let mut words: Vec<u32> = self.add_noise(values, rng);
        self.weights.push(weight, &mut words);
        Ok(PlainVector::new(self.modulus, words))
    }

    /// Rotation, clipping, weighting, scaling and conditional randomised rounding.
    fn round<R: CryptoRng + ?Sized>(
        &self,
        update: &[f32],
        weight: u64,
        rng: &mut R,
    ) -> Result<Vec<i64>, DpError> {
        check_update(update, self.spec.dim)?;
        if weight > self.spec.max_weight {
            return Err(EncodingError::WeightTooLarge {
                weight,
                max: self.spec.max_weight,
            }
            .into());
        }
        let rotated = self.rotation.forward(update);
        let norm = rotated.iter().map(|v| v * v).sum::<f64>().sqrt();
        let clip = if norm > self.spec.l2_clip {
            self.spec.l2_clip / norm
        } else {
            1.0
        };
        let factor = clip * (weight as f64 / self.spec.max_weight as f64) / self.spec.gamma;
        let scaled: Vec<f64> = rotated.iter().map(|v| v * factor).collect();
        let mut rounded = vec![0i64; scaled.len()];
        for _ in 0..MAX_ROUNDING_ATTEMPTS {
            let mut norm_sq: u128 = 0;
            for (r, &v) in rounded.iter_mut().zip(&scaled) {
                *r = randomised_round(v, rng);
                norm_sq += u128::from(r.unsigned_abs()).pow(2);
            }
            if norm_sq <= self.norm_bound_sq {
                return Ok(rounded);
            }
        }
        Err(DpError::Rounding {
            attempts: MAX_ROUNDING_ATTEMPTS,
        })
    }

    /// Adds noise in parallel chunks, each from its own stream seeded by `rng`, and
    /// wraps into the ring.
    fn add_noise<R: CryptoRng + ?Sized>(&self, values: Vec<i64>, rng: &mut R) -> Vec<u32> {
        let seeds: Vec<[u8; 32]> = (0..values.len().div_ceil(NOISE_CHUNK))
            .map(|_| {
                let mut s = [0u8; 32];
                rng.fill_bytes(&mut s);
                s
            })
            .collect();
        let mut words = Vec::with_capacity(self.encoded_len());
        words.resize(values.len(), 0u32);
        words
            .par_chunks_mut(NOISE_CHUNK)
            .zip(values.par_chunks(NOISE_CHUNK))
            .zip(seeds)
            .for_each(|((out, vals), seed)| {
                let mut stream = ChaCha20Rng::from_seed(seed);
                for (o, &v) in out.iter_mut().zip(vals) {
                    // Two's complement truncation is reduction mod 2^32, hence mod 2^b.
                    *o = v.wrapping_add(self.noise.sample(&mut stream)) as u32;
                }
            });
        words
    }

    /// Decodes the weighted mean from the unmasked sum.
    pub fn decode(&self, sum: &PlainVector) -> Result<WeightedMean, DpError> {
        self.decode_inner(sum, |_| {})
    }

    /// The trusted-coordinator baseline: adds central discrete Gaussian noise to the
    /// unmasked integer sum before decoding it.
    pub fn decode_with_central_noise<R: CryptoRng + ?Sized>(
        &self,
        sum: &PlainVector,
        noise: &DiscreteGaussian,
        rng: &mut R,
    ) -> Result<WeightedMean, DpError> {
        self.decode_inner(sum, |values| {
            for v in values.iter_mut() {
                *v += noise.sample(rng);
            }
        })
    }

    fn decode_inner(
        &self,
        sum: &PlainVector,
        perturb: impl FnOnce(&mut [i64]),
    ) -> Result<WeightedMean, DpError> {
        if sum.len() != self.encoded_len() || sum.modulus() != self.modulus {
            return Err(EncodingError::WrongLength {
                got: sum.len(),
                expected: self.encoded_len(),
            }
            .into());
        }
        let (values, digits) = sum.as_slice().split_at(self.rotation.padded());
        let total_weight = self.weights.total(digits)?;
        let bits = u32::from(self.modulus.bits());
        let mut signed: Vec<i64> = values
            .iter()
            .map(|&w| (i64::from(w) << (64 - bits)) >> (64 - bits))
            .collect();
        perturb(&mut signed);
        let rotated = signed.iter().map(|&v| v as f64 * self.spec.gamma).collect();
        let factor = match self.spec.unit {
            Unit::Site => self.spec.max_weight as f64 / total_weight as f64,
            Unit::Patient { denominator, .. } => 1.0 / denominator,
        };
        let mean = self
            .rotation
            .inverse(rotated)
            .into_iter()
            .map(|v| (v * factor) as f32)
            .collect();
        Ok(WeightedMean { mean, total_weight })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(noise: SiteNoise) -> PrivateCodecSpec {
        PrivateCodecSpec {
            bits: 24,
            l2_clip: 1.0,
            gamma: 1e-3,
            dim: 100,
            max_sites: 4,
            max_weight: 10,
            rotation_seed: [9; 32],
            site_noise: noise,
            unit: Unit::Site,
        }
    }

    #[test]
    fn without_noise_the_mean_is_recovered_up_to_rounding() {
        let codec = PrivateCodec::new(spec(SiteNoise::None)).unwrap();
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let a: Vec<f32> = (0..100).map(|i| ((i as f32) * 0.1).sin() * 0.05).collect();
        let b: Vec<f32> = (0..100).map(|i| ((i as f32) * 0.3).cos() * 0.05).collect();
        let mut sum = PlainVector::zeros(Modulus::new(24).unwrap(), codec.encoded_len());
        sum.add_assign(&codec.encode(&a, 10, &mut rng).unwrap());
        sum.add_assign(&codec.encode(&b, 5, &mut rng).unwrap());
        let mean = codec.decode(&sum).unwrap();
        assert_eq!(mean.total_weight, 15);
        for i in 0..100 {
            let want = (10.0 * a[i] + 5.0 * b[i]) / 15.0;
            // Two sites' rounding (≤ 1 grid step each after rotation) scaled by W/Σw.
            assert!(
                (mean.mean[i] - want).abs() < 2.0 * 1e-3 * 10.0 / 15.0 * 1.5,
                "{i}"
            );
        }
    }

    #[test]
    fn clipping_bounds_the_integer_norm() {
        let codec = PrivateCodec::new(spec(SiteNoise::None)).unwrap();
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        let huge = vec![50.0f32; 100];
        let v = codec.encode(&huge, 10, &mut rng).unwrap();
        let bits = 24;
        let norm_sq: f64 = v.as_slice()[..128]
            .iter()
            .map(|&w| (((i64::from(w)) << (64 - bits)) >> (64 - bits)) as f64)
            .map(|x| x * x)
            .sum();
        assert!(norm_sq.sqrt() <= codec.sensitivity().l2 + 1e-9);
        assert!(norm_sq.sqrt() > 900.0, "clipped to about c/γ = 1000");
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let codec = PrivateCodec::new(spec(SiteNoise::None)).unwrap();
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        assert!(codec.encode(&[0.0; 99], 1, &mut rng).is_err());
        assert!(codec.encode(&[f32::NAN; 100], 1, &mut rng).is_err());
        assert!(codec.encode(&[0.0; 100], 11, &mut rng).is_err());
        let mut bad = spec(SiteNoise::None);
        bad.gamma = 0.0;
        assert!(PrivateCodec::new(bad).is_err());
        let mut bad = spec(SiteNoise::None);
        bad.bits = 40;
        assert!(PrivateCodec::new(bad).is_err());
    }
}
