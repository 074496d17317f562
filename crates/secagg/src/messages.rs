//! Wire messages. Every message travels in an [`Envelope`] whose header binds it to the
//! protocol version, session, round, sender and recipient; its phase is implied by the
//! body. The codec is postcard; [`Envelope::from_bytes`] rejects trailing bytes, and
//! decoding never panics on any byte sequence (fuzzed: `fuzz/fuzz_targets`).

use curve25519_dalek::scalar::Scalar;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto::{AgreementPublicKey, Signature};
use crate::error::MessageError;
use crate::ids::{Party, Phase, Round, SessionId, SiteId};
use crate::ring::MaskedVector;

/// Version of this wire format and protocol.
pub const PROTOCOL_VERSION: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u8,
    pub session: SessionId,
    pub round: Round,
    pub sender: Party,
    pub recipient: Party,
}

/// A site's signed ephemeral keys for one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAdvertisement {
    pub site: SiteId,
    /// X25519 key for encrypting shares to this site.
    pub share_key: AgreementPublicKey,
    /// X25519 key from which pairwise masks are agreed.
    pub mask_key: AgreementPublicKey,
    /// Hash commitment to the self-mask secret, so its reconstruction can be checked.
    pub self_mask_commitment: [u8; 32],
    /// Ed25519 signature by the site's identity key over all of the above and the round.
    pub signature: Signature,
}

/// Encrypted shares of one site's two secrets, for (or from) `peer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShares {
    pub peer: SiteId,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A site's masked input, with the neighbours whose forwarded share ciphertexts did not
/// open. The site left its pairwise masks with those neighbours out of `vector`, holds
/// none of their shares, and expects the aggregator to exclude them (see
/// [`crate::Aggregator`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedUpload {
    pub vector: MaskedVector,
    /// Strictly increasing.
    pub accused: Vec<SiteId>,
}

/// The value of one Shamir share; always a canonical scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareValue(pub(crate) Scalar);

impl Serialize for ShareValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.to_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for ShareValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(d)?;
        Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes))
            .map(ShareValue)
            .ok_or_else(|| serde::de::Error::custom("share is not a canonical scalar"))
    }
}

/// A revealed share of `owner`'s secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    pub owner: SiteId,
    pub value: ShareValue,
}

/// The aggregator's request for shares, with the survivor-set signatures that justify it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Signatures over the survivor set by sites that hold this site's shares.
    pub signatures: Vec<(SiteId, Signature)>,
    /// Survivors whose self-mask shares are requested.
    pub reveal_self_mask: Vec<SiteId>,
    /// Dropped sites whose mask-key shares are requested.
    pub reveal_mask_key: Vec<SiteId>,
}

/// A site's answer to an [`UnmaskRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskShares {
    pub self_mask: Vec<RevealedShare>,
    pub mask_key: Vec<RevealedShare>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Site → aggregator.
    AdvertiseKeys(KeyAdvertisement),
    /// Aggregator → site: the advertisements of its surviving neighbours.
    NeighbourKeys(Vec<KeyAdvertisement>),
    /// Site → aggregator: one ciphertext per neighbour (`peer` = recipient).
    ShareKeys(Vec<EncryptedShares>),
    /// Aggregator → site: ciphertexts addressed to it (`peer` = sender).
    ForwardedShares(Vec<EncryptedShares>),
    /// Site → aggregator.
    MaskedInput(MaskedUpload),
    /// Aggregator → site: the sites whose masked input it holds, ascending.
    SurvivorSet(Vec<SiteId>),
    /// Site → aggregator: signature over the survivor set.
    ConsistencySignature(Signature),
    /// Aggregator → site.
    UnmaskRequest(UnmaskRequest),
    /// Site → aggregator.
    UnmaskShares(UnmaskShares),
}

impl Body {
    /// The phase this message belongs to (messages from the aggregator open a phase).
    pub fn phase(&self) -> Phase {
        match self {
            Body::AdvertiseKeys(_) => Phase::AdvertiseKeys,
            Body::NeighbourKeys(_) | Body::ShareKeys(_) => Phase::ShareKeys,
            Body::ForwardedShares(_) | Body::MaskedInput(_) => Phase::MaskedInput,
            Body::SurvivorSet(_) | Body::ConsistencySignature(_) => Phase::ConsistencyCheck,
            Body::UnmaskRequest(_) | Body::UnmaskShares(_) => Phase::Unmasking,
        }
    }

    /// A short name for logs and transcripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::AdvertiseKeys(_) => "advertise-keys",
            Body::NeighbourKeys(_) => "neighbour-keys",
            Body::ShareKeys(_) => "share-keys",
            Body::ForwardedShares(_) => "forwarded-shares",
            Body::MaskedInput(_) => "masked-input",
            Body::SurvivorSet(_) => "survivor-set",
            Body::ConsistencySignature(_) => "consistency-signature",
            Body::UnmaskRequest(_) => "unmask-request",
            Body::UnmaskShares(_) => "unmask-shares",
        }
    }

    /// Whether sites send this message (otherwise the aggregator does).
    pub fn is_from_site(&self) -> bool {
        matches!(
            self,
            Body::AdvertiseKeys(_)
                | Body::ShareKeys(_)
                | Body::MaskedInput(_)
                | Body::ConsistencySignature(_)
                | Body::UnmaskShares(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub header: Header,
    pub body: Body,
}

impl Envelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("messages always serialise")
    }

    /// Decodes one envelope; the input must contain exactly one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MessageError> {
        let (env, rest) = postcard::take_from_bytes::<Envelope>(bytes)
            .map_err(|e| MessageError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(MessageError::Decode(format!(
                "{} trailing bytes after the message",
                rest.len()
            )));
        }
        Ok(env)
    }

    pub fn phase(&self) -> Phase {
        self.body.phase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_rejects_trailing_bytes_and_non_canonical_shares() {
        let env = Envelope {
            header: Header {
                version: PROTOCOL_VERSION,
                session: SessionId([0; 16]),
                round: Round(1),
                sender: Party::Site(SiteId(1)),
                recipient: Party::Aggregator,
            },
            body: Body::UnmaskShares(UnmaskShares {
                self_mask: vec![RevealedShare {
                    owner: SiteId(2),
                    value: ShareValue(Scalar::ONE),
                }],
                mask_key: vec![],
            }),
        };
        let mut bytes = env.to_bytes();
        assert_eq!(Envelope::from_bytes(&bytes).unwrap(), env);
        bytes.push(0);
        assert!(matches!(
            Envelope::from_bytes(&bytes),
            Err(MessageError::Decode(_))
        ));
        // Replace the share with 0xff…ff (≥ ℓ, not canonical).
        let mut bytes = env.to_bytes();
        let n = bytes.len();
        bytes[n - 33..n - 1].fill(0xff);
        assert!(matches!(
            Envelope::from_bytes(&bytes),
            Err(MessageError::Decode(_))
        ));
        for cut in 0..env.to_bytes().len() {
            assert!(Envelope::from_bytes(&env.to_bytes()[..cut]).is_err());
        }
    }
}
