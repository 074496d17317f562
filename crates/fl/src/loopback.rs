//! A whole federation in one process over real QUIC on 127.0.0.1: a throwaway PKI, the
//! coordinator's endpoint, and each site dialling in with its own certificate. Used by
//! `tessera simulate --quic` and the round benchmarks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::{LocalTrainer, ParamLayout};
use tessera_net::pki::{Role, SignedRoster, init, issue, load_identity};
use tessera_net::quic::{Credentials, client, server};
use tessera_net::transcript::TranscriptWriter;
use tessera_secagg::{Phase, SiteId};
use tokio::task::JoinHandle;

use crate::coordinator::{Coordinator, FederationConfig};
use crate::error::FlError;
use crate::links::{Traffic, accept_sites, reconnecting_link};
use crate::site::{Egress, SiteOptions, SiteSummary, run_site};

/// A running loopback federation.
pub struct LoopbackFederation {
    pub coordinator: Coordinator,
    pub sites: Vec<JoinHandle<Result<SiteSummary, FlError>>>,
    /// Frame payload bytes on the coordinator's links.
    pub traffic: Arc<Traffic>,
    /// The coordinator's endpoint (close it when done).
    pub endpoint: quinn::Endpoint,
}

impl LoopbackFederation {
    /// Stops the sites and closes the coordinator's endpoint.
    pub async fn shutdown(self) {
        self.coordinator.shutdown().await;
        for s in self.sites {
            let _ = s.await;
        }
        self.endpoint.close(0u32.into(), b"done");
    }
}

fn pki_error(e: impl std::fmt::Display) -> FlError {
    FlError::Model(format!("loopback PKI: {e}"))
}

/// Issues a PKI for `trainers.len()` sites under `dir` (reused if already there), starts
/// the coordinator on a free loopback port, and connects every site.
pub async fn start<T: LocalTrainer + Send + 'static>(
    config: FederationConfig,
    layout: ParamLayout,
    initial: Vec<f32>,
    trainers: Vec<T>,
    silent: &BTreeMap<SiteId, BTreeMap<u64, Phase>>,
    dir: &Path,
    seed: [u8; 32],
) -> Result<LoopbackFederation, FlError> {
    let n = trainers.len();
    let pki = dir.join("pki");
    let complete = SignedRoster::load(&pki.join("roster.json"), &pki.join("ca.pem"))
        .is_ok_and(|r| r.entries.len() == n);
    if !complete {
        let _ = std::fs::remove_dir_all(&pki);
        init(&pki).map_err(pki_error)?;
        issue(&pki, "coordinator", Role::Coordinator).map_err(pki_error)?;
        for i in 0..n {
            issue(&pki, &format!("site-{i}"), Role::Site(SiteId(i as u32))).map_err(pki_error)?;
        }
    }
    let roster =
        SignedRoster::load(&pki.join("roster.json"), &pki.join("ca.pem")).map_err(pki_error)?;
    let identities = Arc::new(roster.identities().map_err(pki_error)?);
    let coordinator_creds = Credentials::load(&pki, "coordinator").map_err(pki_error)?;
    let endpoint =
        server(([127, 0, 0, 1], 0).into(), &coordinator_creds, false).map_err(pki_error)?;
    let addr = endpoint.local_addr().map_err(pki_error)?;
    let mut sites = Vec::with_capacity(n);
    for (i, mut trainer) in trainers.into_iter().enumerate() {
        let id = SiteId(i as u32);
        let name = format!("site-{i}");
        let identity =
            Arc::new(load_identity(&pki.join(format!("{name}.identity"))).map_err(pki_error)?);
        let ep = client(&Credentials::load(&pki, &name).map_err(pki_error)?, false)
            .map_err(pki_error)?;
        let transcript =
            TranscriptWriter::open(&dir.join(format!("{name}.transcript")), identity.clone())?;
        let mut site_seed = seed;
        site_seed[..4].copy_from_slice(&id.0.to_le_bytes());
        let opts = SiteOptions {
            id,
            identity,
            roster: identities.clone(),
            seed: site_seed,
            silent: silent.get(&id).cloned().unwrap_or_default(),
        };
        let (tx, rx) = reconnecting_link(ep, addr, "coordinator".into(), Duration::from_secs(30));
        sites.push(tokio::spawn(async move {
            run_site(opts, &mut trainer, rx, Egress::new(tx, transcript)).await
        }));
    }
    let links = accept_sites(&endpoint, &roster, n, Duration::from_secs(60)).await?;
    if links.senders.len() < n {
        return Err(FlError::Model(format!(
            "only {} of {n} sites connected",
            links.senders.len()
        )));
    }
    let traffic = links.traffic.clone();
    let coordinator = Coordinator::new(
        config,
        identities,
        layout,
        initial,
        links.senders,
        links.inbox,
    )?
    .with_joins(links.joins);
    Ok(LoopbackFederation {
        coordinator,
        sites,
        traffic,
        endpoint,
    })
}
