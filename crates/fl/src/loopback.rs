//! A whole federation in one process over real QUIC on 127.0.0.1: a throwaway PKI, the
//! coordinator's endpoint, and each site dialling in with its own certificate. Used by
//! `tessera simulate --quic` and the round benchmarks.

use crate::SitePolicy;
use crate::facts::{RosterFacts, open_transcript};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::seed::{Purpose, RootSeed, SeedContext};
use tessera_core::{LocalTrainer, ParamLayout};
use tessera_net::pki::{Role, SignedRoster, init, issue, load_identity};
use tessera_net::quic::{Credentials, client, server};
use tessera_net::transcript::Durability;
use tessera_secagg::SiteId;
use tokio::task::JoinHandle;

use crate::config::FederationConfig;
use crate::driver::{Coordinator, run_site};
use crate::egress::Egress;
use crate::error::FlError;
use crate::links::{accept_sites, reconnecting_link};
use crate::memory::Dropouts;
use crate::site::{SiteIdentity, SiteMachine, SiteSummary};

/// A running loopback federation.
pub struct LoopbackFederation {
    pub coordinator: Coordinator,
    pub sites: Vec<JoinHandle<Result<SiteSummary, FlError>>>,
    /// The coordinator's endpoint (close it when done).
    pub endpoint: quinn::Endpoint,
}

impl LoopbackFederation {
    /// Stops the sites and closes the coordinator's endpoint.
    pub async fn shutdown(mut self) -> Result<Vec<SiteSummary>, FlError> {
        self.coordinator.shutdown().await?;
        let mut summaries = Vec::new();
        for s in self.sites {
            if let Ok(Ok(summary)) = s.await {
                summaries.push(summary);
            }
        }
        self.endpoint.close(0u32.into(), b"done");
        Ok(summaries)
    }
}

/// A throwaway PKI for `n` sites named `site-<i>` under `dir/pki` (reused when
/// complete).
pub fn pki_for(dir: &Path, n: usize) -> Result<SignedRoster, FlError> {
    let pki = dir.join("pki");
    let complete = SignedRoster::load(&pki.join("roster.json"), &pki.join("ca.pem"))
        .is_ok_and(|r| r.entries.len() == n);
    if !complete {
        let _ = std::fs::remove_dir_all(&pki);
        init(&pki)?;
        issue(&pki, "coordinator", Role::Coordinator)?;
        for i in 0..n {
            issue(&pki, &format!("site-{i}"), Role::Site(SiteId(i as u32)))?;
        }
    }
    Ok(SignedRoster::load(
        &pki.join("roster.json"),
        &pki.join("ca.pem"),
    )?)
}

/// The coordinator's side of a loopback federation whose sites run elsewhere (e.g.
/// as child processes): its endpoint on a free 127.0.0.1 port.
pub struct Listener {
    endpoint: quinn::Endpoint,
    port: u16,
}

impl Listener {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// A PKI for `n` sites under `dir` and the coordinator listening on 127.0.0.1; returns
/// the listener, its link events and the roster's identity keys.
pub fn listen(
    dir: &Path,
    n: usize,
) -> Result<
    (
        Listener,
        tokio::sync::mpsc::Receiver<crate::links::LinkEvent>,
        Arc<tessera_secagg::Roster>,
    ),
    FlError,
> {
    let roster = pki_for(dir, n)?;
    let creds = Credentials::load(&dir.join("pki"), "coordinator")?;
    let endpoint = server(([127, 0, 0, 1], 0).into(), &creds, false)?;
    let port = endpoint.local_addr().map_err(FlError::io(dir))?.port();
    let events = accept_sites(&endpoint, &roster);
    let identities = Arc::new(roster.identities()?);
    Ok((Listener { endpoint, port }, events, identities))
}

/// Issues a PKI for `trainers.len()` sites under `dir` (reused if already there), starts
/// the coordinator on a free loopback port, and connects every site.
pub async fn start<T: LocalTrainer + Send + 'static>(
    config: FederationConfig,
    layout: ParamLayout,
    initial: Vec<f32>,
    trainers: Vec<T>,
    dropouts: &Dropouts,
    dir: &Path,
    root: RootSeed,
) -> Result<LoopbackFederation, FlError> {
    let n = trainers.len();
    let session = config.session;
    let roster = pki_for(dir, n)?;
    let pki = dir.join("pki");
    let identities = Arc::new(roster.identities()?);
    let endpoint = server(
        ([127, 0, 0, 1], 0).into(),
        &Credentials::load(&pki, "coordinator")?,
        false,
    )?;
    let addr = endpoint.local_addr().map_err(FlError::io(dir))?;
    let events = accept_sites(&endpoint, &roster);
    let mut sites = Vec::with_capacity(n);
    for (i, mut trainer) in trainers.into_iter().enumerate() {
        let id = SiteId(i as u32);
        let name = format!("site-{i}");
        let identity = Arc::new(load_identity(&pki.join(format!("{name}.identity")))?);
        let ep = client(&Credentials::load(&pki, &name)?, false)?;
        let transcript = open_transcript(
            &dir.join(format!("{name}.transcript")),
            identity.clone(),
            id,
            &RosterFacts::of_file(&pki.join("roster.json"), 0)?,
            &SitePolicy::permissive(),
            false,
            Durability::InProcess,
        )?;
        let who = SiteIdentity {
            id,
            identity,
            roster: identities.clone(),
        };
        let machine = SiteMachine::simulated(who, trainer.layout().clone(), &root, dropouts);
        let (link, _) = reconnecting_link(ep, addr, "coordinator".into(), Duration::from_secs(30));
        let (egress, inbox) = Egress::open(link, transcript);
        sites.push(tokio::spawn(async move {
            run_site(machine, &mut trainer, egress, inbox, None).await
        }));
    }
    let noise = root.derive(Purpose::CentralNoise, SeedContext::session(session));
    let mut coordinator = Coordinator::new(config, identities, layout, initial, events, noise)?
        .with_receipts(&pki.join("coordinator.key"))?;
    let joined = coordinator.wait_for_sites(n, Duration::from_secs(60)).await;
    if joined < n {
        return Err(FlError::TooFewSites {
            connected: joined,
            needed: n,
        });
    }
    Ok(LoopbackFederation {
        coordinator,
        sites,
        endpoint,
    })
}
