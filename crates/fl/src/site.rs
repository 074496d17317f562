//! A site's side of the federation: train locally, encode and mask the update, answer
//! the secure-aggregation phases. Every outbound message passes through [`Egress`].

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_core::LocalTrainer;
use tessera_net::transcript::TranscriptWriter;
use tessera_secagg::{
    Envelope, IdentityKeyPair, Phase, PlainVector, Roster, RoundConfig, Site, SiteId,
};
use tokio::sync::mpsc;

use crate::error::FlError;
use crate::wire::{self, RoundStart, ToCoordinator, ToSite};

/// The one way out of a site: each message is recorded in the signed transcript,
/// durably, before it is handed to the transport.
pub struct Egress {
    out: mpsc::Sender<Vec<u8>>,
    transcript: TranscriptWriter,
}

impl Egress {
    pub fn new(out: mpsc::Sender<Vec<u8>>, transcript: TranscriptWriter) -> Self {
        Self { out, transcript }
    }

    async fn send(&mut self, msg: ToCoordinator) -> Result<(), FlError> {
        let (kind, round, phase) = match &msg {
            ToCoordinator::SecAgg(env) => {
                (env.body.kind(), env.header.round.0, env.phase().to_string())
            }
            ToCoordinator::Plain { round, .. } => ("plain-update", *round, "plaintext".to_string()),
        };
        let bytes = wire::encode(&msg);
        self.transcript.append(kind, round, &phase, &bytes)?;
        self.out
            .send(bytes)
            .await
            .map_err(|_| FlError::Disconnected)
    }
}

/// Who the site is.
pub struct SiteOptions {
    pub id: SiteId,
    pub identity: Arc<IdentityKeyPair>,
    pub roster: Arc<Roster>,
    /// Randomness for stochastic rounding and secure aggregation.
    pub seed: [u8; 32],
    /// Fault injection for tests and simulations: in each listed round, the site stays
    /// silent from the given phase on, as if its connection had dropped.
    pub silent: BTreeMap<u64, Phase>,
}

/// What a site did over its lifetime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteSummary {
    pub rounds_started: u64,
    pub rounds_completed: u64,
    pub errors: Vec<String>,
}

/// Runs a site until the coordinator says `Shutdown` or goes away.
pub async fn run_site<T: LocalTrainer>(
    opts: SiteOptions,
    trainer: &mut T,
    mut inbox: mpsc::Receiver<Vec<u8>>,
    mut egress: Egress,
) -> Result<SiteSummary, FlError> {
    let mut rng = ChaCha20Rng::from_seed(opts.seed);
    let mut summary = SiteSummary::default();
    let mut current: Option<(u64, Site)> = None;
    while let Some(bytes) = inbox.recv().await {
        let msg: ToSite = match wire::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                summary.errors.push(e.to_string());
                continue;
            }
        };
        let silent =
            |round: u64, phase: Phase| opts.silent.get(&round).is_some_and(|p| phase >= *p);
        match msg {
            ToSite::RoundStart(start) => {
                summary.rounds_started += 1;
                let round = start.params.round.0;
                match begin_round(&opts, trainer, &start, &mut rng) {
                    Ok(Begun::Secure(site, advert)) => {
                        current = Some((round, *site));
                        if !silent(round, Phase::AdvertiseKeys) {
                            egress.send(ToCoordinator::SecAgg(advert)).await?;
                        }
                    }
                    Ok(Begun::Plain(update)) => {
                        if !silent(round, Phase::AdvertiseKeys) {
                            egress.send(ToCoordinator::Plain { round, update }).await?;
                        }
                    }
                    Err(e) => summary.errors.push(e.to_string()),
                }
            }
            ToSite::SecAgg(env) => {
                let Some((round, site)) = current.as_mut() else {
                    continue;
                };
                match site.handle(*env, &mut rng) {
                    Ok(reply) => {
                        if !silent(*round, reply.phase()) {
                            egress.send(ToCoordinator::SecAgg(reply)).await?;
                        }
                    }
                    Err(e) => summary.errors.push(e.to_string()),
                }
            }
            ToSite::RoundEnd { completed, .. } => {
                summary.rounds_completed += u64::from(completed);
                current = None;
            }
            ToSite::Shutdown => break,
        }
    }
    Ok(summary)
}

/// How a site enters a round.
enum Begun {
    /// Secure aggregation started; the advertisement is the first message.
    Secure(Box<Site>, Envelope),
    /// The plaintext baseline: the encoded update itself.
    Plain(PlainVector),
}

/// Trains from the global model, encodes the parameter change and starts the
/// secure-aggregation round (or, in the plaintext baseline, returns the update).
fn begin_round<T: LocalTrainer>(
    opts: &SiteOptions,
    trainer: &mut T,
    start: &RoundStart,
    rng: &mut ChaCha20Rng,
) -> Result<Begun, FlError> {
    let layout = trainer.layout().clone();
    layout
        .check(&start.global)
        .map_err(|e| FlError::Model(e.to_string()))?;
    let local = trainer.parameters();
    let from = start
        .strategy
        .merge_into_local(&layout, &local, &start.global);
    // Training is CPU-bound and synchronous: let the runtime move other tasks away.
    let update = tokio::task::block_in_place(|| trainer.train(&from, &start.training))
        .map_err(|e| FlError::Model(e.to_string()))?;
    let mut delta = vec![0f32; layout.len()];
    for e in layout.entries() {
        if start.strategy.is_federated(e.kind) {
            let r = e.offset..e.offset + e.len;
            for ((d, u), g) in delta[r.clone()]
                .iter_mut()
                .zip(&update.parameters[r.clone()])
                .zip(&start.global[r])
            {
                *d = u - g;
            }
        }
    }
    let codec = start.codec.codec()?;
    // Rounding and DP noise draw from their own stream per round (stream 0 is the
    // protocol's), so the encoded update does not depend on how much randomness earlier
    // rounds' key generation consumed: plain and secure runs encode identically.
    let mut encoding = ChaCha20Rng::from_seed(opts.seed);
    encoding.set_stream(start.params.round.0.wrapping_add(1));
    let input = codec.encode(&delta, update.samples, &mut encoding)?;
    if !start.secure {
        return Ok(Begun::Plain(input));
    }
    let config = RoundConfig::new(start.params.clone())?;
    let (site, advert) = Site::new(
        config,
        opts.id,
        opts.identity.clone(),
        opts.roster.clone(),
        input,
        rng,
    )?;
    Ok(Begun::Secure(Box::new(site), advert))
}
