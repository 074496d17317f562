//! Integer noise samplers driven by a caller-supplied CSPRNG.
//!
//! [`DiscreteGaussian`] is exact: it follows Canonne, Kamath and Steinke (2020,
//! Algorithms 1–3), the algorithm OpenDP's `sample_discrete_gaussian` implements, with
//! every probability a ratio of integers so that no floating point touches the output
//! distribution. Integers live in `u128` on the fast path and move to arbitrary
//! precision (`dashu`) whenever a product would not fit, so large magnitudes are exact
//! too. Unlike OpenDP's sampler it draws from the RNG it is given, so a site's noise is
//! reproducible from its seed in tests and simulations.
//!
//! [`Skellam`] draws each of its two Poisson variates with `rand_distr`'s floating-point
//! Poisson sampler: it is **not** an exact sampler, and its privacy guarantee holds only
//! up to floating-point artefacts in that sampler (Agarwal et al. warn that such
//! artefacts can matter). It is offered for comparison with the Skellam literature; use
//! the discrete Gaussian where an exact guarantee is required.

use dashu::base::BitTest;
use dashu::integer::UBig;
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::error::DpError;

/// A positive rational number `num / den`. Decoding checks it like [`Ratio::new`], so a
/// peer cannot hand a site a zero denominator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRatio")]
pub struct Ratio {
    num: u64,
    den: u64,
}

#[derive(Deserialize)]
struct RawRatio {
    num: u64,
    den: u64,
}

impl TryFrom<RawRatio> for Ratio {
    type Error = DpError;

    fn try_from(r: RawRatio) -> Result<Self, DpError> {
        Ratio::new(r.num, r.den)
    }
}

impl Ratio {
    /// Denominator used by [`Ratio::at_least`].
    pub const GRID: u64 = 1 << 12;
    /// Largest numerator or denominator accepted.
    pub const MAX: u64 = 1 << 40;

    pub fn new(num: u64, den: u64) -> Result<Self, DpError> {
        if num == 0 || den == 0 || num > Self::MAX || den > Self::MAX {
            return Err(DpError::BadParameter {
                name: "ratio",
                value: num as f64 / den as f64,
                expected: "a positive ratio with numerator and denominator at most 2^40",
            });
        }
        Ok(Self { num, den })
    }

    /// The smallest multiple of 1/[`Ratio::GRID`] that is at least `x`. Rounding a noise
    /// scale up never weakens a privacy guarantee.
    pub fn at_least(x: f64) -> Result<Self, DpError> {
        let num = (x * Self::GRID as f64).ceil();
        if !(x.is_finite() && x > 0.0 && num <= Self::MAX as f64) {
            return Err(DpError::BadParameter {
                name: "noise scale",
                value: x,
                expected: "positive and at most 2^28",
            });
        }
        Self::new(num as u64, Self::GRID)
    }

    pub fn num(self) -> u64 {
        self.num
    }

    pub fn den(self) -> u64 {
        self.den
    }

    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// Unsigned integers the Bernoulli routines can run on.
trait Natural: Clone + PartialOrd + Sized {
    fn from_u64(v: u64) -> Self;
    fn div_rem(&self, d: &Self) -> (Self, Self);
    fn is_zero(&self) -> bool;
    /// Uniform on `[0, bound)`; `bound` is positive.
    fn uniform_below<R: CryptoRng + ?Sized>(bound: &Self, rng: &mut R) -> Self;
}

impl Natural for u128 {
    fn from_u64(v: u64) -> Self {
        u128::from(v)
    }

    fn div_rem(&self, d: &Self) -> (Self, Self) {
        (self / d, self % d)
    }

    fn is_zero(&self) -> bool {
        *self == 0
    }

    fn uniform_below<R: CryptoRng + ?Sized>(bound: &Self, rng: &mut R) -> Self {
        let bits = 128 - (bound - 1).leading_zeros();
        if bits == 0 {
            return 0;
        }
        loop {
            let r = if bits <= 64 {
                u128::from(rng.next_u64() >> (64 - bits))
            } else {
                ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())) >> (128 - bits)
            };
            if r < *bound {
                return r;
            }
        }
    }
}

impl Natural for UBig {
    fn from_u64(v: u64) -> Self {
        UBig::from(v)
    }

    fn div_rem(&self, d: &Self) -> (Self, Self) {
        (self / d, self % d)
    }

    fn is_zero(&self) -> bool {
        *self == UBig::ZERO
    }

    fn uniform_below<R: CryptoRng + ?Sized>(bound: &Self, rng: &mut R) -> Self {
        let bits = (bound - UBig::ONE).bit_len();
        let mut bytes = vec![0u8; bits.div_ceil(8)];
        loop {
            rng.fill_bytes(&mut bytes);
            if !bits.is_multiple_of(8)
                && let Some(top) = bytes.last_mut()
            {
                *top &= (1u8 << (bits % 8)) - 1;
            }
            let r = UBig::from_le_bytes(&bytes);
            if r < *bound {
                return r;
            }
        }
    }
}

/// Bernoulli(num / den) for num ≤ den.
fn bernoulli<N: Natural, R: CryptoRng + ?Sized>(num: &N, den: &N, rng: &mut R) -> bool {
    N::uniform_below(den, rng) < *num
}

/// Bernoulli(exp(−num/den)) for num/den ∈ [0, 1] (CKS20, Algorithm 1): count K while
/// Bernoulli(γ/K) succeeds; return whether K ends odd. Bernoulli(γ/K) is drawn as
/// Bernoulli(γ) ∧ Bernoulli(1/K), which avoids multiplying den by K.
fn bernoulli_exp_unit<N: Natural, R: CryptoRng + ?Sized>(num: &N, den: &N, rng: &mut R) -> bool {
    let mut k: u64 = 1;
    while bernoulli(num, den, rng) && bernoulli(&1u128, &u128::from(k), rng) {
        k += 1;
    }
    k % 2 == 1
}

/// Bernoulli(exp(−1)).
fn bernoulli_exp_one<R: CryptoRng + ?Sized>(rng: &mut R) -> bool {
    bernoulli_exp_unit(&1u128, &1u128, rng)
}

/// Bernoulli(exp(−num/den)) for any num/den ≥ 0: ⌊γ⌋ draws of Bernoulli(exp(−1)), then
/// one of the fractional part.
fn bernoulli_exp<N: Natural, R: CryptoRng + ?Sized>(num: &N, den: &N, rng: &mut R) -> bool {
    let (whole, rest) = num.div_rem(den);
    let mut done = N::from_u64(0);
    let mut counter: u64 = 0;
    while done < whole {
        if !bernoulli_exp_one(rng) {
            return false;
        }
        counter += 1;
        done = N::from_u64(counter);
    }
    rest.is_zero() || bernoulli_exp_unit(&rest, den, rng)
}

/// The discrete Gaussian N_Z(0, σ²) over the integers, σ rational.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscreteGaussian {
    sigma: Ratio,
    /// Scale of the discrete Laplace proposal: ⌊σ⌋ + 1.
    t: u64,
}

impl DiscreteGaussian {
    pub fn new(sigma: Ratio) -> Self {
        Self {
            sigma,
            t: sigma.num / sigma.den + 1,
        }
    }

    pub fn sigma(&self) -> Ratio {
        self.sigma
    }

    /// One exact sample.
    pub fn sample<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> i64 {
        loop {
            let Some(y) = discrete_laplace(self.t, rng) else {
                continue;
            };
            if self.accept(y.unsigned_abs(), rng) {
                return y;
            }
        }
    }

    /// Bernoulli(exp(−(|y| − σ²/t)² / (2σ²))) with σ = p/q:
    /// the exponent is (|y|·q²·t − p²)² / (2·p²·q²·t²).
    fn accept<R: CryptoRng + ?Sized>(&self, magnitude: u64, rng: &mut R) -> bool {
        let (p, q, t) = (
            u128::from(self.sigma.num),
            u128::from(self.sigma.den),
            u128::from(self.t),
        );
        let p2 = p * p;
        let fast = (|| {
            let q2 = q * q;
            let lhs = u128::from(magnitude).checked_mul(q2)?.checked_mul(t)?;
            let diff = lhs.abs_diff(p2);
            let num = diff.checked_mul(diff)?;
            let den = p2.checked_mul(q2)?.checked_mul(t * t)?.checked_mul(2)?;
            Some((num, den))
        })();
        match fast {
            Some((num, den)) => bernoulli_exp(&num, &den, rng),
            None => {
                let (p2, q, t) = (UBig::from(p2), UBig::from(q), UBig::from(t));
                let lhs = UBig::from(magnitude) * &q * &q * &t;
                let diff = if lhs >= p2 { lhs - &p2 } else { &p2 - lhs };
                let num = &diff * &diff;
                let den = p2 * &q * &q * &t * &t * UBig::from(2u8);
                bernoulli_exp(&num, &den, rng)
            }
        }
    }
}

/// The discrete Laplace distribution with scale t (CKS20, Algorithm 2); `None` in the
/// (probability below e^(−2^40)) event that the magnitude overflows 63 bits, on which
/// the caller draws again.
fn discrete_laplace<R: CryptoRng + ?Sized>(t: u64, rng: &mut R) -> Option<i64> {
    let t128 = u128::from(t);
    loop {
        let u = u128::uniform_below(&t128, rng);
        if !bernoulli_exp(&u, &t128, rng) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp_one(rng) {
            v += 1;
        }
        let x = i64::try_from(t.checked_mul(v)?.checked_add(u as u64)?).ok()?;
        let negative = rng.next_u64() & 1 == 1;
        if negative && x == 0 {
            continue;
        }
        return Some(if negative { -x } else { x });
    }
}

/// Symmetric Skellam noise: Poisson(μ) − Poisson(μ), variance 2μ. Not an exact sampler
/// (see the module documentation).
#[derive(Clone, Debug)]
pub struct Skellam {
    mu: f64,
    poisson: rand_distr::Poisson<f64>,
}

impl Skellam {
    pub fn new(mu: f64) -> Result<Self, DpError> {
        let poisson = rand_distr::Poisson::new(mu).map_err(|_| DpError::BadParameter {
            name: "skellam mu",
            value: mu,
            expected: "positive, finite and below 2^44",
        })?;
        Ok(Self { mu, poisson })
    }

    pub fn mu(&self) -> f64 {
        self.mu
    }

    pub fn sample<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> i64 {
        use rand_distr::Distribution;
        let a = self.poisson.sample(rng) as i64;
        let b = self.poisson.sample(rng) as i64;
        a - b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn exp_bernoulli_matches_its_probability() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let trials = 200_000;
        for (num, den) in [(1u128, 3u128), (5, 2), (7, 7), (0, 1)] {
            let hits = (0..trials)
                .filter(|_| bernoulli_exp(&num, &den, &mut rng))
                .count();
            let p = (-(num as f64) / den as f64).exp();
            let sd = (p * (1.0 - p) / trials as f64).sqrt().max(1e-9);
            let got = hits as f64 / trials as f64;
            assert!(
                (got - p).abs() < 5.0 * sd + 1e-12,
                "{num}/{den}: {got} vs {p}"
            );
        }
    }

    #[test]
    fn big_integer_path_agrees_with_the_fast_path() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let trials = 100_000;
        let (num, den) = (3u128 << 100, 7u128 << 100);
        let fast = (0..trials)
            .filter(|_| bernoulli_exp(&num, &den, &mut rng))
            .count();
        let (bn, bd) = (UBig::from(num), UBig::from(den));
        let slow = (0..trials)
            .filter(|_| bernoulli_exp(&bn, &bd, &mut rng))
            .count();
        let p = (-3.0f64 / 7.0).exp();
        let sd = (p * (1.0 - p) / trials as f64).sqrt();
        for hits in [fast, slow] {
            assert!((hits as f64 / trials as f64 - p).abs() < 5.0 * sd);
        }
    }

    #[test]
    fn ratios_round_up_and_reject_nonsense() {
        let r = Ratio::at_least(1.5).unwrap();
        assert_eq!(r.to_f64(), 1.5);
        assert!(Ratio::at_least(0.1).unwrap().to_f64() >= 0.1);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(Ratio::at_least(bad).is_err(), "{bad}");
        }
        assert!(Ratio::new(1, 0).is_err());
    }
}
