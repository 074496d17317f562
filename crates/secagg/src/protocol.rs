//! Derivations and checks shared by the site and the aggregator, so both compute the
//! same keys, seeds and signed messages from one definition.

use curve25519_dalek::scalar::Scalar;
use std::collections::BTreeMap;

use crate::crypto::{
    self, AgreementPublicKey, AgreementSecret, IdentityPublicKey, MaskSeed, Purpose, Signature,
    context_bytes,
};
use crate::ed25519::{self, Claim, VerifyingKey};
use crate::error::MessageError;
use crate::ids::{Party, SiteId};
use crate::messages::{Envelope, KeyAdvertisement, PROTOCOL_VERSION};
use crate::params::RoundConfig;
use crate::ring::MaskSign;

/// The long-term identity keys of the federation's sites (e.g. from a CA-signed roster),
/// each decoded once for the many signature checks of a round.
#[derive(Clone, Debug, Default)]
pub struct Roster(BTreeMap<SiteId, (IdentityPublicKey, VerifyingKey)>);

impl Roster {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, site: SiteId, key: IdentityPublicKey) {
        self.0.insert(site, (key, VerifyingKey::new(&key)));
    }

    pub fn get(&self, site: SiteId) -> Option<&IdentityPublicKey> {
        self.0.get(&site).map(|(key, _)| key)
    }

    pub(crate) fn verifying_key(&self, site: SiteId) -> Option<&VerifyingKey> {
        self.0.get(&site).map(|(_, key)| key)
    }
}

impl FromIterator<(SiteId, IdentityPublicKey)> for Roster {
    fn from_iter<T: IntoIterator<Item = (SiteId, IdentityPublicKey)>>(iter: T) -> Self {
        Self(
            iter.into_iter()
                .map(|(site, key)| (site, (key, VerifyingKey::new(&key))))
                .collect(),
        )
    }
}

/// Checks signatures by roster members all at once (module `ed25519`); on failure,
/// names the first signer whose signature does not verify (or who is not on the roster).
pub(crate) fn verify_signed(
    roster: &Roster,
    signed: &[(SiteId, &[u8], &Signature)],
) -> Result<(), MessageError> {
    let mut claims = Vec::with_capacity(signed.len());
    for (site, message, signature) in signed {
        claims.push(Claim {
            key: roster
                .verifying_key(*site)
                .ok_or(MessageError::BadSignature(*site))?,
            message,
            signature,
        });
    }
    ed25519::verify_all(&claims).map_err(|i| MessageError::BadSignature(signed[i].0))
}

pub(crate) fn advertisement_message(
    config: &RoundConfig,
    site: SiteId,
    share_key: &AgreementPublicKey,
    mask_key: &AgreementPublicKey,
    commitment: &[u8; 32],
) -> Vec<u8> {
    let mut m = context_bytes(Purpose::AdvertiseSignature, config.digest(), &[site]);
    m.extend_from_slice(&share_key.0);
    m.extend_from_slice(&mask_key.0);
    m.extend_from_slice(commitment);
    m
}

/// Verifies an advertisement against the roster.
pub(crate) fn verify_advertisement(
    config: &RoundConfig,
    roster: &Roster,
    ad: &KeyAdvertisement,
) -> Result<(), MessageError> {
    verify_advertisements(config, roster, std::slice::from_ref(ad))
}

/// Checks many advertisements' signatures together (a site's neighbours).
pub(crate) fn verify_advertisements(
    config: &RoundConfig,
    roster: &Roster,
    ads: &[KeyAdvertisement],
) -> Result<(), MessageError> {
    let messages: Vec<Vec<u8>> = ads
        .iter()
        .map(|ad| {
            advertisement_message(
                config,
                ad.site,
                &ad.share_key,
                &ad.mask_key,
                &ad.self_mask_commitment,
            )
        })
        .collect();
    let signed: Vec<(SiteId, &[u8], &Signature)> = ads
        .iter()
        .zip(&messages)
        .map(|(ad, m)| (ad.site, m.as_slice(), &ad.signature))
        .collect();
    verify_signed(roster, &signed)
}

/// What a survivor signs in the consistency check: the purpose, the round's parameter
/// digest and SHA-256 of the survivor set (ids as big-endian u32). Signing the digest
/// rather than the set keeps each signature and each of a site's k verifications at
/// a fixed size: with the set itself, every site hashed k copies of an n-entry list,
/// and at n = 10,000 that SHA-512 work was the largest share of the round's CPU.
pub(crate) fn consistency_message(config: &RoundConfig, survivors: &[SiteId]) -> Vec<u8> {
    let set = crypto::hash(
        Purpose::ConsistencySignature,
        config.digest(),
        survivors,
        &[],
    );
    let mut m = context_bytes(Purpose::ConsistencySignature, config.digest(), &[]);
    m.extend_from_slice(&set);
    m
}

/// The X25519 mask key derived from the shared mask secret `s`.
pub(crate) fn mask_key_from_secret(
    config: &RoundConfig,
    site: SiteId,
    s: &Scalar,
) -> AgreementSecret {
    AgreementSecret::from_bytes(crypto::derive_key(
        &s.to_bytes(),
        Purpose::MaskKeyFromSecret,
        config.digest(),
        &[site],
    ))
}

pub(crate) fn self_mask_seed(config: &RoundConfig, site: SiteId, b: &Scalar) -> MaskSeed {
    MaskSeed::new(crypto::derive_key(
        &b.to_bytes(),
        Purpose::SelfMask,
        config.digest(),
        &[site],
    ))
}

pub(crate) fn self_mask_commitment(config: &RoundConfig, site: SiteId, b: &Scalar) -> [u8; 32] {
    crypto::hash(
        Purpose::SelfMaskCommitment,
        config.digest(),
        &[site],
        &b.to_bytes(),
    )
}

/// The seed of the mask shared by `a` and `b` (symmetric in the pair).
pub(crate) fn pairwise_seed(
    config: &RoundConfig,
    a: SiteId,
    b: SiteId,
    shared: &[u8; 32],
) -> MaskSeed {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    MaskSeed::new(crypto::derive_key(
        shared,
        Purpose::PairwiseMask,
        config.digest(),
        &[lo, hi],
    ))
}

/// How `site` applies the mask it shares with `peer`: the smaller id adds, the larger
/// subtracts, so the pair cancels in the sum.
pub(crate) fn pairwise_sign(site: SiteId, peer: SiteId) -> MaskSign {
    if site < peer {
        MaskSign::Add
    } else {
        MaskSign::Sub
    }
}

/// Checks version, session, round and addressing of an incoming envelope.
pub(crate) fn check_header(
    config: &RoundConfig,
    env: &Envelope,
    expected_sender: Party,
    me: Party,
) -> Result<(), MessageError> {
    let h = &env.header;
    if h.version != PROTOCOL_VERSION {
        return Err(MessageError::Version {
            got: h.version,
            expected: PROTOCOL_VERSION,
        });
    }
    let p = config.params();
    if h.session != p.session {
        return Err(MessageError::WrongSession);
    }
    if h.round != p.round {
        return Err(MessageError::WrongRound {
            got: h.round,
            expected: p.round,
        });
    }
    if h.recipient != me {
        return Err(MessageError::Misaddressed {
            got: h.recipient,
            expected: me,
        });
    }
    if h.sender != expected_sender {
        return Err(MessageError::SenderMismatch {
            claimed: h.sender,
            actual: expected_sender,
        });
    }
    let from_site = matches!(me, Party::Aggregator);
    if env.body.is_from_site() != from_site {
        return Err(MessageError::WrongDirection {
            kind: env.body.kind(),
        });
    }
    Ok(())
}

/// True when `ids` is strictly increasing.
pub(crate) fn strictly_increasing(ids: &[SiteId]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Round, SessionId};
    use crate::params::{GraphSpec, RoundParams};
    use crate::ring::Modulus;

    /// The consistency message binds the whole survivor set at a size that does not
    /// grow with it.
    #[test]
    fn the_consistency_message_is_a_fixed_size_digest_of_the_set() {
        let config = RoundConfig::new(RoundParams {
            session: SessionId([2; 16]),
            round: Round(1),
            participants: (0..40).map(SiteId).collect(),
            vector_len: 4,
            modulus: Modulus::new(16).unwrap(),
            threshold: 21,
            graph: GraphSpec::Complete,
            context: [0; 32],
            mask_prg: Default::default(),
        })
        .unwrap();
        let all: Vec<SiteId> = (0..40).map(SiteId).collect();
        let short = consistency_message(&config, &all[..3]);
        let long = consistency_message(&config, &all);
        assert_eq!(short.len(), long.len());
        let mut other = all.clone();
        other[39] = SiteId(41);
        assert_ne!(long, consistency_message(&config, &other));
        assert_ne!(long, consistency_message(&config, &all[..39]));
        assert_eq!(long, consistency_message(&config, &all));
    }
}
