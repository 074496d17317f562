//! A whole federation in one process: the real coordinator and site loops connected
//! by in-memory links, with per-site transcripts and byte counts. Used by
//! `tessera simulate` and the tests; deployment differs only in the links.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tessera_core::{LocalTrainer, ParamLayout};
use tessera_net::transcript::TranscriptWriter;
use tessera_secagg::simulation::test_identities;
use tessera_secagg::{Phase, SiteId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::coordinator::{Coordinator, FederationConfig};
use crate::error::FlError;
use crate::links::Traffic;
use crate::site::{Egress, SiteOptions, SiteSummary, run_site};

/// A running in-process federation.
pub struct MemoryFederation {
    pub coordinator: Coordinator,
    pub sites: Vec<JoinHandle<Result<SiteSummary, FlError>>>,
    pub traffic: Arc<Traffic>,
}

/// Starts `trainers.len()` sites (ids 0, 1, …) and a coordinator. Transcripts go to
/// `transcripts/site-<id>.transcript`; `silent` injects dropouts: per site, the
/// rounds in which it falls silent and from which phase.
pub fn start<T: LocalTrainer + Send + 'static>(
    config: FederationConfig,
    layout: ParamLayout,
    initial: Vec<f32>,
    trainers: Vec<T>,
    silent: &BTreeMap<SiteId, BTreeMap<u64, Phase>>,
    transcripts: &Path,
    seed: [u8; 32],
) -> Result<MemoryFederation, FlError> {
    let ids: Vec<SiteId> = (0..trainers.len() as u32).map(SiteId).collect();
    let (identities, roster) = test_identities(&ids, seed);
    let traffic = Arc::new(Traffic::default());
    let (inbox_tx, inbox_rx) = mpsc::channel(4 * ids.len().max(16));
    let mut links = BTreeMap::new();
    let mut sites = Vec::with_capacity(ids.len());
    std::fs::create_dir_all(transcripts).map_err(|e| FlError::Checkpoint {
        path: transcripts.to_owned(),
        message: e.to_string(),
    })?;
    for ((id, identity), mut trainer) in ids.iter().copied().zip(identities).zip(trainers) {
        // coordinator → site, counting bytes
        let (to_site, mut counted_rx) = mpsc::channel::<Vec<u8>>(64);
        let (site_tx, site_rx) = mpsc::channel::<Vec<u8>>(64);
        let t = traffic.clone();
        tokio::spawn(async move {
            while let Some(bytes) = counted_rx.recv().await {
                t.to_sites.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if site_tx.send(bytes).await.is_err() {
                    break;
                }
            }
        });
        links.insert(id, to_site);
        // site → coordinator, tagged with the sender as an authenticated link would be
        let (egress_tx, mut egress_rx) = mpsc::channel::<Vec<u8>>(64);
        let (inbox, t) = (inbox_tx.clone(), traffic.clone());
        tokio::spawn(async move {
            while let Some(bytes) = egress_rx.recv().await {
                t.to_coordinator
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if inbox.send((id, bytes)).await.is_err() {
                    break;
                }
            }
        });
        let transcript = TranscriptWriter::open(
            &transcripts.join(format!("site-{}.transcript", id.0)),
            identity.clone(),
        )?;
        let mut site_seed = seed;
        site_seed[..4].copy_from_slice(&id.0.to_le_bytes());
        let opts = SiteOptions {
            id,
            identity,
            roster: roster.clone(),
            seed: site_seed,
            silent: silent.get(&id).cloned().unwrap_or_default(),
        };
        let egress = Egress::new(egress_tx, transcript);
        sites.push(tokio::spawn(async move {
            run_site(opts, &mut trainer, site_rx, egress).await
        }));
    }
    let coordinator = Coordinator::new(config, roster, layout, initial, links, inbox_rx)?;
    Ok(MemoryFederation {
        coordinator,
        sites,
        traffic,
    })
}
