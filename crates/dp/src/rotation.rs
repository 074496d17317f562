//! The randomised Walsh–Hadamard rotation x ↦ H·D·x / √m.
//!
//! D is a diagonal of random signs drawn from public per-round randomness and H the
//! m × m Walsh–Hadamard matrix, m the dimension padded to a power of two. The rotation
//! is orthonormal, so it keeps L2 norms, and it spreads a vector's mass evenly over the
//! coordinates: each rotated coordinate is sub-Gaussian with variance proxy ‖x‖²/m.
//! That flattening is what lets a few bits per coordinate hold the noisy sum.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// A rotation for vectors of one dimension, fixed by its seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotation {
    dim: usize,
    signs: Vec<f64>,
}

impl Rotation {
    pub fn new(dim: usize, seed: [u8; 32]) -> Self {
        let padded = dim.max(1).next_power_of_two();
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut signs = Vec::with_capacity(padded);
        while signs.len() < padded {
            let bits = rng.next_u64();
            for i in 0..64.min(padded - signs.len()) {
                signs.push(if (bits >> i) & 1 == 1 { -1.0 } else { 1.0 });
            }
        }
        Self { dim, signs }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The padded dimension m, a power of two.
    pub fn padded(&self) -> usize {
        self.signs.len()
    }

    /// H·D·x / √m of `x` zero-padded to m coordinates.
    pub fn forward(&self, x: &[f32]) -> Vec<f64> {
        self.forward_iter(x.iter().map(|&v| f64::from(v)))
    }

    /// [`Self::forward`] of a vector held in f64.
    pub fn forward_f64(&self, x: &[f64]) -> Vec<f64> {
        self.forward_iter(x.iter().copied())
    }

    fn forward_iter(&self, x: impl Iterator<Item = f64>) -> Vec<f64> {
        let mut y: Vec<f64> = x
            .chain(std::iter::repeat(0.0))
            .take(self.padded())
            .zip(&self.signs)
            .map(|(v, s)| v * s)
            .collect();
        walsh_hadamard(&mut y);
        y
    }

    /// The inverse, D·H·y / √m, truncated to the original dimension.
    pub fn inverse(&self, mut y: Vec<f64>) -> Vec<f64> {
        walsh_hadamard(&mut y);
        y.truncate(self.dim);
        for (v, s) in y.iter_mut().zip(&self.signs) {
            *v *= s;
        }
        y
    }
}

/// In-place orthonormal fast Walsh–Hadamard transform (length a power of two).
fn walsh_hadamard(y: &mut [f64]) {
    let n = y.len();
    let mut h = 1;
    while h < n {
        for block in y.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (x, z) in a.iter_mut().zip(b.iter_mut()) {
                let (s, d) = (*x + *z, *x - *z);
                *x = s;
                *z = d;
            }
        }
        h *= 2;
    }
    let norm = 1.0 / (n as f64).sqrt();
    for v in y.iter_mut() {
        *v *= norm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_orthonormal_and_invertible() {
        for dim in [1usize, 3, 8, 1000] {
            let r = Rotation::new(dim, [7; 32]);
            assert!(r.padded().is_power_of_two() && r.padded() >= dim);
            let x: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
            let y = r.forward(&x);
            let nx: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
            let ny: f64 = y.iter().map(|v| v * v).sum();
            assert!((nx - ny).abs() < 1e-9 * nx.max(1.0), "{dim}: {nx} vs {ny}");
            let back = r.inverse(y);
            for (a, b) in x.iter().zip(&back) {
                assert!((f64::from(*a) - b).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn rotation_flattens_a_spike() {
        let r = Rotation::new(1024, [1; 32]);
        let mut x = vec![0f32; 1024];
        x[17] = 1.0;
        let y = r.forward(&x);
        let expected = 1.0 / 32.0;
        assert!(y.iter().all(|v| (v.abs() - expected).abs() < 1e-12));
        // Different seeds give different sign patterns.
        assert_ne!(y, Rotation::new(1024, [2; 32]).forward(&x));
    }
}
