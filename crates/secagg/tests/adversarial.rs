//! A deviating aggregator and a hostile network: refused reveals, equivocation,
//! tampering, replay, forgery, misaddressing, out-of-phase and malformed messages.

use chacha20::ChaCha20Rng;
use proptest::prelude::*;
use rand_core::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_secagg::simulation::{site_rng, test_identities};
use tessera_secagg::{
    Aggregator, AggregatorError, Body, Envelope, GraphSpec, IdentityKeyPair, MaskedVector,
    MessageError, Modulus, Outgoing, Party, Phase, PlainVector, Roster, Round, RoundConfig,
    RoundParams, SessionId, Site, SiteError, SiteId, Status,
};

const N: u32 = 5;
const T: u32 = 3;
const M: u32 = 8;

fn params(round: u64, threshold: u32) -> RoundParams {
    sized_params(round, N, threshold)
}

fn sized_params(round: u64, n: u32, threshold: u32) -> RoundParams {
    RoundParams {
        session: SessionId([9; 16]),
        round: Round(round),
        participants: (0..n).map(SiteId).collect(),
        vector_len: M,
        modulus: Modulus::new(16).unwrap(),
        threshold,
        graph: GraphSpec::Complete,
        context: [0; 32],
        mask_prg: Default::default(),
    }
}

fn input(id: SiteId) -> PlainVector {
    PlainVector::new(
        Modulus::new(16).unwrap(),
        (0..M).map(|j| id.0 * 100 + j).collect(),
    )
}

/// Drives a round step by step so that tests can intercept any message.
struct Harness {
    config: Arc<RoundConfig>,
    identities: Vec<Arc<IdentityKeyPair>>,
    roster: Arc<Roster>,
    sites: BTreeMap<SiteId, (Site, ChaCha20Rng)>,
    aggregator: Aggregator,
    uplink: Vec<(SiteId, Envelope)>,
}

impl Harness {
    fn new(round: u64) -> Self {
        Self::sized(round, N, T)
    }

    /// A complete-graph round of `n` sites with threshold `t`.
    fn sized(round: u64, n: u32, t: u32) -> Self {
        let config = RoundConfig::new(sized_params(round, n, t)).unwrap();
        let ids: Vec<SiteId> = (0..n).map(SiteId).collect();
        let (identities, roster) = test_identities(&ids, [1; 32]);
        let mut sites = BTreeMap::new();
        let mut uplink = Vec::new();
        for (id, identity) in ids.iter().zip(&identities) {
            let mut rng = site_rng([round as u8; 32], *id);
            let (site, ad) = Site::new(
                config.clone(),
                *id,
                identity.clone(),
                roster.clone(),
                input(*id),
                &mut rng,
            )
            .unwrap();
            sites.insert(*id, (site, rng));
            uplink.push((*id, ad));
        }
        let aggregator = Aggregator::new(config.clone(), roster.clone()).unwrap();
        Self {
            config,
            identities,
            roster,
            sites,
            aggregator,
            uplink,
        }
    }

    /// Delivers everything queued for the aggregator, except from `silent` sites.
    fn deliver(&mut self, silent: &[SiteId]) -> Vec<Outgoing> {
        let phase = match self.aggregator.status() {
            Status::Collecting(p) => *p,
            other => panic!("round not running: {other:?}"),
        };
        for (from, env) in std::mem::take(&mut self.uplink) {
            if !silent.contains(&from) {
                self.aggregator.handle(from, env).unwrap();
            }
        }
        if self.aggregator.status() == &Status::Collecting(phase) {
            self.aggregator.close_phase().unwrap();
        }
        self.aggregator.take_outgoing()
    }

    fn reply(&mut self, outgoing: Vec<Outgoing>) {
        for out in outgoing {
            let (site, rng) = self.sites.get_mut(&out.to).unwrap();
            let reply = site.handle(out.envelope, rng).unwrap();
            self.uplink.push((out.to, reply));
        }
    }

    fn site(&mut self, id: SiteId, env: Envelope) -> Result<Envelope, SiteError> {
        let (site, rng) = self.sites.get_mut(&id).unwrap();
        site.handle(env, rng)
    }

    /// Runs until the aggregator emits the messages that open `phase`, with `dropped`
    /// silent from the masked-input phase on; returns those messages undelivered.
    fn run_until(&mut self, phase: Phase, dropped: &[SiteId]) -> Vec<Outgoing> {
        loop {
            let current = match self.aggregator.status() {
                Status::Collecting(p) => *p,
                other => panic!("round not running: {other:?}"),
            };
            let silent = if current >= Phase::MaskedInput {
                dropped
            } else {
                &[]
            };
            let out = self.deliver(silent);
            if out.first().is_some_and(|o| o.envelope.phase() == phase) {
                return out;
            }
            self.reply(out);
        }
    }
}

fn take_for(out: &mut Vec<Outgoing>, id: SiteId) -> Envelope {
    let i = out.iter().position(|o| o.to == id).unwrap();
    out.remove(i).envelope
}

fn with_request(env: &mut Envelope, f: impl FnOnce(&mut tessera_secagg::UnmaskRequest)) {
    match &mut env.body {
        Body::UnmaskRequest(r) => f(r),
        other => panic!("not an unmask request: {other:?}"),
    }
}

#[test]
fn an_honest_step_by_step_round_completes() {
    let mut h = Harness::new(1);
    let out = h.run_until(Phase::Unmasking, &[SiteId(4)]);
    h.reply(out);
    h.deliver(&[]);
    let result = h.aggregator.result().unwrap();
    let mut expected = PlainVector::zeros(Modulus::new(16).unwrap(), M as usize);
    for i in 0..4 {
        expected.add_assign(&input(SiteId(i)));
    }
    assert_eq!(result.sum, expected);
}

#[test]
fn a_site_refuses_to_reveal_both_shares_of_a_peer() {
    let mut h = Harness::new(1);
    let mut out = h.run_until(Phase::Unmasking, &[SiteId(4)]);
    let mut env = take_for(&mut out, SiteId(0));
    with_request(&mut env, |r| {
        assert_eq!(r.reveal_mask_key, vec![SiteId(4)]);
        r.reveal_mask_key.push(SiteId(1));
    });
    assert_eq!(
        h.site(SiteId(0), env).unwrap_err(),
        SiteError::RefusedDoubleReveal { peer: SiteId(1) }
    );
    // Having refused, the site is out of the round and answers nothing more.
    let mut env = take_for(&mut out, SiteId(1));
    env.header.recipient = Party::Site(SiteId(0));
    assert_eq!(h.site(SiteId(0), env).unwrap_err(), SiteError::Finished);
}

#[test]
fn a_site_refuses_the_mask_key_of_a_survivor_and_the_self_mask_of_a_dropped_site() {
    let mut h = Harness::new(1);
    let mut out = h.run_until(Phase::Unmasking, &[SiteId(4)]);
    let mut env = take_for(&mut out, SiteId(0));
    with_request(&mut env, |r| {
        r.reveal_self_mask.retain(|s| *s != SiteId(2));
        r.reveal_mask_key.push(SiteId(2));
    });
    assert_eq!(
        h.site(SiteId(0), env).unwrap_err(),
        SiteError::RefusedMaskKeyOfSurvivor { peer: SiteId(2) }
    );

    let mut env = take_for(&mut out, SiteId(1));
    with_request(&mut env, |r| {
        r.reveal_mask_key.clear();
        r.reveal_self_mask.push(SiteId(4));
    });
    assert_eq!(
        h.site(SiteId(1), env).unwrap_err(),
        SiteError::RefusedSelfMaskOfDropped { peer: SiteId(4) }
    );
}

#[test]
fn equivocating_survivor_sets_are_caught_by_signatures() {
    let mut h = Harness::new(1);
    let mut out = h.run_until(Phase::ConsistencyCheck, &[]);
    // The server tells site 0 that site 2 dropped, and everyone else that it survived.
    let mut env = take_for(&mut out, SiteId(0));
    if let Body::SurvivorSet(s) = &mut env.body {
        s.retain(|x| *x != SiteId(2));
    }
    let forged_view_sig = h.site(SiteId(0), env).unwrap();
    assert_eq!(
        h.aggregator.handle(SiteId(0), forged_view_sig).unwrap_err(),
        AggregatorError::Message(MessageError::BadSignature(SiteId(0)))
    );
    h.reply(out);
    let mut requests = h.deliver(&[]);
    assert!(
        requests.iter().all(|o| o.to != SiteId(0)),
        "site 0 is treated as dropped"
    );
    // Signatures of the honest view do not convince site 0, whose view differs.
    let mut env = take_for(&mut requests, SiteId(1));
    env.header.recipient = Party::Site(SiteId(0));
    assert!(matches!(
        h.site(SiteId(0), env),
        Err(SiteError::Message(MessageError::BadSignature(_))
            | SiteError::Message(MessageError::Malformed { .. }))
    ));
}

#[test]
fn too_few_signatures_are_refused() {
    let mut h = Harness::new(1);
    let mut out = h.run_until(Phase::Unmasking, &[]);
    let mut env = take_for(&mut out, SiteId(0));
    with_request(&mut env, |r| r.signatures.truncate(T as usize - 1));
    assert_eq!(
        h.site(SiteId(0), env).unwrap_err(),
        SiteError::TooFewSignatures { have: 2, need: 3 }
    );
}

/// The accusations in a site's masked-input message.
fn accused_in(env: &Envelope) -> Vec<SiteId> {
    match &env.body {
        Body::MaskedInput(upload) => upload.accused.clone(),
        other => panic!("not a masked input: {other:?}"),
    }
}

#[test]
fn tampered_shares_make_the_recipient_accuse_their_sender() {
    let mut h = Harness::new(1);
    let mut out = h.run_until(Phase::MaskedInput, &[]);
    let mut env = take_for(&mut out, SiteId(0));
    if let Body::ForwardedShares(list) = &mut env.body {
        list[1].ciphertext[5] ^= 0x40;
    }
    let reply = h.site(SiteId(0), env).unwrap();
    assert_eq!(accused_in(&reply), vec![SiteId(2)]);
}

#[test]
fn shares_rerouted_to_another_site_do_not_decrypt() {
    let mut h = Harness::new(1);
    let mut out = h.run_until(Phase::MaskedInput, &[]);
    let for_zero = take_for(&mut out, SiteId(0));
    let mut for_one = take_for(&mut out, SiteId(1));
    // Give site 1 the ciphertext that site 2 encrypted for site 0.
    if let (Body::ForwardedShares(a), Body::ForwardedShares(b)) =
        (&for_zero.body, &mut for_one.body)
    {
        let from_two = a.iter().find(|e| e.peer == SiteId(2)).unwrap().clone();
        let slot = b.iter_mut().find(|e| e.peer == SiteId(2)).unwrap();
        slot.ciphertext = from_two.ciphertext;
    }
    let reply = h.site(SiteId(1), for_one).unwrap();
    assert_eq!(accused_in(&reply), vec![SiteId(2)]);
}

#[test]
fn replayed_stale_duplicate_and_forged_messages_are_rejected_and_the_round_goes_on() {
    let old = Harness::new(1);
    let old_ad = old.uplink[0].1.clone();
    let mut h = Harness::new(2);

    // Replay from round 1 into round 2.
    assert_eq!(
        h.aggregator.handle(SiteId(0), old_ad).unwrap_err(),
        AggregatorError::Message(MessageError::WrongRound {
            got: Round(1),
            expected: Round(2)
        })
    );
    // A message arriving on site 1's channel that claims to be site 0's.
    let ad0 = h.uplink[0].1.clone();
    assert_eq!(
        h.aggregator.handle(SiteId(1), ad0.clone()).unwrap_err(),
        AggregatorError::Message(MessageError::SenderMismatch {
            claimed: Party::Site(SiteId(0)),
            actual: Party::Site(SiteId(1))
        })
    );
    // Advertised keys altered in transit.
    let mut forged = ad0.clone();
    if let Body::AdvertiseKeys(ad) = &mut forged.body {
        ad.mask_key.0[0] ^= 1;
    }
    assert_eq!(
        h.aggregator.handle(SiteId(0), forged).unwrap_err(),
        AggregatorError::Message(MessageError::BadSignature(SiteId(0)))
    );
    // Out of phase: a masked input during key advertisement.
    let mut early = ad0.clone();
    early.body = Body::MaskedInput(upload(masked(16, M as usize)));
    assert!(matches!(
        h.aggregator.handle(SiteId(0), early).unwrap_err(),
        AggregatorError::Message(MessageError::OutOfPhase {
            got: Phase::MaskedInput,
            expected: Phase::AdvertiseKeys,
            ..
        })
    ));
    // Another session.
    let mut other = ad0.clone();
    other.header.session = SessionId([0; 16]);
    assert_eq!(
        h.aggregator.handle(SiteId(0), other).unwrap_err(),
        AggregatorError::Message(MessageError::WrongSession)
    );
    // The genuine message is accepted once, then its duplicate is refused.
    h.aggregator.handle(SiteId(0), ad0.clone()).unwrap();
    assert_eq!(
        h.aggregator.handle(SiteId(0), ad0).unwrap_err(),
        AggregatorError::Message(MessageError::Duplicate(SiteId(0), Phase::AdvertiseKeys))
    );
    h.uplink.remove(0);
    let out = h.run_until(Phase::Unmasking, &[]);
    h.reply(out);
    h.deliver(&[]);
    assert_eq!(h.aggregator.status(), &Status::Finished);
}

fn masked(bits: u8, len: usize) -> MaskedVector {
    let v = PlainVector::zeros(Modulus::new(bits).unwrap(), len);
    let bytes = postcard::to_allocvec(&(
        bits,
        serde_bytes::ByteBuf::from(vec![0u8; len * v.modulus().wire_width()]),
    ))
    .unwrap();
    postcard::from_bytes(&bytes).unwrap()
}

fn upload(vector: MaskedVector) -> tessera_secagg::MaskedUpload {
    tessera_secagg::MaskedUpload {
        vector,
        accused: vec![],
    }
}

#[test]
fn wrongly_sized_masked_inputs_are_rejected() {
    let mut h = Harness::new(1);
    let out = h.run_until(Phase::MaskedInput, &[]);
    h.reply(out);
    let (from, genuine) = h.uplink.remove(0);
    for (bits, len, want) in [
        (
            16u8,
            M as usize - 1,
            MessageError::WrongLength {
                got: M as usize - 1,
                expected: M as usize,
            },
        ),
        (
            24,
            M as usize,
            MessageError::WrongModulus {
                got: 24,
                expected: 16,
            },
        ),
    ] {
        let mut bad = genuine.clone();
        bad.body = Body::MaskedInput(upload(masked(bits, len)));
        assert_eq!(
            h.aggregator.handle(from, bad).unwrap_err(),
            AggregatorError::Message(want)
        );
    }
    h.aggregator.handle(from, genuine).unwrap();
}

#[test]
fn misaddressed_and_out_of_phase_messages_leave_a_site_unchanged() {
    let mut h = Harness::new(1);
    let mut out = h.deliver(&[]);
    let for_one = take_for(&mut out, SiteId(1));
    assert_eq!(
        h.site(SiteId(0), for_one.clone()).unwrap_err(),
        SiteError::Message(MessageError::Misaddressed {
            got: Party::Site(SiteId(1)),
            expected: Party::Site(SiteId(0))
        })
    );
    let mut early = take_for(&mut out, SiteId(0));
    let genuine = early.clone();
    early.body = Body::SurvivorSet(vec![SiteId(0), SiteId(1), SiteId(2)]);
    assert!(matches!(
        h.site(SiteId(0), early).unwrap_err(),
        SiteError::Message(MessageError::OutOfPhase {
            got: Phase::ConsistencyCheck,
            expected: Phase::ShareKeys,
            ..
        })
    ));
    // Unchanged: the genuine messages are still accepted.
    h.site(SiteId(0), genuine).unwrap();
    h.site(SiteId(1), for_one).unwrap();
}

#[test]
fn a_site_with_different_parameters_is_detected_by_its_signature() {
    let ids: Vec<SiteId> = (0..N).map(SiteId).collect();
    let (identities, roster) = test_identities(&ids, [1; 32]);
    let honest = RoundConfig::new(params(1, T)).unwrap();
    let other = RoundConfig::new(params(1, T + 1)).unwrap();
    let mut rng = ChaCha20Rng::from_seed([0; 32]);
    let (_, ad) = Site::new(
        other,
        SiteId(0),
        identities[0].clone(),
        roster.clone(),
        input(SiteId(0)),
        &mut rng,
    )
    .unwrap();
    let mut aggregator = Aggregator::new(honest, roster).unwrap();
    assert_eq!(
        aggregator.handle(SiteId(0), ad).unwrap_err(),
        AggregatorError::Message(MessageError::BadSignature(SiteId(0)))
    );
}

#[test]
fn sites_reject_identities_and_inputs_that_do_not_fit() {
    let h = Harness::new(1);
    let mut rng = ChaCha20Rng::from_seed([0; 32]);
    let wrong_key = h.identities[1].clone();
    assert_eq!(
        Site::new(
            h.config.clone(),
            SiteId(0),
            wrong_key,
            h.roster.clone(),
            input(SiteId(0)),
            &mut rng
        )
        .err(),
        Some(SiteError::IdentityMismatch(SiteId(0)))
    );
    let short = PlainVector::zeros(Modulus::new(16).unwrap(), 3);
    assert!(matches!(
        Site::new(
            h.config.clone(),
            SiteId(0),
            h.identities[0].clone(),
            h.roster.clone(),
            short,
            &mut rng
        )
        .err(),
        Some(SiteError::InputShape { got: 3, .. })
    ));
    assert_eq!(
        Site::new(
            h.config.clone(),
            SiteId(9),
            h.identities[0].clone(),
            h.roster.clone(),
            input(SiteId(9)),
            &mut rng
        )
        .err(),
        Some(SiteError::NotParticipant(SiteId(9)))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::from_bytes(&bytes);
    }

    /// Real messages with random bytes corrupted never panic either side, whichever
    /// phase they arrive in.
    #[test]
    fn corrupted_messages_never_panic(phase_index in 0usize..5, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let phase = [Phase::AdvertiseKeys, Phase::ShareKeys, Phase::MaskedInput, Phase::ConsistencyCheck, Phase::Unmasking][phase_index];
        let mut h = Harness::new(1);
        let down = if phase == Phase::AdvertiseKeys { h.deliver(&[]) } else { h.run_until(phase, &[]) };
        // Corrupt one downlink message and feed it to its site.
        let target = &down[0];
        let mut bytes = target.envelope.to_bytes();
        for (pos, x) in &flips {
            let i = pos % bytes.len();
            bytes[i] ^= x | 1;
        }
        if let Ok(env) = Envelope::from_bytes(&bytes) {
            let _ = h.site(target.to, env);
        }
        // Corrupt one uplink reply and feed it to the aggregator.
        let to = down[1].to;
        let reply = h.site(to, down[1].envelope.clone()).unwrap();
        let mut bytes = reply.to_bytes();
        for (pos, x) in &flips {
            let i = pos % bytes.len();
            bytes[i] ^= x | 1;
        }
        if let Ok(env) = Envelope::from_bytes(&bytes) {
            let _ = h.aggregator.handle(to, env);
        }
    }
}

/// Replaces `site`'s queued advertisement with one of its own signing whose keys `f`
/// chooses (from the others' advertisements).
fn readvertise(
    h: &mut Harness,
    site: SiteId,
    f: impl FnOnce(
        &[tessera_secagg::KeyAdvertisement],
    ) -> (
        tessera_secagg::AgreementPublicKey,
        tessera_secagg::AgreementPublicKey,
    ),
) {
    let others: Vec<tessera_secagg::KeyAdvertisement> = h
        .uplink
        .iter()
        .filter_map(|(_, env)| match &env.body {
            Body::AdvertiseKeys(ad) => Some(ad.clone()),
            _ => None,
        })
        .collect();
    let (share_key, mask_key) = f(&others);
    let identity = h.identities[site.0 as usize].clone();
    let (_, env) = h.uplink.iter_mut().find(|(s, _)| *s == site).unwrap();
    let Body::AdvertiseKeys(ad) = &mut env.body else {
        panic!("not an advertisement")
    };
    *ad = tessera_secagg::simulation::signed_advertisement(
        &h.config,
        site,
        &identity,
        share_key,
        mask_key,
        ad.self_mask_commitment,
    );
}

fn sum_of(sites: &[u32]) -> PlainVector {
    let mut expected = PlainVector::zeros(Modulus::new(16).unwrap(), M as usize);
    for &i in sites {
        expected.add_assign(&input(SiteId(i)));
    }
    expected
}

/// Drives the round to its end with every site answering, `bad` left out when the
/// aggregator refuses it.
fn finish(h: &mut Harness) {
    loop {
        let Status::Collecting(_) = h.aggregator.status() else {
            return;
        };
        let phase = match h.aggregator.status() {
            Status::Collecting(p) => *p,
            _ => return,
        };
        for (from, env) in std::mem::take(&mut h.uplink) {
            let _ = h.aggregator.handle(from, env);
        }
        if h.aggregator.status() == &Status::Collecting(phase) {
            h.aggregator.close_phase().unwrap();
        }
        let out = h.aggregator.take_outgoing();
        for o in out {
            let (site, rng) = h.sites.get_mut(&o.to).unwrap();
            if let Ok(reply) = site.handle(o.envelope, rng) {
                h.uplink.push((o.to, reply));
            }
        }
    }
}

/// A site advertising a low-order key (which would make every honest site's key
/// agreement fail) is refused by the aggregator and left out; the round completes.
#[test]
fn a_low_order_key_leaves_only_its_sender_out() {
    let mut h = Harness::new(2);
    readvertise(&mut h, SiteId(4), |others| {
        (
            tessera_secagg::AgreementPublicKey([0; 32]),
            others[0].mask_key,
        )
    });
    let (from, env) = h.uplink.pop().unwrap();
    assert!(matches!(
        h.aggregator.handle(from, env),
        Err(AggregatorError::Message(MessageError::Malformed { .. }))
    ));
    finish(&mut h);
    assert_eq!(h.aggregator.result().unwrap().sum, sum_of(&[0, 1, 2, 3]));
}

/// A site copying another's key (a reflection attack) is refused; the round completes.
#[test]
fn a_copied_key_leaves_only_its_sender_out() {
    let mut h = Harness::new(3);
    readvertise(&mut h, SiteId(4), |others| {
        (others[0].share_key, others[4].mask_key)
    });
    // site 4's own mask key, site 0's share key
    finish(&mut h);
    let result = h.aggregator.result().expect("the round completes");
    assert_eq!(
        result.contributors,
        vec![SiteId(0), SiteId(1), SiteId(2), SiteId(3)]
    );
    assert_eq!(result.sum, sum_of(&[0, 1, 2, 3]));
}

/// A survivor revealing wrong shares cannot abort the round: the aggregator finds t
/// shares that match each commitment among the others.
#[test]
fn wrong_revealed_shares_do_not_abort_the_round() {
    let mut h = Harness::new(4);
    let out = h.run_until(Phase::Unmasking, &[]);
    h.reply(out);
    let (_, env) = h.uplink.iter_mut().find(|(s, _)| *s == SiteId(1)).unwrap();
    let Body::UnmaskShares(shares) = &mut env.body else {
        panic!("not unmask shares")
    };
    assert!(shares.self_mask.len() >= 2);
    let (a, b) = (shares.self_mask[0].value, shares.self_mask[1].value);
    shares.self_mask[0].value = b;
    shares.self_mask[1].value = a;
    h.deliver(&[]);
    assert_eq!(
        h.aggregator.status(),
        &Status::Finished,
        "{:?}",
        h.aggregator.status()
    );
    assert_eq!(h.aggregator.result().unwrap().sum, sum_of(&[0, 1, 2, 3, 4]));
}

/// Replaces the share ciphertexts `from` sends to `to` (every neighbour when `None`)
/// with bytes of the right size that do not open.
fn garble_shares(h: &mut Harness, from: SiteId, to: Option<SiteId>) {
    let out = h.run_until(Phase::ShareKeys, &[]);
    h.reply(out);
    let (_, env) = h.uplink.iter_mut().find(|(s, _)| *s == from).unwrap();
    let Body::ShareKeys(list) = &mut env.body else {
        panic!("not share keys")
    };
    for e in list.iter_mut().filter(|e| to.is_none_or(|t| e.peer == t)) {
        e.ciphertext.iter_mut().for_each(|b| *b ^= 0x5a);
    }
}

/// A site sending one peer share ciphertexts that do not open is accused by that peer and
/// excluded; the round completes with the honest sites' exact sum.
#[test]
fn attack_garbage_share_ciphertext_to_one_peer_excludes_only_its_sender() {
    let mut h = Harness::new(5);
    garble_shares(&mut h, SiteId(4), Some(SiteId(0)));
    finish(&mut h);
    let result = h.aggregator.result().expect("the round completes");
    assert_eq!(result.contributors, (0..4).map(SiteId).collect::<Vec<_>>());
    assert_eq!(result.sum, sum_of(&[0, 1, 2, 3]));
}

/// The same with garbage to every neighbour: nobody holds the sender's shares, nobody
/// masked with it, and the round completes without it.
#[test]
fn attack_garbage_share_ciphertexts_to_every_peer_exclude_only_their_sender() {
    let mut h = Harness::new(6);
    garble_shares(&mut h, SiteId(4), None);
    finish(&mut h);
    let result = h.aggregator.result().expect("the round completes");
    assert_eq!(result.contributors, (0..4).map(SiteId).collect::<Vec<_>>());
    assert_eq!(result.sum, sum_of(&[0, 1, 2, 3]));
}

/// Makes `from`'s queued masked input accuse `accused` (without changing its vector).
fn accuse(h: &mut Harness, from: SiteId, accused: &[u32]) {
    let out = h.run_until(Phase::MaskedInput, &[]);
    h.reply(out);
    let (_, env) = h.uplink.iter_mut().find(|(s, _)| *s == from).unwrap();
    let Body::MaskedInput(upload) = &mut env.body else {
        panic!("not a masked input")
    };
    upload.accused = accused.iter().copied().map(SiteId).collect();
}

/// A site accusing more neighbours than the aggregator tolerates (one by default) is
/// excluded itself and its accusations ignored: the honest sites' sum comes out.
#[test]
fn attack_false_accusations_exclude_the_accuser() {
    let mut h = Harness::new(7);
    accuse(&mut h, SiteId(4), &[0, 1]);
    finish(&mut h);
    let result = h.aggregator.result().expect("the round completes");
    assert_eq!(result.contributors, (0..4).map(SiteId).collect::<Vec<_>>());
    assert_eq!(result.sum, sum_of(&[0, 1, 2, 3]));
}

/// One accusation within the tolerance costs the accused its place in this round, and no
/// more: the round completes. (A liar who masked with the accused after all corrupts
/// the sum, as any site can by sending a wrong input: secure aggregation hides inputs,
/// it does not validate them.)
#[test]
fn attack_one_false_accusation_costs_one_site_not_the_round() {
    let mut h = Harness::new(8);
    accuse(&mut h, SiteId(4), &[0]);
    finish(&mut h);
    let result = h.aggregator.result().expect("the round completes");
    assert_eq!(result.contributors, (1..5).map(SiteId).collect::<Vec<_>>());
}

/// Accusations must name neighbours that shared keys, in increasing order.
#[test]
fn accusations_of_strangers_are_malformed() {
    let mut h = Harness::new(9);
    let out = h.run_until(Phase::MaskedInput, &[]);
    h.reply(out);
    let (from, genuine) = h.uplink.remove(0);
    for bad in [vec![SiteId(9)], vec![from], vec![SiteId(3), SiteId(2)]] {
        let mut env = genuine.clone();
        let Body::MaskedInput(upload) = &mut env.body else {
            panic!("not a masked input")
        };
        upload.accused = bad;
        assert!(matches!(
            h.aggregator.handle(from, env),
            Err(AggregatorError::Message(MessageError::Malformed { .. }))
        ));
    }
    h.aggregator.handle(from, genuine).unwrap();
}

/// The limit of the defence, stated as a test: a site that gives valid shares to some
/// holders (fewer than t) and garbage to the rest is excluded, and so would be the
/// survivors it gave valid shares to (they masked with it, and its mask key cannot be
/// rebuilt from fewer than t shares). With 5 sites and t = 3 that leaves too few, so
/// the round aborts naming it, before any unmasking request (see the next test for a
/// federation large enough to go on).
#[test]
fn garbage_to_most_holders_and_valid_shares_to_too_few_aborts_naming_the_sender() {
    let mut h = Harness::new(10);
    garble_shares(&mut h, SiteId(4), Some(SiteId(0)));
    let (_, env) = h.uplink.iter_mut().find(|(s, _)| *s == SiteId(4)).unwrap();
    let Body::ShareKeys(list) = &mut env.body else {
        panic!("not share keys")
    };
    let to_one = list.iter_mut().find(|e| e.peer == SiteId(1)).unwrap();
    to_one.ciphertext.iter_mut().for_each(|b| *b ^= 0x5a);
    finish(&mut h);
    assert_eq!(
        h.aggregator.status(),
        &Status::Aborted(tessera_secagg::AbortReason::TooFewHolders {
            phase: Phase::MaskedInput,
            owner: SiteId(4),
            have: 2,
            need: 3,
        })
    );
}

/// With enough sites, even that case completes: the survivors that masked with the
/// excluded sender (it gave them valid shares, too few to rebuild its mask key) are
/// left out as well, and the others' sum comes out exactly. 10 sites, t = 6: site 9
/// gives valid shares to sites 0 and 1 only.
#[test]
fn attack_valid_shares_to_too_few_costs_those_few_not_the_round() {
    let mut h = Harness::sized(11, 10, 6);
    let out = h.run_until(Phase::ShareKeys, &[]);
    h.reply(out);
    let (_, env) = h.uplink.iter_mut().find(|(s, _)| *s == SiteId(9)).unwrap();
    let Body::ShareKeys(list) = &mut env.body else {
        panic!("not share keys")
    };
    for e in list.iter_mut().filter(|e| e.peer.0 >= 2) {
        e.ciphertext.iter_mut().for_each(|b| *b ^= 0x5a);
    }
    finish(&mut h);
    let result = h.aggregator.result().expect("the round completes");
    assert_eq!(result.contributors, (2..9).map(SiteId).collect::<Vec<_>>());
    assert_eq!(result.sum, sum_of(&[2, 3, 4, 5, 6, 7, 8]));
}

/// A round in which site 3's share ciphertexts never reached the aggregator, stopped at
/// the survivor set for site 0, plus that set with `extra` added.
fn survivor_set_with(extra: Option<SiteId>) -> (Harness, Envelope) {
    let mut h = Harness::new(1);
    let ads = h.deliver(&[]);
    h.reply(ads);
    let forwarded = h.deliver(&[SiteId(3)]);
    h.reply(forwarded);
    let mut out = h.run_until(Phase::ConsistencyCheck, &[]);
    let mut env = take_for(&mut out, SiteId(0));
    if let (Some(extra), Body::SurvivorSet(s)) = (extra, &mut env.body) {
        assert!(!s.contains(&extra));
        s.push(extra);
        s.sort_unstable();
    }
    (h, env)
}

/// A survivor set must list participants only, and no neighbour whose shares this site
/// never received (it could not help unmask that site).
#[test]
fn a_survivor_set_with_strangers_or_neighbours_without_shares_is_refused() {
    let (mut h, env) = survivor_set_with(Some(SiteId(3)));
    assert_eq!(
        h.site(SiteId(0), env).unwrap_err(),
        SiteError::InconsistentSurvivors(SiteId(3))
    );
    let (mut h, env) = survivor_set_with(Some(SiteId(N + 7)));
    assert!(matches!(
        h.site(SiteId(0), env),
        Err(SiteError::Message(MessageError::Malformed { .. }))
    ));
    let (mut h, env) = survivor_set_with(None);
    assert!(h.site(SiteId(0), env).is_ok());
}

#[test]
fn unmask_requests_carry_t_signatures_and_a_false_one_is_named() {
    let mut h = Harness::new(1);
    let mut out = h.run_until(Phase::Unmasking, &[]);
    for o in &mut out {
        with_request(&mut o.envelope, |r| {
            assert_eq!(r.signatures.len(), T as usize, "t signatures, no more")
        });
    }
    let mut env = take_for(&mut out, SiteId(0));
    let mut signer = SiteId(0);
    with_request(&mut env, |r| {
        signer = r.signatures[1].0;
        let identity = &h.identities[signer.0 as usize];
        r.signatures[1].1 = identity
            .sign_labelled("tessera/test", b"not the set")
            .unwrap();
    });
    assert_ne!(signer, SiteId(0));
    assert_eq!(
        h.site(SiteId(0), env).unwrap_err(),
        SiteError::Message(MessageError::BadSignature(signer))
    );
}

#[test]
fn a_substituted_neighbour_key_is_named_by_its_signature() {
    let mut h = Harness::new(1);
    let mut out = h.run_until(Phase::ShareKeys, &[]);
    let mut env = take_for(&mut out, SiteId(0));
    let Body::NeighbourKeys(ads) = &mut env.body else {
        panic!("not the neighbours' keys: {:?}", env.body);
    };
    assert_eq!(ads.len(), N as usize - 1);
    ads[2].mask_key.0[5] ^= 1;
    let named = ads[2].site;
    assert_eq!(
        h.site(SiteId(0), env).unwrap_err(),
        SiteError::Message(MessageError::BadSignature(named))
    );
}
