//! Ed25519 verification (RFC 8032 §5.1.7) with the group equation as the RFC writes it,
//! `[8][S]B = [8]R + [8][k]A`, one signature at a time or many at once.
//!
//! Why not AWS-LC's check (AWS-LC still signs): in a SecAgg+ round each site checks
//! every neighbour's advertisement and t survivor-set signatures, and at 10,000 sites
//! those checks were the largest share of a site's CPU after the masks. Checked
//! together, as one multi-scalar multiplication with random weights, they cost about
//! half as much. A batch agrees with one-by-one checks only under the cofactored
//! equation (Chalkias, Garillot and Nikolaenko, "Taming the many EdDSAs", 2020), so
//! every check here uses it, single ones too: whether a signature verifies never
//! depends on what it was checked with.
//!
//! Decoding is strict: `S < L`; `A` and `R` are canonical encodings (`y < p`) of points
//! that are not of small order. Every RFC 8032 signer's signatures pass. AWS-LC's own
//! check, which omits the cofactor, can disagree only on a signature its signer built
//! with a small-order component on purpose; nobody can make one for another's key.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ring::digest;

use crate::crypto::{IdentityPublicKey, Signature};

/// A public key decoded once for many checks (`None`: not a valid key, so nothing
/// verifies under it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct VerifyingKey {
    bytes: [u8; 32],
    point: Option<EdwardsPoint>,
}

impl VerifyingKey {
    pub(crate) fn new(key: &IdentityPublicKey) -> Self {
        Self {
            bytes: key.0,
            point: decode_point(&key.0),
        }
    }
}

/// One signature to check.
pub(crate) struct Claim<'a> {
    pub key: &'a VerifyingKey,
    pub message: &'a [u8],
    pub signature: &'a Signature,
}

/// A claim's decoded parts: `R`, `S`, `A` and `k = SHA-512(R ‖ A ‖ M) mod L`.
struct Decoded {
    r: EdwardsPoint,
    s: Scalar,
    a: EdwardsPoint,
    k: Scalar,
}

/// The point `bytes` encodes, if the encoding is canonical and the point is not of
/// small order.
fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if !canonical_y(bytes) {
        return None;
    }
    CompressedEdwardsY(*bytes)
        .decompress()
        .filter(|p| !p.is_small_order())
}

/// Whether the encoded y (the low 255 bits) is below p = 2^255 − 19. The sign bit on
/// x = 0 needs no check of its own: x = 0 only for y = ±1, both of small order.
fn canonical_y(bytes: &[u8; 32]) -> bool {
    let top = bytes[31] & 0x7f;
    let middle_all_ones = bytes[1..31].iter().all(|b| *b == 0xff);
    !(top == 0x7f && middle_all_ones && bytes[0] >= 0xed)
}

fn decode(claim: &Claim<'_>) -> Option<Decoded> {
    let a = claim.key.point?;
    let sig = &claim.signature.0;
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&sig[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&sig[32..]);
    let r = decode_point(&r_bytes)?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let mut h = digest::Context::new(&digest::SHA512);
    h.update(&r_bytes);
    h.update(&claim.key.bytes);
    h.update(claim.message);
    let mut wide = [0u8; 64];
    wide.copy_from_slice(h.finish().as_ref());
    let k = Scalar::from_bytes_mod_order_wide(&wide);
    Some(Decoded { r, s, a, k })
}

/// `[8]([S]B − [k]A − R)` is the identity.
fn holds(d: &Decoded) -> bool {
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-d.k, &d.a, &d.s);
    (sb_minus_ka - d.r).mul_by_cofactor().is_identity()
}

/// Checks one signature.
pub(crate) fn verify(claim: &Claim<'_>) -> bool {
    decode(claim).is_some_and(|d| holds(&d))
}

/// Checks every claim: `Ok` if all hold, otherwise the index of the first that fails
/// on its own.
pub(crate) fn verify_all(claims: &[Claim<'_>]) -> Result<(), usize> {
    let mut decoded = Vec::with_capacity(claims.len());
    for (i, claim) in claims.iter().enumerate() {
        decoded.push(decode(claim).ok_or(i)?);
    }
    match decoded.as_slice() {
        [] => return Ok(()),
        [one] => return if holds(one) { Ok(()) } else { Err(0) },
        _ => {}
    }
    if batch_holds(claims, &decoded) {
        return Ok(());
    }
    // The batch equation is a weighted sum of the single ones, so some claim fails on
    // its own; the fallback names it.
    Err(decoded.iter().position(|d| !holds(d)).unwrap_or(0))
}

/// `[8](Σ z_i R_i + Σ z_i k_i A_i − (Σ z_i S_i) B)` is the identity, for 128-bit
/// weights z_i drawn from a hash of the whole batch: fixed only once every signature
/// is, so a set of invalid signatures that cancel out for the weights cannot be
/// chosen, except with probability about 2^-128 per attempt.
fn batch_holds(claims: &[Claim<'_>], decoded: &[Decoded]) -> bool {
    let weights = weights(claims, decoded);
    let mut scalars = Vec::with_capacity(2 * decoded.len() + 1);
    let mut points = Vec::with_capacity(2 * decoded.len() + 1);
    let mut base = Scalar::ZERO;
    for (d, z) in decoded.iter().zip(&weights) {
        base -= z * d.s;
        scalars.push(*z);
        points.push(d.r);
        scalars.push(z * d.k);
        points.push(d.a);
    }
    scalars.push(base);
    points.push(ED25519_BASEPOINT_POINT);
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points)
        .mul_by_cofactor()
        .is_identity()
}

/// One 128-bit weight per claim: the ChaCha20 keystream under SHA-256 of a label and
/// every claim's signature, key and `k` (which binds its message).
fn weights(claims: &[Claim<'_>], decoded: &[Decoded]) -> Vec<Scalar> {
    let mut h = digest::Context::new(&digest::SHA256);
    h.update(b"tessera ed25519 batch weights v1");
    for (c, d) in claims.iter().zip(decoded) {
        h.update(&c.signature.0);
        h.update(&c.key.bytes);
        h.update(d.k.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(h.finish().as_ref());
    let mut stream = ChaCha20::new(&key.into(), &[0u8; 12].into());
    decoded
        .iter()
        .map(|_| {
            let mut z = [0u8; 32];
            stream.apply_keystream(&mut z[..16]);
            Scalar::from_bytes_mod_order(z)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::IdentityKeyPair;
    use chacha20::ChaCha20Rng;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use rand_core::{Rng, SeedableRng};

    struct Signed {
        key: VerifyingKey,
        message: Vec<u8>,
        signature: Signature,
    }

    fn claims(signed: &[Signed]) -> Vec<Claim<'_>> {
        signed
            .iter()
            .map(|s| Claim {
                key: &s.key,
                message: &s.message,
                signature: &s.signature,
            })
            .collect()
    }

    /// `n` AWS-LC signatures by distinct keys over messages of different lengths.
    fn signed(n: usize, seed: u8) -> Vec<Signed> {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        (0..n)
            .map(|i| {
                let id = IdentityKeyPair::generate(&mut rng);
                let mut message = vec![0u8; i * 7];
                rng.fill_bytes(&mut message);
                Signed {
                    key: VerifyingKey::new(&id.public()),
                    signature: id.sign(&message),
                    message,
                }
            })
            .collect()
    }

    /// A signature whose R carries an 8-torsion component: S = r + k·a for
    /// R = [r]B + T, so [S]B − [k]A − R = −T. Only its signer can build one.
    fn torsioned(message: &[u8]) -> Signed {
        let a = Scalar::from(0x1234_5678_9abc_u64);
        let a_point = EdwardsPoint::mul_base(&a);
        let key = IdentityPublicKey(a_point.compress().to_bytes());
        let r = Scalar::from(0xfeed_beef_u64);
        let r_point = EdwardsPoint::mul_base(&r) + EIGHT_TORSION[1];
        let r_bytes = r_point.compress().to_bytes();
        let mut h = digest::Context::new(&digest::SHA512);
        h.update(&r_bytes);
        h.update(&key.0);
        h.update(message);
        let mut wide = [0u8; 64];
        wide.copy_from_slice(h.finish().as_ref());
        let s = r + Scalar::from_bytes_mod_order_wide(&wide) * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice(s.as_bytes());
        Signed {
            key: VerifyingKey::new(&key),
            message: message.to_vec(),
            signature: Signature(sig),
        }
    }

    #[test]
    fn every_rfc8032_signature_verifies_alone_and_together() {
        let all = signed(40, 1);
        for c in claims(&all) {
            assert!(verify(&c));
        }
        assert_eq!(verify_all(&claims(&all)), Ok(()));
        assert_eq!(verify_all(&claims(&all[..1])), Ok(()));
        assert_eq!(verify_all(&[]), Ok(()));
    }

    #[test]
    fn a_bad_claim_fails_the_batch_and_is_named() {
        let mut all = signed(12, 2);
        all[6].message.push(0);
        assert!(!verify(&claims(&all)[6]));
        assert_eq!(verify_all(&claims(&all)), Err(6));
        let mut all = signed(12, 3);
        let (a, b) = (all[3].signature, all[9].signature);
        all[3].signature = b;
        all[9].signature = a;
        assert_eq!(verify_all(&claims(&all)), Err(3));
        let mut all = signed(12, 4);
        all[11].key = all[10].key;
        assert_eq!(verify_all(&claims(&all)), Err(11));
    }

    /// Two invalid signatures whose errors cancel in an unweighted sum: S_1 + δ and
    /// S_2 − δ. Only the random weights catch them.
    #[test]
    fn errors_that_cancel_without_weights_are_caught() {
        let mut all = signed(8, 5);
        let delta = Scalar::from(77u64);
        for (i, d) in [(2, delta), (5, -delta)] {
            let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(
                all[i].signature.0[32..].try_into().unwrap(),
            ))
            .unwrap();
            all[i].signature.0[32..].copy_from_slice((s + d).as_bytes());
        }
        assert_eq!(verify_all(&claims(&all)), Err(2));
        assert_eq!(verify_all(&claims(&all[2..6])), Err(0));
    }

    /// The cofactored equation, alone and in a batch alike; AWS-LC's cofactorless
    /// check refuses the same signature.
    #[test]
    fn small_order_components_are_judged_by_the_cofactored_equation() {
        let t = torsioned(b"survivors");
        let claim = &claims(std::slice::from_ref(&t))[0];
        assert!(verify(claim));
        let mut all = signed(5, 6);
        all.push(torsioned(b"survivors"));
        assert_eq!(verify_all(&claims(&all)), Ok(()));
        let aws = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ED25519,
            &t.key.bytes,
        );
        assert!(aws.verify(&t.message, &t.signature.0).is_err());
        // A different message under the same R: refused alone and in a batch.
        let mut other = torsioned(b"survivors");
        other.message = b"survivorz".to_vec();
        assert!(!verify(&claims(std::slice::from_ref(&other))[0]));
        all.push(other);
        assert_eq!(verify_all(&claims(&all)), Err(6));
    }

    #[test]
    fn decoding_is_strict() {
        let mut all = signed(3, 7);
        // S + L: the same scalar, not canonically encoded.
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(
            all[1].signature.0[32..].try_into().unwrap(),
        ))
        .unwrap();
        let l_bytes = {
            // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
            let mut l = [0u8; 32];
            let hex = "edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010";
            for (i, b) in l.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            l
        };
        let mut sum = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(s.as_bytes()[i]) + u16::from(l_bytes[i]) + carry;
            sum[i] = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "S + L fits in 256 bits");
        all[1].signature.0[32..].copy_from_slice(&sum);
        assert!(!verify(&claims(&all)[1]));
        assert_eq!(verify_all(&claims(&all)), Err(1));
        // Small-order keys: the identity (y = 1) and the point of order 2 (y = −1).
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(VerifyingKey::new(&IdentityPublicKey(one)).point.is_none());
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        assert!(
            VerifyingKey::new(&IdentityPublicKey(minus_one))
                .point
                .is_none()
        );
    }

    /// A point with a small y has a second, non-canonical encoding y + p; only the
    /// canonical one decodes.
    #[test]
    fn only_canonical_encodings_decode() {
        let (point, y) = (2u8..19)
            .find_map(|y| {
                let mut enc = [0u8; 32];
                enc[0] = y;
                decode_point(&enc).map(|p| (p, y))
            })
            .expect("some y below 19 is on the curve");
        // y + p = y + 2^255 − 19 = (y − 19) + 2^255: low byte y + 0xed, then 0xff…, 0x7f.
        let mut alias = [0xffu8; 32];
        alias[0] = y + 0xed;
        alias[31] = 0x7f;
        assert!(!canonical_y(&alias));
        let decoded = CompressedEdwardsY(alias).decompress();
        assert_eq!(decoded, Some(point), "dalek alone would accept the alias");
        assert!(decode_point(&alias).is_none());
    }
}
