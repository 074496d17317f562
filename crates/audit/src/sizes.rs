//! The size every message kind must have under a round's parameters, computed by
//! encoding representative messages with the real codec: exact where the content's
//! size is fixed, the tightest range where a list's length may vary.

use std::ops::RangeInclusive;
use tessera_fl::wire::{self, ToCoordinator, WithdrawReason};
use tessera_net::transcript::RoundFacts;
use tessera_secagg::crypto::SHARE_CIPHERTEXT_LEN;
use tessera_secagg::{
    AgreementPublicKey, Body, EncryptedShares, Envelope, Header, KeyAdvertisement, MaskedUpload,
    MaskedVector, Modulus, PROTOCOL_VERSION, Party, PlainVector, RevealedShare, Round, SessionId,
    ShareValue, Signature, SiteId, UnmaskShares,
};

/// Why no size could be given for a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No site sends this kind in such a round.
    #[error("no site sends this kind in such a round")]
    NotInRound,
    /// The recorded facts do not describe a round that can be encoded (a malformed
    /// session id or modulus): the record itself is suspect.
    #[error("the recorded parameters do not encode: {0}")]
    Facts(String),
}

fn session_bytes(hex: &str) -> Result<[u8; 16], SizeError> {
    tessera_fl::parse_session(hex)
        .ok_or_else(|| SizeError::Facts(format!("session \"{hex}\" is not 32 hex digits")))
}

fn envelope(session: [u8; 16], facts: &RoundFacts, site: u32, body: Body) -> ToCoordinator {
    ToCoordinator::SecAgg(Envelope {
        header: Header {
            version: PROTOCOL_VERSION,
            session: SessionId(session),
            round: Round(facts.round),
            sender: Party::Site(SiteId(site)),
            recipient: Party::Aggregator,
        },
        body,
    })
}

fn len(msg: &ToCoordinator) -> Result<u64, SizeError> {
    wire::encode(msg)
        .map(|b| b.len() as u64)
        .map_err(|e| SizeError::Facts(e.to_string()))
}

fn modulus(facts: &RoundFacts) -> Result<Modulus, SizeError> {
    Modulus::new(facts.modulus_bits).map_err(|e| SizeError::Facts(format!("modulus: {e}")))
}

/// The masked vector of the round's shape (its size does not depend on its values).
fn masked(facts: &RoundFacts) -> Result<MaskedVector, SizeError> {
    let plain = PlainVector::zeros(modulus(facts)?, facts.vector_len as usize);
    postcard::to_allocvec(&plain)
        .ok()
        .and_then(|b| postcard::from_bytes(&b).ok())
        .ok_or_else(|| SizeError::Facts("the vector does not encode".into()))
}

/// Peers this site may name: the other participants, smallest ids first.
fn peers(facts: &RoundFacts, site: u32) -> Vec<u32> {
    let mut p: Vec<u32> = facts
        .participants
        .iter()
        .copied()
        .filter(|s| *s != site)
        .collect();
    p.sort_unstable();
    p
}

fn neighbours(facts: &RoundFacts) -> usize {
    facts
        .degree
        .map_or(facts.participants.len().saturating_sub(1), |d| d as usize)
}

/// `count` ids from `peers`: the smallest (`small`) or the largest.
fn pick(peers: &[u32], count: usize, small: bool) -> Vec<SiteId> {
    let count = count.min(peers.len());
    let chosen = if small {
        &peers[..count]
    } else {
        &peers[peers.len() - count..]
    };
    chosen.iter().copied().map(SiteId).collect()
}

fn shares_to(ids: Vec<SiteId>) -> Body {
    Body::ShareKeys(
        ids.into_iter()
            .map(|peer| EncryptedShares {
                peer,
                ciphertext: vec![0; SHARE_CIPHERTEXT_LEN],
            })
            .collect(),
    )
}

fn reveal(ids: Vec<SiteId>) -> Body {
    let Ok(value) = postcard::from_bytes::<ShareValue>(&[0u8; 32]) else {
        return Body::UnmaskShares(UnmaskShares {
            self_mask: vec![],
            mask_key: vec![],
        });
    };
    let share = |owner| RevealedShare { owner, value };
    Body::UnmaskShares(UnmaskShares {
        self_mask: ids.into_iter().map(share).collect(),
        mask_key: vec![],
    })
}

/// The sizes a message of `kind` may have in the round `facts` describes, sent by
/// `site`.
pub fn expected(
    kind: &str,
    facts: &RoundFacts,
    site: u32,
) -> Result<RangeInclusive<u64>, SizeError> {
    let peers = peers(facts, site);
    let k = neighbours(facts);
    let t = facts.threshold as usize;
    let session = session_bytes(&facts.session)?;
    let env = |body| len(&envelope(session, facts, site, body));
    match kind {
        "advertise-keys" => exact(env(Body::AdvertiseKeys(KeyAdvertisement {
            site: SiteId(site),
            share_key: AgreementPublicKey([0; 32]),
            mask_key: AgreementPublicKey([0; 32]),
            self_mask_commitment: [0; 32],
            signature: Signature([0; 64]),
        }))?),
        "share-keys" => {
            let lo = env(shares_to(pick(&peers, t.saturating_sub(1), true)))?;
            Ok(lo..=env(shares_to(pick(&peers, k, false)))?)
        }
        "masked-input" if facts.secure => {
            let vector = masked(facts)?;
            let upload = |accused| {
                env(Body::MaskedInput(MaskedUpload {
                    vector: vector.clone(),
                    accused,
                }))
            };
            let most = k.saturating_sub(t.saturating_sub(1));
            Ok(upload(vec![])?..=upload(pick(&peers, most, false))?)
        }
        "consistency-signature" => exact(env(Body::ConsistencySignature(Signature([0; 64])))?),
        "unmask-shares" => {
            // Shares of any holder, this site included.
            let mut all = facts.participants.clone();
            all.sort_unstable();
            Ok(env(reveal(vec![]))?..=env(reveal(pick(&all, k + 1, false)))?)
        }
        "plain-update" if !facts.secure => exact(len(&ToCoordinator::Plain {
            round: facts.round,
            update: PlainVector::zeros(modulus(facts)?, facts.vector_len as usize),
        })?),
        "withdraw" => {
            let lo = len(&ToCoordinator::Withdraw {
                round: facts.round,
                reason: WithdrawReason::Dropout,
            })?;
            // The longest reason is a short error text.
            Ok(lo..=lo + 1024)
        }
        _ => Err(SizeError::NotInRound),
    }
}

fn exact(n: u64) -> Result<RangeInclusive<u64>, SizeError> {
    Ok(n..=n)
}

/// The size of a `head` message with record count `seq`.
pub fn head(session: &str, seq: u64) -> Result<u64, SizeError> {
    len(&ToCoordinator::Head {
        session: session_bytes(session)?,
        seq,
        head: "0".repeat(64),
    })
}
