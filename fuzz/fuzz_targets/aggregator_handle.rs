//! Decoded messages fed to an aggregator collecting key advertisements: it never
//! panics, and a rejected message leaves it collecting.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};
use tessera_secagg::simulation::test_identities;
use tessera_secagg::{
    Aggregator, Envelope, GraphSpec, Modulus, Phase, Roster, Round, RoundConfig, RoundParams, SessionId, SiteId,
    Status,
};

static SETUP: LazyLock<(Arc<RoundConfig>, Arc<Roster>)> = LazyLock::new(|| {
    let ids: Vec<SiteId> = (0..3).map(SiteId).collect();
    let config = RoundConfig::new(RoundParams {
        session: SessionId([0; 16]),
        round: Round(0),
        participants: ids.clone(),
        vector_len: 4,
        modulus: Modulus::new(16).unwrap(),
        threshold: 2,
        graph: GraphSpec::Complete,
        context: [0; 32],
        mask_prg: Default::default(),
    })
    .unwrap();
    (config, test_identities(&ids, [0; 32]).1)
});

fuzz_target!(|data: &[u8]| {
    let (config, roster) = &*SETUP;
    let Some((&from, rest)) = data.split_first() else { return };
    let Ok(env) = Envelope::from_bytes(rest) else { return };
    let mut aggregator = Aggregator::new(config.clone(), roster.clone()).unwrap();
    if aggregator.handle(SiteId(u32::from(from % 4)), env).is_err() {
        assert_eq!(aggregator.status(), &Status::Collecting(Phase::AdvertiseKeys));
    }
});
