//! Fixed-point encoding of `f32` updates into the ring, with the site's weight.
//!
//! A site with update x ∈ R^d and weight w ≤ W (e.g. its sample count) submits
//!
//! - d coordinates q_i = SR(s · (w/W) · clip(x_i, −c, c)), two's complement mod 2^b,
//!   where SR is unbiased stochastic rounding (E[SR(v)] = v);
//! - L weight limbs: the base-2^ℓ digits of w, with ℓ = b − ⌈log2 n⌉ so that the sum of
//!   n digits never wraps. The total weight Σw is therefore recovered exactly.
//!
//! The aggregator decodes the weighted mean Σ w·x / Σ w = (W/s) · Σ q / Σ w. Each site's
//! rounding error is below 1 per coordinate, so the decoded mean is within
//! n·W / (s·Σw) of the exact weighted mean of the clipped inputs.
//!
//! **Bit budget.** |q_i| ≤ ⌈c·s⌉, so the sum of n inputs decodes without wrapping iff
//! n·⌈c·s⌉ ≤ 2^(b−1) − 1. [`FixedPoint::new`] refuses any configuration outside it.

use rand_core::CryptoRng;
use thiserror::Error;

use crate::mask::{Keystream, MaskPrg, MaskSeed};
use crate::ring::{Modulus, PlainVector};
use zeroize::Zeroizing;

/// Coordinates whose rounding randomness is generated in one call.
const RANDOM_BLOCK: usize = 512;

/// ⌊v⌋ or ⌊v⌋ + 1 mod 2^32, the latter with probability v − ⌊v⌋ (to within 2^−52),
/// from 64 random bits: the top 52 are the mantissa of a uniform u in [0, 1).
///
/// No float-to-integer conversion (scalar before AVX-512): adding 1.5 · 2^52 rounds v to
/// the nearest integer n, exactly for |v| < 2^51 (the bit budget keeps |v| < 2^31),
/// and leaves n mod 2^32 in the low bits of the sum. So the loop vectorises, and gives
/// what `f64::floor` would (tested).
fn round_stochastically(v: f64, random: u64) -> u32 {
    const SHIFTER: f64 = 6_755_399_441_055_744.0;
    let shifted = v + SHIFTER;
    let nearest = shifted - SHIFTER;
    let down = nearest > v;
    let floor = nearest - f64::from(u8::from(down));
    let u = f64::from_bits(0x3ff0_0000_0000_0000 | (random >> 12)) - 1.0;
    let up = u < v - floor;
    (shifted.to_bits() as u32)
        .wrapping_sub(u32::from(down))
        .wrapping_add(u32::from(up))
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EncodingError {
    #[error(
        "bit budget exceeded: the sum of {sites} sites with values in [−{clip}, {clip}] at scale {scale} \
         reaches ±{reach}, which needs {needed_bits} bits, but the modulus has {bits} bits; lower the scale \
         to at most {max_scale:.3}, the clipping range, or the number of sites, or raise the bit width"
    )]
    BitBudget {
        sites: usize,
        clip: f32,
        scale: f64,
        bits: u8,
        reach: u128,
        needed_bits: u32,
        max_scale: f64,
    },
    #[error("{bits}-bit modulus leaves no room for weight digits with up to {sites} sites")]
    NoRoomForWeights { bits: u8, sites: usize },
    #[error("{name} must be positive and finite, got {value}")]
    BadParameter { name: &'static str, value: f64 },
    #[error("weight {weight} exceeds the configured maximum {max}")]
    WeightTooLarge { weight: u64, max: u64 },
    #[error("coordinate {index} of the update is not finite ({value})")]
    NonFinite { index: usize, value: f32 },
    #[error("vector has {got} elements, expected {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("the total weight of the aggregate is zero; nothing to average")]
    ZeroTotalWeight,
}

/// The fixed-point codec shared by the sites and the aggregator of a federation.
#[derive(Clone, Debug, PartialEq)]
pub struct FixedPoint {
    modulus: Modulus,
    clip: f32,
    scale: f64,
    max_sites: usize,
    max_weight: u64,
    dim: usize,
    weights: WeightDigits,
}

/// A site weight carried exactly through the ring as base-2^ℓ digits, with
/// ℓ = b − ⌈log2 n⌉ so that the digit-wise sum of n weights never wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightDigits {
    limb_bits: u32,
    limbs: usize,
}

impl WeightDigits {
    /// Digits for weights up to `max_weight` summed over up to `max_sites` sites.
    pub fn new(modulus: Modulus, max_sites: usize, max_weight: u64) -> Result<Self, EncodingError> {
        let limb_bits = u32::from(modulus.bits()).saturating_sub(ceil_log2(max_sites));
        if limb_bits == 0 {
            return Err(EncodingError::NoRoomForWeights {
                bits: modulus.bits(),
                sites: max_sites,
            });
        }
        let weight_bits = 64 - max_weight.leading_zeros();
        Ok(Self {
            limb_bits,
            limbs: weight_bits.div_ceil(limb_bits) as usize,
        })
    }

    /// Number of ring elements the digits occupy.
    pub fn len(&self) -> usize {
        self.limbs
    }

    pub fn is_empty(&self) -> bool {
        self.limbs == 0
    }

    /// Appends the digits of `weight`.
    pub fn push(&self, weight: u64, words: &mut Vec<u32>) {
        let digit_mask = (1u64 << self.limb_bits) - 1;
        words.reserve_exact(self.limbs);
        for j in 0..self.limbs {
            words.push(((weight >> (j as u32 * self.limb_bits)) & digit_mask) as u32);
        }
    }

    /// The total weight from summed digits; an error when it is zero.
    pub fn total(&self, digits: &[u32]) -> Result<u64, EncodingError> {
        let total = digits.iter().enumerate().fold(0u128, |acc, (j, &d)| {
            acc + (u128::from(d) << (j as u32 * self.limb_bits))
        });
        if total == 0 {
            return Err(EncodingError::ZeroTotalWeight);
        }
        Ok(u64::try_from(total).unwrap_or(u64::MAX))
    }
}

/// The decoded aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedMean {
    pub mean: Vec<f32>,
    pub total_weight: u64,
}

pub(crate) fn ceil_log2(n: usize) -> u32 {
    usize::BITS - (n.max(1) - 1).leading_zeros()
}

impl FixedPoint {
    /// The largest scale for which `sites` inputs clipped to ±`clip` fit in `modulus`.
    pub fn max_scale(modulus: Modulus, clip: f32, sites: usize) -> f64 {
        let half = (1u64 << (modulus.bits() - 1)) - 1;
        // Shrunk by a relative 1e-12 so that ⌈clip · scale⌉ cannot round up past the grid.
        (half / sites.max(1) as u64) as f64 / f64::from(clip) * (1.0 - 1e-12)
    }

    /// A codec for `dim`-dimensional updates, or the reason the configuration can wrap.
    pub fn new(
        modulus: Modulus,
        clip: f32,
        scale: f64,
        max_sites: usize,
        max_weight: u64,
        dim: usize,
    ) -> Result<Self, EncodingError> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(EncodingError::BadParameter {
                name: "clip",
                value: f64::from(clip),
            });
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(EncodingError::BadParameter {
                name: "scale",
                value: scale,
            });
        }
        if max_sites == 0 {
            return Err(EncodingError::BadParameter {
                name: "max_sites",
                value: 0.0,
            });
        }
        if max_weight == 0 {
            return Err(EncodingError::BadParameter {
                name: "max_weight",
                value: 0.0,
            });
        }
        let per_site = (f64::from(clip) * scale).ceil() as u128;
        let reach = per_site * max_sites as u128;
        let half = (1u128 << (modulus.bits() - 1)) - 1;
        if reach > half {
            return Err(EncodingError::BitBudget {
                sites: max_sites,
                clip,
                scale,
                bits: modulus.bits(),
                reach,
                needed_bits: 128 - reach.leading_zeros() + 1,
                max_scale: Self::max_scale(modulus, clip, max_sites),
            });
        }
        let weights = WeightDigits::new(modulus, max_sites, max_weight)?;
        Ok(Self {
            modulus,
            clip,
            scale,
            max_sites,
            max_weight,
            dim,
            weights,
        })
    }

    /// Length of an encoded vector: the update's coordinates and the weight limbs.
    pub fn encoded_len(&self) -> usize {
        self.dim + self.weights.len()
    }

    pub fn modulus(&self) -> Modulus {
        self.modulus
    }

    /// Encodes one site's update and weight.
    pub fn encode<R: CryptoRng + ?Sized>(
        &self,
        update: &[f32],
        weight: u64,
        rng: &mut R,
    ) -> Result<PlainVector, EncodingError> {
        self.encode_owned(update.to_vec(), weight, rng)
    }

    /// [`Self::encode`] into the update's own buffer: at thousands of simulated sites, a
    /// fresh model-sized buffer per site is a page fault per 4 KiB, which cost more than
    /// the encoding itself.
    pub fn encode_owned<R: CryptoRng + ?Sized>(
        &self,
        update: Vec<f32>,
        weight: u64,
        rng: &mut R,
    ) -> Result<PlainVector, EncodingError> {
        if update.len() != self.dim {
            return Err(EncodingError::WrongLength {
                got: update.len(),
                expected: self.dim,
            });
        }
        if weight > self.max_weight {
            return Err(EncodingError::WeightTooLarge {
                weight,
                max: self.max_weight,
            });
        }
        let factor = self.scale * weight as f64 / self.max_weight as f64;
        let clip = f64::from(self.clip);
        if let Some(index) = update.iter().position(|x| !x.is_finite()) {
            return Err(EncodingError::NonFinite {
                index,
                value: update[index],
            });
        }
        // Same size and alignment: collected in place, each word then encoded where
        // its value was.
        let mut words: Vec<u32> = update.into_iter().map(f32::to_bits).collect();
        // The rounding randomness is the AES-256-CTR keystream of a 256-bit seed drawn
        // from `rng`, 64 bits per coordinate: hardware AES runs several times faster
        // than a software generator (same output on every CPU; tested).
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        let mut stream = Keystream::new(MaskPrg::Aes256Ctr, &MaskSeed::new(seed), 0);
        let mut random = Zeroizing::new([0u8; 8 * RANDOM_BLOCK]);
        for ws in words.chunks_mut(RANDOM_BLOCK) {
            let random = &mut random[..8 * ws.len()];
            stream.fill(random);
            for (w, r) in ws.iter_mut().zip(random.chunks_exact(8)) {
                let mut le = [0u8; 8];
                le.copy_from_slice(r);
                // max/min equal clamp on finite values, without its panic path.
                let v = f64::from(f32::from_bits(*w)).max(-clip).min(clip) * factor;
                *w = round_stochastically(v, u64::from_le_bytes(le));
            }
        }
        self.weights.push(weight, &mut words);
        Ok(PlainVector::new(self.modulus, words))
    }

    /// Decodes the weighted mean from the unmasked sum.
    pub fn decode(&self, sum: &PlainVector) -> Result<WeightedMean, EncodingError> {
        if sum.len() != self.encoded_len() {
            return Err(EncodingError::WrongLength {
                got: sum.len(),
                expected: self.encoded_len(),
            });
        }
        let (values, limbs) = sum.as_slice().split_at(self.dim);
        let total_weight = self.weights.total(limbs)?;
        let bits = u32::from(self.modulus.bits());
        let factor = self.max_weight as f64 / (self.scale * total_weight as f64);
        let mean = values
            .iter()
            .map(|&w| {
                // Sign-extend from b bits.
                let signed = (i64::from(w) << (64 - bits)) >> (64 - bits);
                (signed as f64 * factor) as f32
            })
            .collect();
        Ok(WeightedMean { mean, total_weight })
    }

    /// Largest absolute error of a decoded coordinate, given the contributors' number
    /// and total weight (stochastic rounding errs by less than 1 per site).
    pub fn mean_error_bound(&self, contributors: usize, total_weight: u64) -> f64 {
        contributors as f64 * self.max_weight as f64 / (self.scale * total_weight as f64)
    }

    pub fn clip(&self) -> f32 {
        self.clip
    }

    pub fn max_sites(&self) -> usize {
        self.max_sites
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn budget_check_names_every_quantity() {
        let m = Modulus::new(16).unwrap();
        // 10 sites × ⌈1.0 × 4000⌉ = 40000 > 32767
        let err = FixedPoint::new(m, 1.0, 4000.0, 10, 1, 4).unwrap_err();
        let text = err.to_string();
        for needle in ["10 sites", "[−1, 1]", "scale 4000", "16 bits", "17 bits"] {
            assert!(text.contains(needle), "{text} lacks {needle}");
        }
        let max = FixedPoint::max_scale(m, 1.0, 10);
        assert!((max - 3276.0).abs() < 1e-6);
        for clip in [0.1f32, 0.3, 3.7, 1e-3] {
            let s = FixedPoint::max_scale(m, clip, 10);
            assert!(FixedPoint::new(m, clip, s, 10, 1, 4).is_ok(), "clip {clip}");
        }
        assert!(FixedPoint::new(m, 1.0, max, 10, 1, 4).is_ok());
        assert!(FixedPoint::new(m, 1.0, max + 1.0, 10, 1, 4).is_err());
    }

    #[test]
    fn extreme_inputs_at_the_budget_do_not_wrap() {
        let m = Modulus::new(12).unwrap();
        let n = 7;
        let scale = FixedPoint::max_scale(m, 2.0, n);
        let fp = FixedPoint::new(m, 2.0, scale, n, 5, 3).unwrap();
        let mut rng = ChaCha20Rng::from_seed([0; 32]);
        for sign in [1.0f32, -1.0] {
            let mut sum = PlainVector::zeros(m, fp.encoded_len());
            for _ in 0..n {
                sum.add_assign(
                    &fp.encode(&[sign * 9.0, sign * 2.0, 0.0], 5, &mut rng)
                        .unwrap(),
                );
            }
            let mean = fp.decode(&sum).unwrap();
            assert_eq!(mean.total_weight, 35);
            // clipped to ±2 and exact at the grid
            assert!((mean.mean[0] - sign * 2.0).abs() <= fp.mean_error_bound(n, 35) as f32);
            assert!((mean.mean[1] - sign * 2.0).abs() <= fp.mean_error_bound(n, 35) as f32);
        }
    }

    /// The rounding randomness is the AES-256-CTR keystream of 32 bytes drawn from the
    /// generator, one little-endian 64-bit word per coordinate (its top 52 bits a
    /// uniform in [0, 1)), rounded as one `f64::floor` per coordinate would, negative
    /// values and values at the bit budget's edge included; the generator advances by
    /// those 32 bytes only, whatever the block boundaries and its word alignment.
    #[test]
    fn rounding_randomness_is_the_keystream_of_one_drawn_seed() {
        let m = Modulus::new(32).unwrap();
        // (clip, scale, sites): an ordinary codec, and one whose values reach the bit
        // budget's edge, |v| up to 2^31 − 1.
        for (clip, scale, sites) in [(3.0, 1000.0, 3), (1.0, 2_147_483_647.0, 1)] {
            for dim in [1, 511, 512, 513, 2000] {
                let fp = FixedPoint::new(m, clip, scale, sites, 10, dim).unwrap();
                let update: Vec<f32> = [0.0, -1.0, 2.5, 3.0, -3.0, 1e-9, -0.5, 7.0, -1e-30]
                    .into_iter()
                    .chain((0..).map(|i| ((i as f32) * 0.37).sin() * 4.0 - 0.001 * i as f32))
                    .take(dim)
                    .collect();
                for weight in [7, 10] {
                    for skip in [0, 1, 15] {
                        check_rounding(&fp, &update, weight, skip);
                    }
                }
            }
        }
    }

    /// One encoding against `f64::floor` and the keystream of the drawn seed.
    fn check_rounding(fp: &FixedPoint, update: &[f32], weight: u64, skip: usize) {
        use crate::mask::{MaskPrg, MaskSeed, raw_keystream};
        use rand_core::Rng;
        let dim = update.len();
        let mut a = ChaCha20Rng::from_seed([9; 32]);
        let mut b = ChaCha20Rng::from_seed([9; 32]);
        for _ in 0..skip {
            a.next_u32();
            b.next_u32();
        }
        let got = fp.encode(update, weight, &mut a).unwrap();
        let mut seed = [0u8; 32];
        b.fill_bytes(&mut seed);
        let mut random = vec![0u8; 8 * dim];
        raw_keystream(&mut random, MaskPrg::Aes256Ctr, &MaskSeed::from_bytes(seed));
        let clip = f64::from(fp.clip);
        let factor = fp.scale * weight as f64 / 10.0;
        let expected: Vec<u32> = update
            .iter()
            .zip(random.chunks_exact(8))
            .map(|(&x, r)| {
                let v = f64::from(x).clamp(-clip, clip) * factor;
                let floor = v.floor();
                let r = u64::from_le_bytes(r.try_into().unwrap());
                let u = (r >> 12) as f64 / (1u64 << 52) as f64;
                (floor as i64 + i64::from(u < v - floor)) as u32
            })
            .collect();
        let at = format!(
            "dim {dim}, scale {}, weight {weight}, skip {skip}",
            fp.scale
        );
        assert_eq!(&got.as_slice()[..dim], &expected[..], "{at}");
        assert_eq!(a.next_u64(), b.next_u64(), "generator state, {at}");
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let m = Modulus::new(32).unwrap();
        let fp = FixedPoint::new(m, 1.0, 1.0, 1, 1, 1).unwrap();
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let trials = 200_000;
        let mut total = 0i64;
        for _ in 0..trials {
            let v = fp.encode(&[0.3], 1, &mut rng).unwrap();
            total += i64::from(v.as_slice()[0] as i32);
        }
        let mean = total as f64 / trials as f64;
        // Bernoulli(0.3): sd of the mean = sqrt(0.21 / 200000) ≈ 0.001
        assert!((mean - 0.3).abs() < 0.005, "mean {mean}");
    }

    #[test]
    fn weights_are_recovered_exactly_with_many_limbs() {
        let m = Modulus::new(8).unwrap();
        let fp = FixedPoint::new(m, 1.0, 1.0, 60, u64::from(u32::MAX), 1).unwrap();
        assert!(fp.encoded_len() > 2);
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let weights = [u64::from(u32::MAX), 1, 123_456_789, 0, 77];
        let mut sum = PlainVector::zeros(m, fp.encoded_len());
        for w in weights {
            sum.add_assign(&fp.encode(&[0.0], w, &mut rng).unwrap());
        }
        assert_eq!(
            fp.decode(&sum).unwrap().total_weight,
            weights.iter().sum::<u64>()
        );
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let m = Modulus::new(16).unwrap();
        let fp = FixedPoint::new(m, 1.0, 10.0, 4, 10, 2).unwrap();
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        assert_eq!(
            fp.encode(&[0.0, f32::NAN], 1, &mut rng)
                .unwrap_err()
                .to_string(),
            "coordinate 1 of the update is not finite (NaN)"
        );
        assert!(matches!(
            fp.encode(&[0.0], 1, &mut rng),
            Err(EncodingError::WrongLength { .. })
        ));
        assert!(matches!(
            fp.encode(&[0.0, 0.0], 11, &mut rng),
            Err(EncodingError::WeightTooLarge { .. })
        ));
        assert_eq!(
            fp.decode(&PlainVector::zeros(m, fp.encoded_len())),
            Err(EncodingError::ZeroTotalWeight)
        );
        assert!(FixedPoint::new(m, f32::NAN, 1.0, 4, 10, 2).is_err());
        assert!(FixedPoint::new(Modulus::new(8).unwrap(), 1.0, 0.5, 256, 1, 1).is_err());
    }
}
