//! Retained masked uploads, tested for uniformity: a masked value is uniform on
//! Z_{2^b} to anyone without the masks, so structured data (a plaintext update, zeros)
//! shows as a χ² far in the tail.

use std::path::{Path, PathBuf};
use tessera_fl::wire::{self, ToCoordinator};
use tessera_net::transcript::{Entry, Record, sha256_hex};
use tessera_secagg::Body;

use crate::Uniformity;

/// Below this p-value a retained upload is reported as not uniform.
pub const ALPHA: f64 = 1e-6;

fn payload_dir(transcript: &Path) -> PathBuf {
    let mut name = transcript.as_os_str().to_owned();
    name.push(".payloads");
    PathBuf::from(name)
}

/// χ² statistic over 256 bins of each value's top 8 bits, and its p-value.
pub fn uniformity(words: &[u32], bits: u8) -> (f64, f64) {
    let shift = u32::from(bits.saturating_sub(8));
    let bins = 1usize << bits.min(8);
    let mut counts = vec![0f64; bins];
    for w in words {
        counts[((w >> shift) as usize) & (bins - 1)] += 1.0;
    }
    let expected = words.len() as f64 / bins as f64;
    let x2 = counts
        .iter()
        .map(|c| (c - expected).powi(2) / expected)
        .sum::<f64>();
    (x2, chi_square_p(x2, (bins - 1) as f64))
}

/// Upper-tail p-value of χ² with `k` degrees of freedom (Wilson–Hilferty; accurate to
/// about 10^-3 relative for k ≥ 30, ample for a 10^-6 threshold).
pub fn chi_square_p(x2: f64, k: f64) -> f64 {
    let z = ((x2 / k).cbrt() - (1.0 - 2.0 / (9.0 * k))) / (2.0 / (9.0 * k)).sqrt();
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Tests every retained upload of a transcript that kept them; problems go to `find`.
pub(crate) fn retained(
    transcript: &Path,
    records: &[Record],
    find: &mut dyn FnMut(u64, String),
) -> Vec<Uniformity> {
    let keeps = records
        .iter()
        .any(|r| matches!(&r.entry, Entry::Open(o) if o.keep_payloads));
    if !keeps {
        return Vec::new();
    }
    let dir = payload_dir(transcript);
    let mut out = Vec::new();
    for r in records {
        let Entry::Message { kind, sha256, .. } = &r.entry else {
            continue;
        };
        if kind != "masked-input" {
            continue;
        }
        let path = dir.join(format!("{}.bin", r.seq));
        let Ok(bytes) = std::fs::read(&path) else {
            find(r.seq, format!("{} is missing", path.display()));
            continue;
        };
        if &sha256_hex(&bytes) != sha256 {
            find(
                r.seq,
                format!("{} is not the upload recorded", path.display()),
            );
            continue;
        }
        let Ok(ToCoordinator::SecAgg(env)) = wire::decode::<ToCoordinator>(&bytes) else {
            find(r.seq, format!("{} does not decode", path.display()));
            continue;
        };
        let Body::MaskedInput(upload) = env.body else {
            find(r.seq, format!("{} is not a masked input", path.display()));
            continue;
        };
        let words = upload.vector.as_slice();
        // χ² needs about five expected values per bin to mean anything.
        if words.len() < 5 * 256 {
            continue;
        }
        let (chi_square, p_value) = uniformity(words, upload.vector.modulus().bits());
        if p_value < ALPHA {
            find(
                r.seq,
                format!("masked upload not uniform: χ² = {chi_square:.1}, p = {p_value:.2e}"),
            );
        }
        out.push(Uniformity {
            seq: r.seq,
            values: words.len(),
            chi_square,
            p_value,
        });
    }
    out
}
