//! Shamir t-of-n secret sharing over the Curve25519 scalar field (order
//! ℓ = 2^252 + 27742317777372353535851937790883648493).
//!
//! The share held by site `i` is f(i + 1) for a random polynomial f of degree t − 1 with
//! f(0) = secret; x = i + 1 keeps every evaluation point non-zero and distinct.

use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRng;
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;
use zeroize::Zeroize;

use crate::crypto::random_scalar;
use crate::error::AbortReason;
use crate::ids::{Phase, SiteId};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ShamirError {
    #[error("{have} shares cannot reconstruct a {threshold}-of-n secret")]
    TooFewShares { have: usize, threshold: usize },
    #[error("two shares claim the same holder ({0})")]
    DuplicateHolder(SiteId),
    #[error("threshold {threshold} is not between 1 and the number of holders ({holders})")]
    BadThreshold { threshold: usize, holders: usize },
}

fn x_of(holder: SiteId) -> Scalar {
    Scalar::from(u64::from(holder.0) + 1)
}

/// Splits `secret` into one share per holder; any `threshold` of them reconstruct it.
pub fn share<R: CryptoRng + ?Sized>(
    secret: &Scalar,
    threshold: usize,
    holders: &[SiteId],
    rng: &mut R,
) -> Result<Vec<(SiteId, Scalar)>, ShamirError> {
    if threshold == 0 || threshold > holders.len() {
        return Err(ShamirError::BadThreshold {
            threshold,
            holders: holders.len(),
        });
    }
    let mut coefficients: Vec<Scalar> = Vec::with_capacity(threshold);
    coefficients.push(*secret);
    for _ in 1..threshold {
        coefficients.push(random_scalar(rng));
    }
    let shares = holders
        .iter()
        .map(|&h| {
            let x = x_of(h);
            // Horner's rule from the highest coefficient down.
            let y = coefficients
                .iter()
                .rev()
                .fold(Scalar::ZERO, |acc, c| acc * x + c);
            (h, y)
        })
        .collect();
    coefficients.zeroize();
    Ok(shares)
}

/// Lagrange interpolation at zero from exactly the first `threshold` shares.
pub fn reconstruct(shares: &[(SiteId, Scalar)], threshold: usize) -> Result<Scalar, ShamirError> {
    Interpolator::new(threshold).reconstruct(shares)
}

/// Reconstructs many secrets, computing the Lagrange coefficients (O(t²)) once per set
/// of holders: in SecAgg every secret of a round is usually rebuilt from the same holders.
pub struct Interpolator {
    threshold: usize,
    coefficients: HashMap<Vec<SiteId>, Vec<Scalar>>,
}

impl Interpolator {
    pub fn new(threshold: usize) -> Self {
        Self {
            threshold,
            coefficients: HashMap::new(),
        }
    }

    /// f(0) from the first `threshold` shares whose result `check` accepts: the first
    /// t shares, then other t-subsets (at most `max_tries` in all), so that a few wrong
    /// shares cannot spoil a reconstruction that t honest shares make. `Ok(None)` when
    /// no subset tried passes.
    pub fn reconstruct_checked(
        &mut self,
        shares: &[(SiteId, Scalar)],
        max_tries: usize,
        check: impl Fn(&Scalar) -> bool,
    ) -> Result<Option<Scalar>, ShamirError> {
        let t = self.threshold;
        if shares.len() < t || t == 0 {
            return Err(ShamirError::TooFewShares {
                have: shares.len(),
                threshold: t,
            });
        }
        let mut pick: Vec<usize> = (0..t).collect();
        for _ in 0..max_tries {
            let subset: Vec<(SiteId, Scalar)> = pick.iter().map(|&i| shares[i]).collect();
            let secret = self.reconstruct(&subset)?;
            if check(&secret) {
                return Ok(Some(secret));
            }
            if !next_combination(&mut pick, shares.len()) {
                break;
            }
        }
        Ok(None)
    }

    /// f(0) from the first `threshold` shares.
    pub fn reconstruct(&mut self, shares: &[(SiteId, Scalar)]) -> Result<Scalar, ShamirError> {
        let t = self.threshold;
        if shares.len() < t || t == 0 {
            return Err(ShamirError::TooFewShares {
                have: shares.len(),
                threshold: t,
            });
        }
        let used = &shares[..t];
        let holders: Vec<SiteId> = used.iter().map(|(h, _)| *h).collect();
        let lambdas = match self.coefficients.get(&holders) {
            Some(l) => l,
            None => {
                let l = lagrange_at_zero(&holders)?;
                self.coefficients.entry(holders).or_insert(l)
            }
        };
        Ok(used
            .iter()
            .zip(lambdas)
            .fold(Scalar::ZERO, |acc, ((_, y), l)| acc + y * l))
    }
}

/// The next t-subset of 0..n in lexicographic order; false after the last.
fn next_combination(pick: &mut [usize], n: usize) -> bool {
    let t = pick.len();
    for i in (0..t).rev() {
        if pick[i] < n - t + i {
            pick[i] += 1;
            for j in i + 1..t {
                pick[j] = pick[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// λ_j = Π_{m≠j} x_m / (x_m − x_j) for distinct holders.
fn lagrange_at_zero(holders: &[SiteId]) -> Result<Vec<Scalar>, ShamirError> {
    for (i, a) in holders.iter().enumerate() {
        if holders[..i].contains(a) {
            return Err(ShamirError::DuplicateHolder(*a));
        }
    }
    let xs: Vec<Scalar> = holders.iter().map(|h| x_of(*h)).collect();
    let mut numerators = Vec::with_capacity(xs.len());
    let mut denominators = Vec::with_capacity(xs.len());
    for (j, xj) in xs.iter().enumerate() {
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (m, xm) in xs.iter().enumerate() {
            if m != j {
                num *= xm;
                den *= xm - xj;
            }
        }
        numerators.push(num);
        denominators.push(den);
    }
    // Distinct holders give distinct non-zero x, so no denominator is zero.
    Scalar::invert_batch_alloc(&mut denominators);
    Ok(numerators
        .iter()
        .zip(&denominators)
        .map(|(n, d)| n * d)
        .collect())
}

/// Subsets of revealed shares tried per secret before giving up: enough to route around
/// a few wrong shares, bounded so that a flood of them cannot stall the aggregator.
pub(crate) const MAX_SUBSETS: usize = 256;

/// `owner`'s secret from t revealed shares that `check` (its commitment) accepts: the
/// first t, then other t-subsets, so one site revealing a wrong share cannot abort a
/// round that t honest holders can finish; `InconsistentShares` when no subset tried
/// passes.
pub(crate) fn reconstruct_owner(
    interpolator: &mut Interpolator,
    revealed: &BTreeMap<SiteId, Vec<(SiteId, Scalar)>>,
    owner: SiteId,
    t: usize,
    what: &'static str,
    check: impl Fn(&Scalar) -> bool,
) -> Result<Scalar, AbortReason> {
    let shares = revealed.get(&owner).map(Vec::as_slice).unwrap_or_default();
    interpolator
        .reconstruct_checked(shares, MAX_SUBSETS, check)
        .map_err(|_| AbortReason::TooFewHolders {
            phase: Phase::Unmasking,
            owner,
            have: shares.len(),
            need: t,
        })?
        .ok_or(AbortReason::InconsistentShares { owner, what })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        fn go(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if cur.len() == k {
                out.push(cur.clone());
                return;
            }
            for i in start..n {
                cur.push(i);
                go(i + 1, n, k, cur, out);
                cur.pop();
            }
        }
        go(0, n, k, &mut cur, &mut out);
        out
    }

    #[test]
    fn every_t_subset_reconstructs_and_t_minus_one_does_not() {
        let mut rng = ChaCha20Rng::from_seed([11u8; 32]);
        for (n, t) in [(1usize, 1usize), (3, 2), (5, 3), (7, 4), (7, 7), (8, 5)] {
            let holders: Vec<SiteId> = (0..n as u32).map(|i| SiteId(i * 3 + 1)).collect();
            let secret = random_scalar(&mut rng);
            let shares = share(&secret, t, &holders, &mut rng).unwrap();
            for subset in subsets(n, t) {
                let picked: Vec<_> = subset.iter().map(|&i| shares[i]).collect();
                assert_eq!(
                    reconstruct(&picked, t).unwrap(),
                    secret,
                    "n={n} t={t} {subset:?}"
                );
                if t > 1 {
                    // Interpolating a degree-(t−2) polynomial through t−1 shares gives an
                    // unrelated value (equal only with probability 1/ℓ).
                    let fewer = &picked[..t - 1];
                    assert_eq!(
                        reconstruct(fewer, t).unwrap_err(),
                        ShamirError::TooFewShares {
                            have: t - 1,
                            threshold: t
                        }
                    );
                    assert_ne!(reconstruct(fewer, t - 1).unwrap(), secret);
                }
            }
        }
    }

    #[test]
    fn one_interpolator_serves_many_secrets_and_holder_sets() {
        let mut rng = ChaCha20Rng::from_seed([12u8; 32]);
        let holders: Vec<SiteId> = (0..9).map(SiteId).collect();
        let mut interpolator = Interpolator::new(5);
        for round in 0..6 {
            let secret = random_scalar(&mut rng);
            let mut shares = share(&secret, 5, &holders, &mut rng).unwrap();
            // alternate between two holder subsets so cached coefficients get reused
            shares.rotate_left(round % 2 * 3);
            assert_eq!(interpolator.reconstruct(&shares).unwrap(), secret);
        }
        assert_eq!(interpolator.coefficients.len(), 2);
    }

    #[test]
    fn rejects_bad_inputs() {
        let mut rng = ChaCha20Rng::from_seed([1u8; 32]);
        let holders = [SiteId(0), SiteId(1)];
        assert!(share(&Scalar::ONE, 0, &holders, &mut rng).is_err());
        assert!(share(&Scalar::ONE, 3, &holders, &mut rng).is_err());
        let shares = share(&Scalar::ONE, 2, &holders, &mut rng).unwrap();
        let dup = [shares[0], shares[0]];
        assert_eq!(
            reconstruct(&dup, 2).unwrap_err(),
            ShamirError::DuplicateHolder(SiteId(0))
        );
    }

    #[test]
    fn threshold_one_shares_are_the_secret() {
        let mut rng = ChaCha20Rng::from_seed([2u8; 32]);
        let secret = random_scalar(&mut rng);
        let shares = share(&secret, 1, &[SiteId(4), SiteId(9)], &mut rng).unwrap();
        assert!(shares.iter().all(|(_, y)| *y == secret));
    }
}
