//! Cryptographic building blocks, each used for exactly one purpose.
//!
//! - Identity: Ed25519 (RFC 8032) long-term keys sign advertised keys and the survivor
//!   set. AWS-LC signs (2.7× as fast as ring here, 15 vs 40 µs; signatures are
//!   deterministic, so the bytes are ring's); module `ed25519` verifies, one signature
//!   at a time or a site's many at once, always with the RFC's cofactored equation.
//! - Agreement: X25519 (RFC 7748) by AWS-LC; public keys from `curve25519-dalek`.
//! - Key derivation: HKDF-SHA256 (ring). The salt is the digest of the round parameters
//!   (which already binds session, round, participants, vector length, modulus, graph
//!   and threshold); the info string carries a purpose label and the parties.
//! - Share transport: ChaCha20-Poly1305 (ring), one fresh key per ordered pair and round.
//! - Mask expansion (module `mask`): the keystream of the round's signed [`MaskPrg`]
//!   (AES-256-CTR by default, or ChaCha20) keyed with the full 256-bit derived seed.

pub use crate::mask::{MaskPrg, MaskSeed, add_mask_stream, raw_keystream};
use aws_lc_rs::agreement::PrivateKey;
use aws_lc_rs::signature;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRng;
use ring::{aead, digest, hkdf};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::OnceLock;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ed25519;
use crate::ids::SiteId;

/// Failures of the cryptographic primitives.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("key agreement produced the all-zero point (a low-order public key)")]
    LowOrderPoint,
    #[error("authenticated decryption failed (forged or corrupted ciphertext)")]
    Decryption,
    #[error("signature does not verify")]
    BadSignature,
    #[error("invalid Ed25519 seed")]
    InvalidIdentitySeed,
    #[error("signature labels must be 1–255 bytes and outside tessera/secagg/")]
    ReservedLabel,
}

/// Purpose labels for key derivation and signatures (domain separation).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Purpose {
    ShareEncryption,
    PairwiseMask,
    SelfMask,
    MaskKeyFromSecret,
    SelfMaskCommitment,
    AdvertiseSignature,
    ConsistencySignature,
    Graph,
    Parameters,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::ShareEncryption => b"tessera/secagg/v1/share-encryption",
            Purpose::PairwiseMask => b"tessera/secagg/v1/pairwise-mask",
            Purpose::SelfMask => b"tessera/secagg/v1/self-mask",
            Purpose::MaskKeyFromSecret => b"tessera/secagg/v1/mask-key",
            Purpose::SelfMaskCommitment => b"tessera/secagg/v1/self-mask-commitment",
            Purpose::AdvertiseSignature => b"tessera/secagg/v1/advertise",
            Purpose::ConsistencySignature => b"tessera/secagg/v1/consistency",
            Purpose::Graph => b"tessera/secagg/v1/graph",
            Purpose::Parameters => b"tessera/secagg/v1/parameters",
        }
    }
}

/// Unambiguous encoding of a purpose and its fixed-width fields.
pub(crate) fn context_bytes(
    purpose: Purpose,
    params_digest: &[u8; 32],
    parties: &[SiteId],
) -> Vec<u8> {
    let label = purpose.label();
    let mut out = Vec::with_capacity(1 + label.len() + 32 + 4 * parties.len());
    out.push(label.len() as u8);
    out.extend_from_slice(label);
    out.extend_from_slice(params_digest);
    for p in parties {
        out.extend_from_slice(&p.0.to_be_bytes());
    }
    out
}

/// HKDF-SHA256(ikm, salt = parameter digest, info = purpose ‖ parties) → 32 bytes.
pub(crate) fn derive_key(
    ikm: &[u8],
    purpose: Purpose,
    params_digest: &[u8; 32],
    parties: &[SiteId],
) -> Zeroizing<[u8; 32]> {
    let info = context_bytes(purpose, params_digest, parties);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, params_digest).extract(ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    // A 32-byte output is always within HKDF-SHA256's 255·32-byte limit, so neither
    // call can fail.
    let info_parts = [info.as_slice()];
    let okm = prk
        .expand(&info_parts, hkdf::HKDF_SHA256)
        .expect("32-byte HKDF output");
    okm.fill(out.as_mut()).expect("32-byte HKDF output");
    out
}

/// SHA-256 of a domain-separated message.
pub(crate) fn hash(
    purpose: Purpose,
    params_digest: &[u8; 32],
    parties: &[SiteId],
    data: &[u8],
) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&context_bytes(purpose, params_digest, parties));
    ctx.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

// ---------------------------------------------------------------------------------------
// Identity (Ed25519)

/// A site's long-term Ed25519 identity key pair.
pub struct IdentityKeyPair {
    seed: Zeroizing<[u8; 32]>,
    pair: signature::Ed25519KeyPair,
}

impl IdentityKeyPair {
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, CryptoError> {
        let seed = Zeroizing::new(seed);
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .map_err(|_| CryptoError::InvalidIdentitySeed)?;
        Ok(Self { seed, pair })
    }

    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        // Every 32-byte string is a valid Ed25519 seed.
        Self::from_seed(*seed).expect("any 32 bytes are an Ed25519 seed")
    }

    /// The secret seed, for storing the key (handle with care).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public(&self) -> IdentityPublicKey {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(signature::KeyPair::public_key(&self.pair).as_ref());
        IdentityPublicKey(pk)
    }

    /// Signs `message` for a purpose outside secure aggregation (e.g. transcripts),
    /// domain-separated by `label` exactly as the protocol's own signatures are, so no
    /// such signature can be mistaken for one of the protocol's. Labels must not start
    /// with `tessera/secagg/`.
    pub fn sign_labelled(&self, label: &str, message: &[u8]) -> Result<Signature, CryptoError> {
        let msg = labelled(label, message)?;
        Ok(self.sign(&msg))
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        Signature(sig)
    }
}

impl std::fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A site's long-term Ed25519 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdentityPublicKey(pub [u8; 32]);

/// `len(label) ‖ label ‖ message`, refusing the protocol's own labels.
fn labelled(label: &str, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if label.starts_with("tessera/secagg/") || label.is_empty() || label.len() > 255 {
        return Err(CryptoError::ReservedLabel);
    }
    let mut out = Vec::with_capacity(1 + label.len() + message.len());
    out.push(label.len() as u8);
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

impl IdentityPublicKey {
    /// Verifies a signature made with [`IdentityKeyPair::sign_labelled`].
    pub fn verify_labelled(
        &self,
        label: &str,
        message: &[u8],
        sig: &Signature,
    ) -> Result<(), CryptoError> {
        self.verify(&labelled(label, message)?, sig)
    }

    /// RFC 8032 verification with the cofactored equation (module `ed25519`).
    pub(crate) fn verify(&self, message: &[u8], sig: &Signature) -> Result<(), CryptoError> {
        let claim = ed25519::Claim {
            key: &ed25519::VerifyingKey::new(self),
            message,
            signature: sig,
        };
        if ed25519::verify(&claim) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let arr: [u8; 64] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64 bytes"))?;
        Ok(Signature(arr))
    }
}

// ---------------------------------------------------------------------------------------
// X25519 agreement

/// An X25519 public key (Montgomery u-coordinate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AgreementPublicKey(pub [u8; 32]);

impl AgreementPublicKey {
    /// Whether every agreement with this key would give the all-zero secret: a
    /// low-order point (clamped scalars are multiples of the cofactor, so one test
    /// scalar decides it for all).
    pub fn is_low_order(&self) -> bool {
        // Built once: building AWS-LC's key costs a base-point multiplication, as much
        // as the agreement (an aggregator checks two keys per site and round).
        static PROBE: std::sync::LazyLock<AgreementSecret> =
            std::sync::LazyLock::new(|| AgreementSecret::from_bytes(Zeroizing::new([1u8; 32])));
        PROBE.agree(self).is_err()
    }
}

/// An X25519 secret key; zeroized on drop.
pub(crate) struct AgreementSecret {
    bytes: Zeroizing<[u8; 32]>,
    /// AWS-LC's form of the key, built on the first agreement. Building it computes
    /// the public key, a base-point multiplication that cost as much as the agreement
    /// itself here (31 of 69 µs), so a secret that agrees with k peers builds it once.
    /// `None` if AWS-LC refused the bytes (it accepts every 32-byte X25519 key).
    key: OnceLock<Option<PrivateKey>>,
}

impl Zeroize for AgreementSecret {
    fn zeroize(&mut self) {
        self.bytes.zeroize();
        // AWS-LC clears a key's memory when it frees it.
        self.key.take();
    }
}

/// `bytes` zeroizes itself on drop and AWS-LC clears the key it frees.
impl ZeroizeOnDrop for AgreementSecret {}

impl AgreementSecret {
    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self {
            bytes,
            key: OnceLock::new(),
        }
    }

    pub(crate) fn public(&self) -> AgreementPublicKey {
        AgreementPublicKey(MontgomeryPoint::mul_base_clamped(*self.bytes).to_bytes())
    }

    /// X25519(self, peer); rejects the all-zero output of low-order points (RFC 7748 §6.1).
    ///
    /// Computed by AWS-LC (about twice as fast here as `curve25519-dalek`'s portable
    /// ladder, and agreements dominate a site's CPU in large SecAgg+ rounds); the
    /// result equals RFC 7748's X25519, which the tests check against the RFC's vectors
    /// and against `curve25519-dalek`.
    pub(crate) fn agree(
        &self,
        peer: &AgreementPublicKey,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        use aws_lc_rs::agreement::{UnparsedPublicKey, X25519, agree};
        let own = self
            .key
            .get_or_init(|| PrivateKey::from_private_key(&X25519, self.bytes.as_ref()).ok())
            .as_ref()
            .ok_or(CryptoError::LowOrderPoint)?;
        let mut shared = Zeroizing::new([0u8; 32]);
        // AWS-LC refuses the all-zero output itself; the check below keeps the rule
        // independent of the library.
        agree(
            own,
            UnparsedPublicKey::new(&X25519, &peer.0),
            CryptoError::LowOrderPoint,
            |s| {
                shared.copy_from_slice(s);
                Ok(())
            },
        )?;
        nonzero(shared)
    }

    /// [`Self::agree`] with every peer, in order: eight at a time on CPUs with AVX-512
    /// IFMA (about three times AWS-LC's throughput here), the rest one by one.
    pub(crate) fn agree_all(
        &self,
        peers: &[&AgreementPublicKey],
    ) -> Vec<Result<Zeroizing<[u8; 32]>, CryptoError>> {
        let us: Vec<[u8; 32]> = peers.iter().map(|p| p.0).collect();
        crate::x25519::batch(&self.bytes, &us)
            .into_iter()
            .zip(peers)
            .map(|(batched, peer)| match batched {
                Some(shared) => nonzero(shared),
                None => self.agree(peer),
            })
            .collect()
    }
}

/// Refuses the all-zero output of a low-order point (RFC 7748 §6.1).
fn nonzero(shared: Zeroizing<[u8; 32]>) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    // OR of all bytes: no data-dependent early exit.
    if shared.iter().fold(0u8, |acc, b| acc | b) == 0 {
        return Err(CryptoError::LowOrderPoint);
    }
    Ok(shared)
}

/// X25519(`scalar`, u) for every u, as a site computes its agreements: with `batched`,
/// eight ladders at once on CPUs with AVX-512 IFMA and AWS-LC for the rest; without,
/// AWS-LC one by one (what CPUs without IFMA run). The all-zero output of a low-order
/// point is refused. Public for the agreement bench.
pub fn x25519_many(
    scalar: [u8; 32],
    us: &[[u8; 32]],
    batched: bool,
) -> Vec<Result<Zeroizing<[u8; 32]>, CryptoError>> {
    let secret = AgreementSecret::from_bytes(Zeroizing::new(scalar));
    let peers: Vec<AgreementPublicKey> = us.iter().map(|u| AgreementPublicKey(*u)).collect();
    if batched {
        secret.agree_all(&peers.iter().collect::<Vec<_>>())
    } else {
        peers.iter().map(|p| secret.agree(p)).collect()
    }
}

/// X25519 as a raw function, exposed for RFC 7748 known-answer tests.
pub fn x25519(scalar: [u8; 32], u: [u8; 32]) -> [u8; 32] {
    MontgomeryPoint(u).mul_clamped(scalar).to_bytes()
}

/// A uniformly random element of the Curve25519 scalar field.
pub(crate) fn random_scalar<R: CryptoRng + ?Sized>(rng: &mut R) -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    rng.fill_bytes(wide.as_mut());
    Scalar::from_bytes_mod_order_wide(&wide)
}

// ---------------------------------------------------------------------------------------
// Share encryption (AEAD)

/// Size of the encrypted pair of shares: two 32-byte scalars and a 16-byte tag.
pub const SHARE_CIPHERTEXT_LEN: usize = 64 + 16;

fn share_aead_key(
    shared: &[u8; 32],
    params_digest: &[u8; 32],
    from: SiteId,
    to: SiteId,
) -> aead::LessSafeKey {
    let key = derive_key(shared, Purpose::ShareEncryption, params_digest, &[from, to]);
    // CHACHA20_POLY1305 takes exactly 32 key bytes.
    aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key.as_ref()).expect("32-byte key"),
    )
}

/// Encrypts `plaintext` from `from` to `to`. The key is unique to the round parameters and
/// the ordered pair and is used once, so a zero nonce is safe; the pair is also the AAD.
pub(crate) fn seal_shares(
    shared: &[u8; 32],
    params_digest: &[u8; 32],
    from: SiteId,
    to: SiteId,
    plaintext: &[u8; 64],
) -> Vec<u8> {
    let key = share_aead_key(shared, params_digest, from, to);
    let mut buf = Vec::with_capacity(SHARE_CIPHERTEXT_LEN);
    buf.extend_from_slice(plaintext);
    let aad = context_bytes(Purpose::ShareEncryption, params_digest, &[from, to]);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key([0u8; 12]),
        aead::Aad::from(aad),
        &mut buf,
    )
    .expect("ChaCha20-Poly1305 seals any 64-byte message");
    buf
}

pub(crate) fn open_shares(
    shared: &[u8; 32],
    params_digest: &[u8; 32],
    from: SiteId,
    to: SiteId,
    ciphertext: &[u8],
) -> Result<Zeroizing<[u8; 64]>, CryptoError> {
    if ciphertext.len() != SHARE_CIPHERTEXT_LEN {
        return Err(CryptoError::Decryption);
    }
    let key = share_aead_key(shared, params_digest, from, to);
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let aad = context_bytes(Purpose::ShareEncryption, params_digest, &[from, to]);
    let plain = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0u8; 12]),
            aead::Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Decryption)?;
    let mut out = Zeroizing::new([0u8; 64]);
    out.copy_from_slice(plain);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn secret(bytes: [u8; 32]) -> AgreementSecret {
        AgreementSecret::from_bytes(Zeroizing::new(bytes))
    }

    pub(crate) fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// RFC 7748 §5.2: 1,000 iterations of k, u ← `ladder`(k, u), k from k = u = 9,
    /// checked after the first and the last.
    pub(crate) fn check_rfc7748_iterated(mut ladder: impl FnMut([u8; 32], [u8; 32]) -> [u8; 32]) {
        let mut k = hex32("0900000000000000000000000000000000000000000000000000000000000000");
        let mut u = k;
        for i in 1..=1000 {
            let next = ladder(k, u);
            u = k;
            k = next;
            if i == 1 {
                assert_eq!(
                    k,
                    hex32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
                );
            }
        }
        assert_eq!(
            k,
            hex32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
    }

    /// RFC 7748 §5.2 test vectors.
    #[test]
    fn x25519_rfc7748_vectors() {
        let k = hex32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let u = hex32("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        assert_eq!(
            x25519(k, u),
            hex32("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
        );
        let k = hex32("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d");
        let u = hex32("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493");
        assert_eq!(
            x25519(k, u),
            hex32("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957")
        );
    }

    /// RFC 7748 §5.2 iterated test: 1 and 1,000 iterations.
    #[test]
    fn x25519_rfc7748_iterated() {
        check_rfc7748_iterated(x25519);
    }

    /// RFC 7748 §6.1 Diffie–Hellman example.
    #[test]
    fn x25519_rfc7748_diffie_hellman() {
        let a = secret(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let b = secret(hex32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            a.public().0,
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            b.public().0,
            hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let k = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*a.agree(&b.public()).unwrap(), k);
        assert_eq!(*b.agree(&a.public()).unwrap(), k);
    }

    /// The agreement (AWS-LC) is RFC 7748's X25519: the RFC's vectors (the second has
    /// the high bit of u set, which X25519 ignores) and curve25519-dalek on other keys.
    #[test]
    fn agreement_is_x25519() {
        let cases = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ];
        for (k, u, out) in cases {
            let shared = secret(hex32(k))
                .agree(&AgreementPublicKey(hex32(u)))
                .unwrap();
            assert_eq!(*shared, hex32(out));
        }
        for i in 0..32u8 {
            let a = secret([i.wrapping_mul(37).wrapping_add(1); 32]);
            let b = secret([i.wrapping_mul(91).wrapping_add(5); 32]);
            let shared = a.agree(&b.public()).unwrap();
            assert_eq!(*shared, x25519(*a.bytes, b.public().0));
            assert_eq!(*shared, *b.agree(&a.public()).unwrap());
        }
    }

    #[test]
    fn low_order_point_is_rejected() {
        let a = secret([7u8; 32]);
        assert_eq!(
            a.agree(&AgreementPublicKey([0u8; 32])).unwrap_err(),
            CryptoError::LowOrderPoint
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(
            a.agree(&AgreementPublicKey(one)).unwrap_err(),
            CryptoError::LowOrderPoint
        );
    }

    /// `agree_all` gives what `agree` gives, peer by peer, with and without a ragged
    /// end after the batches of eight, and refuses a low-order point in a batch and in
    /// the rest alike (removing the batch path's check fails this on IFMA CPUs).
    #[test]
    fn agreeing_with_many_is_agreeing_with_each() {
        let a = secret([3u8; 32]);
        if !crate::x25519::has_ifma() {
            eprintln!("no AVX-512 IFMA: every agreement here went through AWS-LC");
        }
        for n in [0usize, 1, 7, 8, 9, 16, 19] {
            let peers: Vec<AgreementPublicKey> = (0..n)
                .map(|i| secret([i as u8 + 10; 32]).public())
                .collect();
            let all = a.agree_all(&peers.iter().collect::<Vec<_>>());
            assert_eq!(all.len(), n);
            for (p, got) in peers.iter().zip(all) {
                assert_eq!(*got.unwrap(), *a.agree(p).unwrap());
            }
        }
        let mut peers: Vec<AgreementPublicKey> =
            (0..9u8).map(|i| secret([i + 40; 32]).public()).collect();
        let mut one = [0u8; 32];
        one[0] = 1;
        peers[2] = AgreementPublicKey([0u8; 32]);
        peers[5] = AgreementPublicKey(one);
        peers[8] = AgreementPublicKey([0u8; 32]);
        let all = a.agree_all(&peers.iter().collect::<Vec<_>>());
        for (i, got) in all.iter().enumerate() {
            match i {
                2 | 5 | 8 => assert_eq!(got.as_ref().err(), Some(&CryptoError::LowOrderPoint)),
                _ => assert!(got.is_ok(), "peer {i}"),
            }
        }
        let many = x25519_many([3u8; 32], &[peers[0].0, peers[1].0], true);
        assert_eq!(*many[1].clone().unwrap(), *a.agree(&peers[1]).unwrap());
    }

    #[test]
    fn share_encryption_binds_pair_and_parameters() {
        let shared = [9u8; 32];
        let digest = [1u8; 32];
        let msg = [42u8; 64];
        let ct = seal_shares(&shared, &digest, SiteId(1), SiteId(2), &msg);
        assert_eq!(ct.len(), SHARE_CIPHERTEXT_LEN);
        assert_eq!(
            *open_shares(&shared, &digest, SiteId(1), SiteId(2), &ct).unwrap(),
            msg
        );
        assert!(open_shares(&shared, &digest, SiteId(2), SiteId(1), &ct).is_err());
        assert!(open_shares(&shared, &[2u8; 32], SiteId(1), SiteId(2), &ct).is_err());
        let mut tampered = ct.clone();
        tampered[3] ^= 1;
        assert!(open_shares(&shared, &digest, SiteId(1), SiteId(2), &tampered).is_err());
        assert!(open_shares(&shared, &digest, SiteId(1), SiteId(2), &ct[..10]).is_err());
    }

    /// RFC 8032 §7.1, test 1 (empty message): the identity keys are RFC 8032's Ed25519,
    /// whatever library computes them.
    #[test]
    fn identity_signatures_are_rfc8032_ed25519() {
        let pair = IdentityKeyPair::from_seed(hex32(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        ))
        .unwrap();
        assert_eq!(
            pair.public().0,
            hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = pair.sign(b"");
        let expected = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
        let hex: String = sig.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert!(pair.public().verify(b"", &sig).is_ok());
        assert!(pair.public().verify(b"x", &sig).is_err());
    }

    #[test]
    fn signatures_verify_only_the_signed_message() {
        let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed([3u8; 32]);
        let id = IdentityKeyPair::generate(&mut rng);
        let sig = id.sign(b"hello");
        assert!(id.public().verify(b"hello", &sig).is_ok());
        assert!(id.public().verify(b"hellp", &sig).is_err());
        let other = IdentityKeyPair::generate(&mut rng);
        assert!(other.public().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn labelled_signatures_are_separated_from_the_protocol() {
        let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed([4u8; 32]);
        let id = IdentityKeyPair::generate(&mut rng);
        let sig = id
            .sign_labelled("tessera/transcript/v1", b"record")
            .unwrap();
        assert!(
            id.public()
                .verify_labelled("tessera/transcript/v1", b"record", &sig)
                .is_ok()
        );
        assert!(
            id.public()
                .verify_labelled("tessera/other/v1", b"record", &sig)
                .is_err()
        );
        assert!(id.public().verify(b"record", &sig).is_err());
        assert_eq!(
            id.sign_labelled("tessera/secagg/v1/advertise", b"x")
                .unwrap_err(),
            CryptoError::ReservedLabel
        );
    }

    #[test]
    fn derivations_are_domain_separated() {
        let d = [0u8; 32];
        let a = derive_key(b"ikm", Purpose::PairwiseMask, &d, &[SiteId(1), SiteId(2)]);
        let b = derive_key(b"ikm", Purpose::SelfMask, &d, &[SiteId(1), SiteId(2)]);
        let c = derive_key(b"ikm", Purpose::PairwiseMask, &d, &[SiteId(2), SiteId(1)]);
        let e = derive_key(
            b"ikm",
            Purpose::PairwiseMask,
            &[1u8; 32],
            &[SiteId(1), SiteId(2)],
        );
        assert_ne!(*a, *b);
        assert_ne!(*a, *c);
        assert_ne!(*a, *e);
    }
}
