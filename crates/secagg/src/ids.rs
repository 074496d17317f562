//! Identifiers that every message is bound to.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// A site (client) of the federation. Ordering of ids fixes the sign of pairwise masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SiteId(pub u32);

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "site {}", self.0)
    }
}

/// A federated round; fresh keys are used in every round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Round(pub u64);

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "round {}", self.0)
    }
}

/// A federation session (random, chosen by whoever sets the federation up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

/// Either end of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Party {
    Aggregator,
    Site(SiteId),
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Aggregator => f.write_str("the aggregator"),
            Party::Site(id) => id.fmt(f),
        }
    }
}

/// The five phases of a secure-aggregation round, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Sites publish signed ephemeral public keys.
    AdvertiseKeys,
    /// Sites secret-share their self-mask seed and mask key to their neighbours.
    ShareKeys,
    /// Sites send their masked input.
    MaskedInput,
    /// Sites sign the set of sites whose masked input the aggregator holds.
    ConsistencyCheck,
    /// Sites reveal the shares needed to remove the masks.
    Unmasking,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::AdvertiseKeys => "advertise-keys",
            Phase::ShareKeys => "share-keys",
            Phase::MaskedInput => "masked-input",
            Phase::ConsistencyCheck => "consistency-check",
            Phase::Unmasking => "unmasking",
        })
    }
}

/// A canonical (sorted, duplicate-free) set of sites.
pub type SiteSet = BTreeSet<SiteId>;
