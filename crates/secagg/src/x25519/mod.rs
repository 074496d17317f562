//! X25519 of one secret with many peers' public keys.
//!
//! A SecAgg+ site agrees with each of its k neighbours twice per round (share keys, then
//! mask keys), and at 10,000 simulated sites those agreements were a quarter of all
//! CPU. On CPUs with AVX-512 IFMA eight ladders run at once ([`ifma`]), a ragged end of
//! three or more keys padded to eight; elsewhere, and for a ragged end of one or two
//! keys, each agreement goes to AWS-LC one by one.

#[cfg(target_arch = "x86_64")]
mod ifma;

use zeroize::Zeroizing;

/// Whether this CPU runs the eight-lane ladder.
pub(crate) fn has_ifma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512ifma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The shortest ragged end worth a whole eight-lane ladder: eight lanes take about as
/// long as 2.5 agreements one by one (`cargo bench -p tessera-secagg --bench agreement`).
const PAD_FROM: usize = 3;

/// X25519(`scalar`, u) for every u in `us`, eight at a time where the CPU allows (a
/// ragged end of at least [`PAD_FROM`] keys fills the spare lanes with copies of its
/// last key); the `None`s are the rest, left to the caller's one-by-one path.
pub(crate) fn batch(scalar: &[u8; 32], us: &[[u8; 32]]) -> Vec<Option<Zeroizing<[u8; 32]>>> {
    let mut out: Vec<Option<Zeroizing<[u8; 32]>>> = us.iter().map(|_| None).collect();
    #[cfg(not(target_arch = "x86_64"))]
    let _ = scalar;
    #[cfg(target_arch = "x86_64")]
    if has_ifma() {
        for (chunk, slots) in us.chunks(8).zip(out.chunks_mut(8)) {
            if chunk.len() < PAD_FROM {
                break;
            }
            let lanes: [[u8; 32]; 8] = core::array::from_fn(|i| chunk[i.min(chunk.len() - 1)]);
            // SAFETY: AVX-512F and IFMA were detected above.
            let shared = Zeroizing::new(unsafe { ifma::ladder8(scalar, &lanes) });
            for (slot, s) in slots.iter_mut().zip(shared.iter()) {
                *slot = Some(Zeroizing::new(*s));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::tests::{check_rfc7748_iterated, hex32};
    use crate::crypto::x25519;
    use rand_core::{Rng, SeedableRng};

    /// Whether the eight-lane ladder can be tested here; says so when it cannot.
    fn ifma_or_say() -> bool {
        let ifma = has_ifma();
        if !ifma {
            eprintln!("this CPU has no AVX-512 IFMA: the eight-lane ladder was not tested");
        }
        ifma
    }

    /// The eight-lane ladder equals `curve25519-dalek`'s X25519 on random scalars and
    /// points, on u ≥ p (non-canonical, reduced as RFC 7748 asks), on u with bit 255 set,
    /// and on the low-order points (whose output is zero).
    #[test]
    fn eight_lanes_agree_with_dalek() {
        if !ifma_or_say() {
            return;
        }
        let mut rng = chacha20::ChaCha20Rng::from_seed([7; 32]);
        let mut special: Vec<[u8; 32]> = vec![[0; 32], [0xff; 32]];
        let mut one = [0u8; 32];
        one[0] = 1;
        special.push(one);
        // p, p + 1, 2^255 − 1 (≥ p), and the order-8 point of RFC 7748's list.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        special.push(p);
        let mut p1 = p;
        p1[0] = 0xee;
        special.push(p1);
        let mut top = [0xffu8; 32];
        top[31] = 0x7f;
        special.push(top);
        special.push(hex32(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        ));
        for round in 0..200 {
            let mut scalar = [0u8; 32];
            rng.fill_bytes(&mut scalar);
            let mut us: Vec<[u8; 32]> = (0..16)
                .map(|_| {
                    let mut u = [0u8; 32];
                    rng.fill_bytes(&mut u);
                    u
                })
                .collect();
            if round < special.len() {
                us[round % 16] = special[round];
                us[(round + 5) % 16] = special[(round + 1) % special.len()];
            }
            let got = batch(&scalar, &us);
            for (u, g) in us.iter().zip(&got) {
                let g = g.as_ref().expect("full batches of eight");
                assert_eq!(**g, x25519(scalar, *u), "scalar {scalar:?} u {u:?}");
            }
        }
    }

    /// Every batch size: the lanes the ladder covers (all but a ragged end shorter than
    /// `PAD_FROM`) equal `curve25519-dalek`'s X25519, whatever fills the spare lanes.
    #[test]
    fn ragged_ends_fill_the_spare_lanes() {
        if !ifma_or_say() {
            return;
        }
        let mut rng = chacha20::ChaCha20Rng::from_seed([9; 32]);
        let mut scalar = [0u8; 32];
        rng.fill_bytes(&mut scalar);
        for n in 0..=19 {
            let us: Vec<[u8; 32]> = (0..n)
                .map(|_| {
                    let mut u = [0u8; 32];
                    rng.fill_bytes(&mut u);
                    u
                })
                .collect();
            let got = batch(&scalar, &us);
            assert_eq!(got.len(), n);
            let covered = if n % 8 >= PAD_FROM { n } else { n - n % 8 };
            for (i, (u, g)) in us.iter().zip(&got).enumerate() {
                match g {
                    Some(g) => assert_eq!(**g, x25519(scalar, *u), "n = {n}, lane {i}"),
                    None => assert!(i >= covered, "n = {n}: lane {i} left out"),
                }
            }
            assert_eq!(got.iter().flatten().count(), covered, "n = {n}");
        }
    }

    /// RFC 7748 §5.2: 1,000 iterations of k, u ← X25519(k, u), k, starting from k = u = 9.
    #[test]
    fn rfc7748_iterated() {
        if !ifma_or_say() {
            return;
        }
        check_rfc7748_iterated(|k, u| {
            let out = batch(&k, &[u; 8]);
            let lanes: Vec<[u8; 32]> = out.iter().flatten().map(|s| **s).collect();
            assert_eq!(lanes.len(), 8, "a full batch");
            assert!(lanes.iter().all(|l| *l == lanes[0]), "lanes disagree");
            lanes[0]
        });
    }
}
