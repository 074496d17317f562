//! The site (client) side of a round: messages in, messages out.

use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{self, AgreementSecret, IdentityKeyPair, Signature, random_scalar};
use crate::error::{MessageError, SiteError};
use crate::ids::{Party, Phase, SiteId};
use crate::mask::MaskJob;
use crate::messages::{
    Body, EncryptedShares, Envelope, Header, KeyAdvertisement, MaskedUpload, PROTOCOL_VERSION,
    RevealedShare, ShareValue, UnmaskRequest, UnmaskShares,
};
use crate::params::RoundConfig;
use crate::protocol::{self, Roster};
use crate::ring::{MaskSign, MaskedVector, PlainVector};
use crate::shamir;

/// The round's ephemeral secrets.
#[derive(Zeroize, ZeroizeOnDrop)]
struct Secrets {
    share_key: AgreementSecret,
    /// s_u: shared with the holders; the X25519 mask key is derived from it.
    mask_secret: Scalar,
    mask_key: AgreementSecret,
    /// b_u: shared with the holders; the self-mask seed is derived from it.
    self_mask: Scalar,
}

/// Shares this site holds of one owner's two secrets.
#[derive(Zeroize, ZeroizeOnDrop)]
struct HeldShares {
    mask_secret: Scalar,
    self_mask: Scalar,
}

enum State {
    AwaitingNeighbourKeys {
        secrets: Secrets,
        input: PlainVector,
    },
    AwaitingShares {
        secrets: Secrets,
        input: PlainVector,
        neighbours: BTreeMap<SiteId, KeyAdvertisement>,
        /// X25519(c_u, c_v) per neighbour, agreed once to seal this site's shares and
        /// kept to open the neighbour's (the same key both ways).
        transport: BTreeMap<SiteId, Zeroizing<[u8; 32]>>,
        own: HeldShares,
    },
    AwaitingSurvivors {
        held: BTreeMap<SiteId, HeldShares>,
    },
    AwaitingUnmaskRequest {
        held: BTreeMap<SiteId, HeldShares>,
        survivors: Vec<SiteId>,
    },
    Finished,
}

impl State {
    /// The phase whose opening message this state waits for.
    fn awaits(&self) -> Option<Phase> {
        match self {
            State::AwaitingNeighbourKeys { .. } => Some(Phase::ShareKeys),
            State::AwaitingShares { .. } => Some(Phase::MaskedInput),
            State::AwaitingSurvivors { .. } => Some(Phase::ConsistencyCheck),
            State::AwaitingUnmaskRequest { .. } => Some(Phase::Unmasking),
            State::Finished => None,
        }
    }
}

/// One site's participation in one round.
///
/// Create it with [`Site::new`], send the returned advertisement, then feed every message
/// from the aggregator to [`Site::handle`] and send whatever it returns. A
/// [`MessageError`] means the message was dropped and the site is unchanged; any other
/// error ends the site's part in the round.
pub struct Site {
    config: Arc<RoundConfig>,
    id: SiteId,
    identity: Arc<IdentityKeyPair>,
    roster: Arc<Roster>,
    state: State,
}

impl Site {
    /// Generates the round's keys and returns the site with its key advertisement.
    pub fn new<R: CryptoRng + ?Sized>(
        config: Arc<RoundConfig>,
        id: SiteId,
        identity: Arc<IdentityKeyPair>,
        roster: Arc<Roster>,
        input: PlainVector,
        rng: &mut R,
    ) -> Result<(Self, Envelope), SiteError> {
        if !config.is_participant(id) {
            return Err(SiteError::NotParticipant(id));
        }
        match roster.get(id) {
            None => return Err(SiteError::UnknownSite(id)),
            Some(pk) if *pk != identity.public() => return Err(SiteError::IdentityMismatch(id)),
            Some(_) => {}
        }
        if input.len() != config.vector_len() || input.modulus() != config.modulus() {
            return Err(SiteError::InputShape {
                got: input.len(),
                got_bits: input.modulus().bits(),
                expected: config.vector_len(),
                expected_bits: config.modulus().bits(),
            });
        }
        let mut share_key_bytes = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(share_key_bytes.as_mut());
        let mask_secret = random_scalar(rng);
        let secrets = Secrets {
            share_key: AgreementSecret::from_bytes(share_key_bytes),
            mask_key: protocol::mask_key_from_secret(&config, id, &mask_secret),
            mask_secret,
            self_mask: random_scalar(rng),
        };
        let share_key = secrets.share_key.public();
        let mask_key = secrets.mask_key.public();
        let commitment = protocol::self_mask_commitment(&config, id, &secrets.self_mask);
        let signature = identity.sign(&protocol::advertisement_message(
            &config,
            id,
            &share_key,
            &mask_key,
            &commitment,
        ));
        let ad = KeyAdvertisement {
            site: id,
            share_key,
            mask_key,
            self_mask_commitment: commitment,
            signature,
        };
        let site = Self {
            config,
            id,
            identity,
            roster,
            state: State::AwaitingNeighbourKeys { secrets, input },
        };
        let env = site.envelope(Body::AdvertiseKeys(ad));
        Ok((site, env))
    }

    pub fn id(&self) -> SiteId {
        self.id
    }

    /// Whether the site has answered the unmasking request or abandoned the round.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            header: Header {
                version: PROTOCOL_VERSION,
                session: self.config.params().session,
                round: self.config.params().round,
                sender: Party::Site(self.id),
                recipient: Party::Aggregator,
            },
            body,
        }
    }

    fn malformed(&self, kind: &'static str, detail: impl Into<String>) -> SiteError {
        SiteError::Message(MessageError::Malformed {
            sender: Party::Aggregator,
            kind,
            detail: detail.into(),
        })
    }

    /// Processes one message from the aggregator and returns the reply.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        env: Envelope,
        rng: &mut R,
    ) -> Result<Envelope, SiteError> {
        protocol::check_header(&self.config, &env, Party::Aggregator, Party::Site(self.id))?;
        let Some(expected) = self.state.awaits() else {
            return Err(SiteError::Finished);
        };
        if env.phase() != expected {
            return Err(MessageError::OutOfPhase {
                kind: env.body.kind(),
                got: env.phase(),
                expected,
            }
            .into());
        }
        // From here on the state is consumed: any error abandons the round.
        let state = std::mem::replace(&mut self.state, State::Finished);
        let (next, reply) = match (state, env.body) {
            (State::AwaitingNeighbourKeys { secrets, input }, Body::NeighbourKeys(ads)) => {
                self.share_keys(secrets, input, ads, rng)?
            }
            (
                State::AwaitingShares {
                    secrets,
                    input,
                    neighbours,
                    transport,
                    own,
                },
                Body::ForwardedShares(shares),
            ) => self.mask_input(&secrets, input, &neighbours, &transport, own, shares)?,
            (State::AwaitingSurvivors { held }, Body::SurvivorSet(survivors)) => {
                self.sign_survivors(held, survivors)?
            }
            (State::AwaitingUnmaskRequest { held, survivors }, Body::UnmaskRequest(request)) => {
                (State::Finished, self.unmask(&held, &survivors, request)?)
            }
            (_, body) => {
                return Err(self.malformed(body.kind(), "not a message the aggregator sends"));
            }
        };
        self.state = next;
        Ok(self.envelope(reply))
    }

    fn share_keys<R: CryptoRng + ?Sized>(
        &self,
        secrets: Secrets,
        input: PlainVector,
        ads: Vec<KeyAdvertisement>,
        rng: &mut R,
    ) -> Result<(State, Body), SiteError> {
        let graph = self.config.graph();
        let mut neighbours = BTreeMap::new();
        let mut seen_keys =
            BTreeSet::from([secrets.share_key.public().0, secrets.mask_key.public().0]);
        if let Some(ad) = ads.iter().find(|ad| !graph.adjacent(self.id, ad.site)) {
            return Err(self.malformed("neighbour-keys", format!("{} is not a neighbour", ad.site)));
        }
        // All neighbours' signatures in one batch.
        protocol::verify_advertisements(&self.config, &self.roster, &ads)?;
        for ad in ads {
            if !seen_keys.insert(ad.share_key.0) || !seen_keys.insert(ad.mask_key.0) {
                return Err(SiteError::RepeatedKey { peer: ad.site });
            }
            if neighbours.insert(ad.site, ad).is_some() {
                return Err(self.malformed("neighbour-keys", "a neighbour is listed twice"));
            }
        }
        let mut holders: Vec<SiteId> = neighbours.keys().copied().collect();
        holders.push(self.id);
        holders.sort_unstable();
        let t = self.config.threshold();
        if holders.len() < t {
            return Err(SiteError::TooFewHolders {
                phase: Phase::ShareKeys,
                have: holders.len(),
                need: t,
            });
        }
        let mask_shares = shamir::share(&secrets.mask_secret, t, &holders, rng)?;
        let self_shares = shamir::share(&secrets.self_mask, t, &holders, rng)?;
        let transport = agree_each(
            &secrets.share_key,
            neighbours.iter().map(|(s, ad)| (*s, &ad.share_key)),
        )?;
        let mut own = None;
        let mut out = Vec::with_capacity(neighbours.len());
        for ((holder, s), (_, b)) in mask_shares.into_iter().zip(self_shares) {
            let held = HeldShares {
                mask_secret: s,
                self_mask: b,
            };
            if holder == self.id {
                own = Some(held);
                continue;
            }
            let mut plaintext = zeroize::Zeroizing::new([0u8; 64]);
            plaintext[..32].copy_from_slice(&held.mask_secret.to_bytes());
            plaintext[32..].copy_from_slice(&held.self_mask.to_bytes());
            let ciphertext = crypto::seal_shares(
                &transport[&holder],
                self.config.digest(),
                self.id,
                holder,
                &plaintext,
            );
            out.push(EncryptedShares {
                peer: holder,
                ciphertext,
            });
        }
        let own = own.expect("the site is one of its own holders");
        Ok((
            State::AwaitingShares {
                secrets,
                input,
                neighbours,
                transport,
                own,
            },
            Body::ShareKeys(out),
        ))
    }

    fn mask_input(
        &self,
        secrets: &Secrets,
        input: PlainVector,
        neighbours: &BTreeMap<SiteId, KeyAdvertisement>,
        transport: &BTreeMap<SiteId, Zeroizing<[u8; 32]>>,
        own: HeldShares,
        shares: Vec<EncryptedShares>,
    ) -> Result<(State, Body), SiteError> {
        let mut held = BTreeMap::new();
        let mut accused = Vec::new();
        for EncryptedShares { peer, ciphertext } in shares {
            let Some(shared) = transport.get(&peer) else {
                return Err(self.malformed(
                    "forwarded-shares",
                    format!("{peer} is not a neighbour with keys"),
                ));
            };
            if held.contains_key(&peer) || accused.contains(&peer) {
                return Err(self.malformed("forwarded-shares", format!("{peer} appears twice")));
            }
            match self.open_shares(shared, peer, &ciphertext) {
                Some(shares) => {
                    held.insert(peer, shares);
                }
                // A ciphertext that does not open: hold nothing of `peer`, leave its
                // pairwise mask out, and name it so that the aggregator excludes it.
                None => accused.push(peer),
            }
        }
        accused.sort_unstable();
        let t = self.config.threshold();
        if held.len() + 1 < t {
            return Err(SiteError::TooFewHolders {
                phase: Phase::MaskedInput,
                have: held.len() + 1,
                need: t,
            });
        }
        let mut jobs = Vec::with_capacity(held.len() + 1);
        jobs.push(MaskJob {
            seed: protocol::self_mask_seed(&self.config, self.id, &secrets.self_mask),
            sign: MaskSign::Add,
        });
        let agreed = agree_each(
            &secrets.mask_key,
            held.keys().map(|peer| (*peer, &neighbours[peer].mask_key)),
        )?;
        for (peer, shared) in &agreed {
            jobs.push(MaskJob {
                seed: protocol::pairwise_seed(&self.config, self.id, *peer, shared),
                sign: protocol::pairwise_sign(self.id, *peer),
            });
        }
        let modulus = input.modulus();
        let mut words = input.into_words();
        crate::mask::apply_mask_streams(&mut words, self.config.params().mask_prg, &jobs);
        held.insert(self.id, own);
        Ok((
            State::AwaitingSurvivors { held },
            Body::MaskedInput(MaskedUpload {
                vector: MaskedVector::from_masked_words(modulus, words),
                accused,
            }),
        ))
    }

    /// Opens `peer`'s ciphertext; `None` when it is forged, corrupted or not canonical.
    fn open_shares(
        &self,
        shared: &[u8; 32],
        peer: SiteId,
        ciphertext: &[u8],
    ) -> Option<HeldShares> {
        let plain =
            crypto::open_shares(shared, self.config.digest(), peer, self.id, ciphertext).ok()?;
        let scalar = |bytes: &[u8]| {
            let arr: [u8; 32] = bytes.try_into().ok()?;
            Option::<Scalar>::from(Scalar::from_canonical_bytes(arr))
        };
        Some(HeldShares {
            mask_secret: scalar(&plain[..32])?,
            self_mask: scalar(&plain[32..])?,
        })
    }

    fn sign_survivors(
        &self,
        held: BTreeMap<SiteId, HeldShares>,
        survivors: Vec<SiteId>,
    ) -> Result<(State, Body), SiteError> {
        if !protocol::strictly_increasing(&survivors) {
            return Err(self.malformed("survivor-set", "not strictly increasing"));
        }
        if survivors.binary_search(&self.id).is_err() {
            return Err(SiteError::NotASurvivor);
        }
        // Both lists ascend, so one merge walk checks that every survivor participates
        // (O(n), where a search per survivor made this the site's only O(n log n) step).
        let mut participants = self.config.params().participants.iter().peekable();
        for s in &survivors {
            while participants.next_if(|p| *p < s).is_some() {}
            if participants.next_if_eq(&s).is_none() {
                return Err(self.malformed("survivor-set", format!("{s} is not a participant")));
            }
        }
        // A surviving neighbour must be one whose shares this site received.
        for v in self.config.graph().neighbours(self.id) {
            if survivors.binary_search(&v).is_ok() && !held.contains_key(&v) {
                return Err(SiteError::InconsistentSurvivors(v));
            }
        }
        if survivors.len() < self.config.threshold() {
            return Err(SiteError::TooFewHolders {
                phase: Phase::ConsistencyCheck,
                have: survivors.len(),
                need: self.config.threshold(),
            });
        }
        let signature = self
            .identity
            .sign(&protocol::consistency_message(&self.config, &survivors));
        Ok((
            State::AwaitingUnmaskRequest { held, survivors },
            Body::ConsistencySignature(signature),
        ))
    }

    fn unmask(
        &self,
        held: &BTreeMap<SiteId, HeldShares>,
        survivors: &[SiteId],
        request: UnmaskRequest,
    ) -> Result<Body, SiteError> {
        // 1. At least t of this site's holders signed the same survivor set.
        let message = protocol::consistency_message(&self.config, survivors);
        let mut signers = BTreeSet::new();
        for (signer, _) in &request.signatures {
            let is_holder = *signer == self.id || self.config.graph().adjacent(self.id, *signer);
            if !is_holder || survivors.binary_search(signer).is_err() {
                return Err(self.malformed(
                    "unmask-request",
                    format!("{signer} cannot sign for this site"),
                ));
            }
            if !signers.insert(*signer) {
                return Err(self.malformed("unmask-request", format!("{signer} signed twice")));
            }
            if self.roster.get(*signer).is_none() {
                return Err(SiteError::UnknownSite(*signer));
            }
        }
        let signed: Vec<(SiteId, &[u8], &Signature)> = request
            .signatures
            .iter()
            .map(|(signer, sig)| (*signer, message.as_slice(), sig))
            .collect();
        protocol::verify_signed(&self.roster, &signed)?;
        let t = self.config.threshold();
        if signers.len() < t {
            return Err(SiteError::TooFewSignatures {
                have: signers.len(),
                need: t,
            });
        }
        // 2. Never reveal both shares of a peer, and only the kind its status allows.
        let self_mask: BTreeSet<SiteId> = request.reveal_self_mask.iter().copied().collect();
        let mask_key: BTreeSet<SiteId> = request.reveal_mask_key.iter().copied().collect();
        if self_mask.len() != request.reveal_self_mask.len()
            || mask_key.len() != request.reveal_mask_key.len()
        {
            return Err(self.malformed("unmask-request", "a peer is listed twice"));
        }
        if let Some(peer) = self_mask.intersection(&mask_key).next() {
            return Err(SiteError::RefusedDoubleReveal { peer: *peer });
        }
        let is_survivor = |p: &SiteId| survivors.binary_search(p).is_ok();
        let mut reply = UnmaskShares {
            self_mask: Vec::new(),
            mask_key: Vec::new(),
        };
        for peer in self_mask {
            if !is_survivor(&peer) {
                return Err(SiteError::RefusedSelfMaskOfDropped { peer });
            }
            let shares = held.get(&peer).ok_or(SiteError::NoSharesOf { peer })?;
            reply.self_mask.push(RevealedShare {
                owner: peer,
                value: ShareValue(shares.self_mask),
            });
        }
        for peer in mask_key {
            if is_survivor(&peer) {
                return Err(SiteError::RefusedMaskKeyOfSurvivor { peer });
            }
            let shares = held.get(&peer).ok_or(SiteError::NoSharesOf { peer })?;
            reply.mask_key.push(RevealedShare {
                owner: peer,
                value: ShareValue(shares.mask_secret),
            });
        }
        Ok(Body::UnmaskShares(reply))
    }
}

/// X25519 of `secret` with each peer's key (batched), or the first peer whose key gives
/// the all-zero output.
fn agree_each<'a>(
    secret: &AgreementSecret,
    peers: impl Iterator<Item = (SiteId, &'a crypto::AgreementPublicKey)>,
) -> Result<BTreeMap<SiteId, Zeroizing<[u8; 32]>>, SiteError> {
    let (ids, keys): (Vec<SiteId>, Vec<&crypto::AgreementPublicKey>) = peers.unzip();
    ids.into_iter()
        .zip(secret.agree_all(&keys))
        .map(|(peer, shared)| {
            shared
                .map(|s| (peer, s))
                .map_err(|source| SiteError::Agreement { peer, source })
        })
        .collect()
}
