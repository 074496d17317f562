//! The aggregator (server) side of a round: messages in, messages out, no clock.
//!
//! The caller owns time: when a phase's deadline passes it calls
//! [`Aggregator::close_phase`], and when it learns that a site is gone it calls
//! [`Aggregator::mark_dropped`]. A phase also closes by itself once every expected site
//! has answered. Outgoing messages queue up until [`Aggregator::take_outgoing`].

mod accusations;
mod unmask;

use curve25519_dalek::scalar::Scalar;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::crypto;
use crate::crypto::Signature;
use crate::error::{AbortReason, AggregatorError, MessageError};
use crate::ids::{Party, Phase, SiteId, SiteSet};
use crate::messages::{
    Body, EncryptedShares, Envelope, Header, KeyAdvertisement, MaskedUpload, PROTOCOL_VERSION,
    UnmaskRequest, UnmaskShares,
};
use crate::params::RoundConfig;
use crate::protocol::{self, Roster};
use crate::ring::{MaskedVector, PlainVector};

/// A message for one site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: SiteId,
    pub envelope: Envelope,
}

/// The unmasked sum of the surviving sites' inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateSum {
    /// The sites whose inputs are in the sum (U3), ascending; always at least t of them.
    pub contributors: Vec<SiteId>,
    pub sum: PlainVector,
}

/// Where the round stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Collecting(Phase),
    Finished,
    Aborted(AbortReason),
}

/// Sets of sites still in the round after each phase (Bonawitz et al.'s U1 … U5).
#[derive(Default)]
struct Survivors {
    advertised: SiteSet,
    shared: SiteSet,
    masked: SiteSet,
    signed: SiteSet,
}

pub struct Aggregator {
    config: Arc<RoundConfig>,
    roster: Arc<Roster>,
    status: Status,
    /// Sites that may still answer in the current phase.
    expected: SiteSet,
    /// Sites that answered in the current phase.
    responded: SiteSet,
    survivors: Survivors,
    adverts: BTreeMap<SiteId, KeyAdvertisement>,
    /// Every key advertised this round, to refuse a copied key without scanning them all.
    advertised_keys: HashSet<crypto::AgreementPublicKey>,
    /// Ciphertexts by sender, then recipient.
    shares: BTreeMap<SiteId, Vec<EncryptedShares>>,
    /// Masked inputs of this phase, summed once it closes: an accusation that arrives
    /// later may still exclude a sender.
    uploads: BTreeMap<SiteId, MaskedVector>,
    /// Accuser → the neighbours whose share ciphertexts did not open for it (accusers
    /// in U3 only, once the masked-input phase has closed).
    accusations: BTreeMap<SiteId, Vec<SiteId>>,
    /// Accusations one site may make before it is excluded itself.
    tolerated: usize,
    masked_sum: Vec<u32>,
    /// The message survivors sign in the consistency check, once U3 is known.
    consistency: Vec<u8>,
    signatures: BTreeMap<SiteId, Signature>,
    /// What each site was asked to reveal (self-mask owners, mask-key owners).
    requests: BTreeMap<SiteId, (Vec<SiteId>, Vec<SiteId>)>,
    self_mask_shares: BTreeMap<SiteId, Vec<(SiteId, Scalar)>>,
    mask_key_shares: BTreeMap<SiteId, Vec<(SiteId, Scalar)>>,
    outgoing: Vec<Outgoing>,
    result: Option<AggregateSum>,
}

impl Aggregator {
    /// Starts a round that waits for key advertisements from every participant.
    pub fn new(config: Arc<RoundConfig>, roster: Arc<Roster>) -> Result<Self, AggregatorError> {
        for s in &config.params().participants {
            if roster.get(*s).is_none() {
                return Err(AggregatorError::UnknownSite(*s));
            }
        }
        let expected = config.params().participants.iter().copied().collect();
        let len = config.vector_len();
        Ok(Self {
            config,
            roster,
            status: Status::Collecting(Phase::AdvertiseKeys),
            expected,
            responded: SiteSet::new(),
            survivors: Survivors::default(),
            adverts: BTreeMap::new(),
            advertised_keys: HashSet::new(),
            shares: BTreeMap::new(),
            uploads: BTreeMap::new(),
            accusations: BTreeMap::new(),
            tolerated: 1,
            masked_sum: vec![0; len],
            consistency: Vec::new(),
            signatures: BTreeMap::new(),
            requests: BTreeMap::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
            outgoing: Vec::new(),
            result: None,
        })
    }

    /// How many neighbours one site may accuse of sending share ciphertexts that do not
    /// open (default 1). Each accused site is excluded from the round; a site accusing
    /// more is excluded itself and its accusations ignored. An honest site accuses only
    /// misbehaving neighbours, so set this to the corruption bound c.
    pub fn tolerate_accusations(mut self, k: usize) -> Self {
        self.tolerated = k.max(1);
        self
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The sites that may still answer in the current phase and have not yet.
    pub fn awaiting(&self) -> Vec<SiteId> {
        self.expected.difference(&self.responded).copied().collect()
    }

    pub fn result(&self) -> Option<&AggregateSum> {
        self.result.as_ref()
    }

    /// Drains the messages to send.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outgoing)
    }

    fn phase(&self) -> Result<Phase, AggregatorError> {
        match &self.status {
            Status::Collecting(p) => Ok(*p),
            Status::Finished => Err(AggregatorError::RoundOver("finished")),
            Status::Aborted(_) => Err(AggregatorError::RoundOver("aborted")),
        }
    }

    fn malformed(from: SiteId, kind: &'static str, detail: impl Into<String>) -> AggregatorError {
        MessageError::Malformed {
            sender: Party::Site(from),
            kind,
            detail: detail.into(),
        }
        .into()
    }

    /// Accepts one message that the authenticated channel says came from `from`.
    pub fn handle(&mut self, from: SiteId, env: Envelope) -> Result<&Status, AggregatorError> {
        let phase = self.phase()?;
        protocol::check_header(&self.config, &env, Party::Site(from), Party::Aggregator)?;
        if env.phase() != phase {
            return Err(MessageError::OutOfPhase {
                kind: env.body.kind(),
                got: env.phase(),
                expected: phase,
            }
            .into());
        }
        if self.responded.contains(&from) {
            return Err(MessageError::Duplicate(from, phase).into());
        }
        if !self.expected.contains(&from) {
            return Err(MessageError::UnexpectedSender(from).into());
        }
        match env.body {
            Body::AdvertiseKeys(ad) => {
                if ad.site != from {
                    return Err(Self::malformed(
                        from,
                        "advertise-keys",
                        format!("advertises keys of {}", ad.site),
                    ));
                }
                protocol::verify_advertisement(&self.config, &self.roster, &ad)?;
                // A low-order or copied key would make honest sites abandon the round:
                // refuse it here, so that only its sender is left out.
                if ad.share_key.is_low_order() || ad.mask_key.is_low_order() {
                    return Err(Self::malformed(from, "advertise-keys", "a low-order key"));
                }
                let copied = self.advertised_keys.contains(&ad.share_key)
                    || self.advertised_keys.contains(&ad.mask_key)
                    || ad.share_key == ad.mask_key;
                if copied {
                    return Err(Self::malformed(
                        from,
                        "advertise-keys",
                        "a key another site already advertised",
                    ));
                }
                self.advertised_keys.extend([ad.share_key, ad.mask_key]);
                self.adverts.insert(from, ad);
            }
            Body::ShareKeys(list) => {
                let expected: Vec<SiteId> = self.neighbours_in(from, &self.survivors.advertised);
                let got: Vec<SiteId> = list.iter().map(|e| e.peer).collect();
                if got != expected {
                    return Err(Self::malformed(
                        from,
                        "share-keys",
                        "recipients differ from its surviving neighbours",
                    ));
                }
                if list
                    .iter()
                    .any(|e| e.ciphertext.len() != crypto::SHARE_CIPHERTEXT_LEN)
                {
                    return Err(Self::malformed(
                        from,
                        "share-keys",
                        "ciphertext of the wrong size",
                    ));
                }
                self.shares.insert(from, list);
            }
            Body::MaskedInput(upload) => self.add_masked(from, upload)?,
            Body::ConsistencySignature(sig) => {
                if self.roster.get(from).is_none() {
                    return Err(AggregatorError::UnknownSite(from));
                }
                protocol::verify_signed(&self.roster, &[(from, &self.consistency, &sig)])?;
                self.signatures.insert(from, sig);
            }
            Body::UnmaskShares(reply) => self.accept_shares(from, reply)?,
            other => return Err(MessageError::WrongDirection { kind: other.kind() }.into()),
        }
        self.responded.insert(from);
        self.close_if_complete();
        Ok(&self.status)
    }

    fn add_masked(&mut self, from: SiteId, upload: MaskedUpload) -> Result<(), AggregatorError> {
        let MaskedUpload { vector: v, accused } = upload;
        let m = self.config.modulus();
        if v.modulus() != m {
            return Err(MessageError::WrongModulus {
                got: v.modulus().bits(),
                expected: m.bits(),
            }
            .into());
        }
        if v.len() != self.masked_sum.len() {
            return Err(MessageError::WrongLength {
                got: v.len(),
                expected: self.masked_sum.len(),
            }
            .into());
        }
        let neighbours = self.neighbours_in(from, &self.survivors.shared);
        if !protocol::strictly_increasing(&accused)
            || accused.iter().any(|a| neighbours.binary_search(a).is_err())
        {
            return Err(Self::malformed(
                from,
                "masked-input",
                "accuses sites that are not its neighbours, or not in increasing order",
            ));
        }
        if !accused.is_empty() {
            self.accusations.insert(from, accused);
        }
        self.uploads.insert(from, v);
        Ok(())
    }

    fn accept_shares(&mut self, from: SiteId, reply: UnmaskShares) -> Result<(), AggregatorError> {
        let (want_self, want_key) = self
            .requests
            .get(&from)
            .ok_or(MessageError::UnexpectedSender(from))?;
        let got_self: Vec<SiteId> = reply.self_mask.iter().map(|s| s.owner).collect();
        let got_key: Vec<SiteId> = reply.mask_key.iter().map(|s| s.owner).collect();
        if &got_self != want_self || &got_key != want_key {
            return Err(Self::malformed(
                from,
                "unmask-shares",
                "shares differ from the request",
            ));
        }
        for s in reply.self_mask {
            self.self_mask_shares
                .entry(s.owner)
                .or_default()
                .push((from, s.value.0));
        }
        for s in reply.mask_key {
            self.mask_key_shares
                .entry(s.owner)
                .or_default()
                .push((from, s.value.0));
        }
        Ok(())
    }

    /// The caller's deadline for the current phase has passed: every site that has not
    /// answered is treated as dropped.
    pub fn close_phase(&mut self) -> Result<&Status, AggregatorError> {
        self.phase()?;
        self.expected = self.responded.clone();
        self.finish_phase();
        Ok(&self.status)
    }

    /// The caller learned that `site` is gone (e.g. its connection closed).
    pub fn mark_dropped(&mut self, site: SiteId) -> Result<&Status, AggregatorError> {
        self.phase()?;
        if !self.responded.contains(&site) {
            self.expected.remove(&site);
        }
        self.close_if_complete();
        Ok(&self.status)
    }

    fn close_if_complete(&mut self) {
        if matches!(self.status, Status::Collecting(_))
            && self.responded.len() == self.expected.len()
        {
            self.finish_phase();
        }
    }

    pub(super) fn neighbours_in(&self, site: SiteId, set: &SiteSet) -> Vec<SiteId> {
        self.config
            .graph()
            .neighbours(site)
            .into_iter()
            .filter(|s| set.contains(s))
            .collect()
    }

    pub(super) fn holders_in(&self, site: SiteId, set: &SiteSet) -> usize {
        self.config
            .graph()
            .holders(site)
            .iter()
            .filter(|s| set.contains(s))
            .count()
    }

    pub(super) fn abort(&mut self, reason: AbortReason) {
        self.status = Status::Aborted(reason);
        self.outgoing.clear();
    }

    /// Removes sites whose shares would have fewer than t holders left, until stable.
    fn prune(&self, mut set: SiteSet) -> SiteSet {
        let t = self.config.threshold();
        loop {
            let weak: Vec<SiteId> = set
                .iter()
                .copied()
                .filter(|s| self.holders_in(*s, &set) < t)
                .collect();
            if weak.is_empty() {
                return set;
            }
            for s in weak {
                set.remove(&s);
            }
        }
    }

    /// Aborts unless `set` has at least t members.
    fn require_quorum(&mut self, phase: Phase, set: &SiteSet) -> bool {
        let t = self.config.threshold();
        if set.len() < t {
            self.abort(AbortReason::TooFewSurvivors {
                phase,
                survivors: set.len(),
                threshold: t,
            });
            return false;
        }
        true
    }

    /// Aborts unless every site whose masks are in play keeps t valid holders in
    /// `holders`: survivors (self-masks) and dropped sites some survivor masked with.
    fn require_recoverable(&mut self, phase: Phase, holders: &SiteSet) -> bool {
        let t = self.config.threshold();
        let owners: Vec<SiteId> = self
            .survivors
            .shared
            .iter()
            .copied()
            .filter(|o| self.survivors.masked.contains(o) || !self.masked_with(*o).is_empty())
            .collect();
        for owner in owners {
            let have = self.valid_holders_in(owner, holders);
            if have < t {
                self.abort(AbortReason::TooFewHolders {
                    phase,
                    owner,
                    have,
                    need: t,
                });
                return false;
            }
        }
        true
    }

    fn send(&mut self, to: SiteId, body: Body) {
        let p = self.config.params();
        let header = Header {
            version: PROTOCOL_VERSION,
            session: p.session,
            round: p.round,
            sender: Party::Aggregator,
            recipient: Party::Site(to),
        };
        self.outgoing.push(Outgoing {
            to,
            envelope: Envelope { header, body },
        });
    }

    fn begin(&mut self, phase: Phase, expected: SiteSet) {
        self.status = Status::Collecting(phase);
        self.expected = expected;
        self.responded.clear();
    }

    fn finish_phase(&mut self) {
        let Status::Collecting(phase) = self.status else {
            return;
        };
        // Shares were stored as they arrived, so unmasking uses exactly the responders'.
        let responded = std::mem::take(&mut self.responded);
        match phase {
            Phase::AdvertiseKeys => {
                if !self.require_quorum(phase, &responded) {
                    return;
                }
                let u1 = self.prune(responded);
                if !self.require_quorum(phase, &u1) {
                    return;
                }
                self.adverts.retain(|s, _| u1.contains(s));
                for &site in &u1 {
                    let ads = self
                        .neighbours_in(site, &u1)
                        .iter()
                        .map(|n| self.adverts[n].clone())
                        .collect();
                    self.send(site, Body::NeighbourKeys(ads));
                }
                self.survivors.advertised = u1.clone();
                self.begin(Phase::ShareKeys, u1);
            }
            Phase::ShareKeys => {
                if !self.require_quorum(phase, &responded) {
                    return;
                }
                let u2 = self.prune(responded);
                if !self.require_quorum(phase, &u2) {
                    return;
                }
                let mut inbox: BTreeMap<SiteId, Vec<EncryptedShares>> = BTreeMap::new();
                for (from, list) in std::mem::take(&mut self.shares) {
                    if !u2.contains(&from) {
                        continue;
                    }
                    for EncryptedShares { peer, ciphertext } in list {
                        if u2.contains(&peer) {
                            inbox.entry(peer).or_default().push(EncryptedShares {
                                peer: from,
                                ciphertext,
                            });
                        }
                    }
                }
                for &site in &u2 {
                    self.send(
                        site,
                        Body::ForwardedShares(inbox.remove(&site).unwrap_or_default()),
                    );
                }
                self.survivors.shared = u2.clone();
                self.begin(Phase::MaskedInput, u2);
            }
            Phase::MaskedInput => {
                let settled = self.settle_accusations(responded);
                let u3 = self.drop_unrecoverable(settled);
                self.survivors.masked = u3.clone();
                if !self.require_quorum(phase, &u3) || !self.require_recoverable(phase, &u3) {
                    return;
                }
                self.sum_uploads(&u3);
                let list: Vec<SiteId> = u3.iter().copied().collect();
                self.consistency = protocol::consistency_message(&self.config, &list);
                for &site in &u3 {
                    self.send(site, Body::SurvivorSet(list.clone()));
                }
                self.begin(Phase::ConsistencyCheck, u3);
            }
            Phase::ConsistencyCheck => {
                if !self.require_quorum(phase, &responded) {
                    return;
                }
                let t = self.config.threshold();
                // Only sites that will see t signatures from their holders can answer.
                let u4: SiteSet = responded
                    .iter()
                    .copied()
                    .filter(|s| self.holders_in(*s, &responded) >= t)
                    .collect();
                if !self.require_quorum(phase, &u4) || !self.require_recoverable(phase, &u4) {
                    return;
                }
                let dropped: SiteSet = self
                    .survivors
                    .shared
                    .difference(&self.survivors.masked)
                    .copied()
                    .collect();
                for &site in &u4 {
                    let holders = self.config.graph().holders(site);
                    // t signatures are what a site needs and all it gains from (every
                    // one was checked on arrival); each further one would only cost
                    // every site a check.
                    let signatures: Vec<(SiteId, Signature)> = holders
                        .iter()
                        .filter_map(|h| self.signatures.get(h).map(|s| (*h, *s)))
                        .take(t)
                        .collect();
                    let reveal_self_mask: Vec<SiteId> = holders
                        .iter()
                        .copied()
                        .filter(|h| self.survivors.masked.contains(h))
                        .collect();
                    let reveal_mask_key: Vec<SiteId> = holders
                        .iter()
                        .copied()
                        .filter(|h| dropped.contains(h) && !self.accuses(site, *h))
                        .collect();
                    self.requests
                        .insert(site, (reveal_self_mask.clone(), reveal_mask_key.clone()));
                    self.send(
                        site,
                        Body::UnmaskRequest(UnmaskRequest {
                            signatures,
                            reveal_self_mask,
                            reveal_mask_key,
                        }),
                    );
                }
                self.survivors.signed = u4.clone();
                self.begin(Phase::Unmasking, u4);
            }
            Phase::Unmasking => self.unmask(),
        }
    }
}
