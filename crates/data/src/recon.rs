//! Reconstruction: the kernel's blur and the noise it shapes.
//!
//! Filtered back-projection passes quantum noise through a ramp filter (which removes its
//! mean: CT noise has no power at zero frequency) and then through the reconstruction
//! kernel (which removes its finest grain). The result is band-pass noise: grainy with
//! a sharp lung kernel, blotchy with a smooth soft-tissue kernel, never white. Tessera
//! models the ramp as "identity minus a Gaussian of width `ramp_mm`" and the kernel as a
//! Gaussian of width `kernel_mm`, so the noise filter is a difference of Gaussians,
//! `G(kernel) − G(√(kernel² + ramp²))`, scaled so the noise has the requested standard
//! deviation exactly (from the filter's own taps, not from the sample).

use chacha20::ChaCha20Rng;

use crate::synth::normal;

/// Gaussian taps of width `sigma` (pixels) on `-r..=r`, normalised to sum 1; a
/// `sigma` this small is the identity.
fn taps(sigma: f32, r: isize) -> Vec<f32> {
    if sigma < 0.05 {
        return (-r..=r).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    }
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = k.iter().sum();
    k.into_iter().map(|v| v / norm).collect()
}

/// Separable convolution of a row-major `h × w` image with symmetric `kernel`
/// (edges clamped).
fn convolve(img: &mut [f32], h: usize, w: usize, kernel: &[f32]) {
    let r = (kernel.len() / 2) as isize;
    let mut tmp = vec![0f32; img.len()];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = (-r..=r)
                .map(|i| {
                    kernel[(i + r) as usize]
                        * img[y * w + (x as isize + i).clamp(0, w as isize - 1) as usize]
                })
                .sum();
        }
    }
    for y in 0..h {
        for x in 0..w {
            img[y * w + x] = (-r..=r)
                .map(|i| {
                    kernel[(i + r) as usize]
                        * tmp[(y as isize + i).clamp(0, h as isize - 1) as usize * w + x]
                })
                .sum();
        }
    }
}

/// Separable Gaussian blur of a row-major `h × w` image (edges clamped).
pub(crate) fn gaussian_blur(img: &mut [f32], h: usize, w: usize, sigma: f32) {
    let r = (3.0 * sigma).ceil().max(1.0) as isize;
    convolve(img, h, w, &taps(sigma, r));
}

/// The noise filter of a kernel: two Gaussians (kernel, kernel ∘ ramp) and the factor
/// that gives its output unit variance from unit white noise.
#[derive(Clone, Debug)]
pub(crate) struct NoiseFilter {
    fine: Vec<f32>,
    coarse: Vec<f32>,
    gain: f32,
}

impl NoiseFilter {
    /// Widths in pixels of the final grid.
    pub fn new(kernel_px: f32, ramp_px: f32) -> Self {
        let coarse_sigma = (kernel_px * kernel_px + ramp_px * ramp_px).sqrt();
        let r = (3.0 * coarse_sigma).ceil().max(1.0) as isize;
        let (fine, coarse) = (taps(kernel_px, r), taps(coarse_sigma, r));
        // The 2-D filter is fine⊗fine − coarse⊗coarse; its taps' squared sum is the
        // variance it gives unit white noise (away from the edges).
        let mut power = 0f64;
        for (fi, ci) in fine.iter().zip(&coarse) {
            for (fj, cj) in fine.iter().zip(&coarse) {
                power += f64::from(fi * fj - ci * cj).powi(2);
            }
        }
        Self {
            fine,
            coarse,
            gain: (1.0 / power.sqrt()) as f32,
        }
    }

    /// Adds noise of standard deviation `sd` to an `n × n` slice.
    pub fn add(&self, img: &mut [f32], n: usize, sd: f32, rng: &mut ChaCha20Rng) {
        let white: Vec<f32> = (0..n * n).map(|_| normal(rng)).collect();
        let mut fine = white.clone();
        convolve(&mut fine, n, n, &self.fine);
        let mut coarse = white;
        convolve(&mut coarse, n, n, &self.coarse);
        let scale = sd * self.gain;
        for ((v, f), c) in img.iter_mut().zip(&fine).zip(&coarse) {
            *v += (f - c) * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    /// Standard deviation and lag-1 (horizontal) autocorrelation of the noise the
    /// filter adds to a blank image.
    fn texture(kernel_px: f32) -> (f32, f32) {
        let n = 96;
        let mut img = vec![0f32; n * n];
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        NoiseFilter::new(kernel_px, 2.0).add(&mut img, n, 20.0, &mut rng);
        // Stay away from the clamped edges.
        let inner: Vec<(f32, f32)> = (8..n - 8)
            .flat_map(|y| (8..n - 9).map(move |x| (y, x)))
            .map(|(y, x)| (img[y * n + x], img[y * n + x + 1]))
            .collect();
        let m = inner.len() as f32;
        let var = inner.iter().map(|(a, _)| a * a).sum::<f32>() / m;
        let cov = inner.iter().map(|(a, b)| a * b).sum::<f32>() / m;
        (var.sqrt(), cov / var)
    }

    #[test]
    fn noise_has_the_requested_sd_and_the_kernel_shapes_its_grain() {
        let (sharp_sd, sharp_rho) = texture(0.0);
        let (smooth_sd, smooth_rho) = texture(1.5);
        assert!((sharp_sd - 20.0).abs() < 1.0, "sharp sd {sharp_sd}");
        assert!((smooth_sd - 20.0).abs() < 1.5, "smooth sd {smooth_sd}");
        // White noise would give ρ ≈ 0 for both; the smooth kernel correlates
        // neighbours strongly, the sharp one leaves fine, slightly anti-correlated grain.
        assert!(
            smooth_rho > 0.6,
            "smooth kernel lag-1 correlation {smooth_rho}"
        );
        assert!(
            sharp_rho < 0.0,
            "sharp kernel lag-1 correlation {sharp_rho}"
        );
    }

    #[test]
    fn blur_preserves_the_mean_and_smooths() {
        let mut img = vec![0f32; 16 * 16];
        img[8 * 16 + 8] = 256.0;
        gaussian_blur(&mut img, 16, 16, 1.5);
        let total: f32 = img.iter().sum();
        assert!((total - 256.0).abs() < 1e-2);
        assert!(img[8 * 16 + 8] < 256.0 && img[8 * 16 + 9] > 0.0);
    }
}
