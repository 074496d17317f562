//! A whole federation in one process: the coordinator and site machines, driven by the
//! same drivers as deployment, connected by channels, with per-site transcripts.
//! Simulated dropouts are explicit withdrawals, so which sites contribute to a round
//! depends only on the schedule, never on timing or load.

use crate::SitePolicy;
use crate::facts::{RosterFacts, open_transcript};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tessera_core::seed::{Purpose, RootSeed, SeedContext};
use tessera_core::{LocalTrainer, ParamLayout};
use tessera_net::transcript::Durability;
use tessera_secagg::{IdentityKeyPair, Phase, Roster, SiteId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::FederationConfig;
use crate::driver::{Coordinator, run_site};
use crate::egress::{Egress, SiteLink};
use crate::error::FlError;
use crate::links::{LinkEvent, SITE_QUEUE};
use crate::site::{SiteIdentity, SiteMachine, SiteSummary};

/// A running in-process federation.
pub struct MemoryFederation {
    pub coordinator: Coordinator,
    pub sites: Vec<JoinHandle<Result<SiteSummary, FlError>>>,
    /// The coordinator's link events, to open links by hand (tests of misbehaving links).
    pub links: mpsc::Sender<LinkEvent>,
}

/// Per site, the rounds in which it drops out and from which phase.
pub type Dropouts = BTreeMap<SiteId, BTreeMap<u64, Phase>>;

/// Deterministic identities and their roster, from the experiment's root.
pub fn identities(
    root: &RootSeed,
    session: [u8; 16],
    ids: &[SiteId],
) -> Result<(Vec<Arc<IdentityKeyPair>>, Arc<Roster>), FlError> {
    let keys = ids
        .iter()
        .map(|id| {
            let ctx = SeedContext::session(session).site(id.0);
            IdentityKeyPair::from_seed(root.derive(Purpose::Identity, ctx))
                .map(Arc::new)
                .map_err(|e| FlError::Config {
                    key: "seed",
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let roster = ids
        .iter()
        .zip(&keys)
        .map(|(id, k)| (*id, k.public()))
        .collect();
    Ok((keys, Arc::new(roster)))
}

/// Starts `trainers.len()` sites (ids 0, 1, …) and a coordinator. Transcripts go to
/// `transcripts/site-<id>.transcript`. Every site's keys and randomness derive from
/// `root` and the session; the coordinator's noise from `root` as well.
pub async fn start<T: LocalTrainer + Send + 'static>(
    config: FederationConfig,
    layout: ParamLayout,
    initial: Vec<f32>,
    trainers: Vec<T>,
    dropouts: &Dropouts,
    transcripts: &Path,
    root: RootSeed,
) -> Result<MemoryFederation, FlError> {
    let ids: Vec<SiteId> = (0..trainers.len() as u32).map(SiteId).collect();
    let session = config.session;
    let (keys, roster) = identities(&root, session, &ids)?;
    let (events, inbox) = mpsc::channel(4 * ids.len() + 64);
    std::fs::create_dir_all(transcripts).map_err(FlError::io(transcripts))?;
    let mut sites = Vec::with_capacity(ids.len());
    for ((id, identity), mut trainer) in ids.iter().copied().zip(keys).zip(trainers) {
        let link = connect(id, &events).await?;
        let transcript = open_transcript(
            &transcripts.join(format!("site-{}.transcript", id.0)),
            identity.clone(),
            id,
            &RosterFacts::unsigned(),
            &SitePolicy::permissive(),
            false,
            Durability::InProcess,
        )?;
        let who = SiteIdentity {
            id,
            identity,
            roster: roster.clone(),
        };
        let machine = SiteMachine::simulated(who, trainer.layout().clone(), &root, dropouts);
        let (egress, inbox) = Egress::open(link, transcript);
        sites.push(tokio::spawn(async move {
            run_site(machine, &mut trainer, egress, inbox, None).await
        }));
    }
    let noise = root.derive(Purpose::CentralNoise, SeedContext::session(session));
    let mut coordinator = Coordinator::new(config, roster, layout, initial, inbox, noise)?;
    coordinator
        .wait_for_sites(ids.len(), std::time::Duration::from_secs(60))
        .await;
    Ok(MemoryFederation {
        coordinator,
        sites,
        links: events,
    })
}

/// One site's channels: its messages become the coordinator's events.
async fn connect(id: SiteId, events: &mpsc::Sender<LinkEvent>) -> Result<SiteLink, FlError> {
    let (to_site, site_inbox) = mpsc::channel::<Bytes>(SITE_QUEUE);
    let (out, mut from_site) = mpsc::channel::<Vec<u8>>(SITE_QUEUE);
    events
        .send(LinkEvent::Opened {
            site: id,
            link: 0,
            to_site,
        })
        .await
        .map_err(|_| FlError::Disconnected)?;
    let events = events.clone();
    tokio::spawn(async move {
        while let Some(bytes) = from_site.recv().await {
            if events
                .send(LinkEvent::Message { site: id, bytes })
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = events.send(LinkEvent::Closed { site: id, link: 0 }).await;
    });
    Ok(SiteLink::new(out, site_inbox))
}
