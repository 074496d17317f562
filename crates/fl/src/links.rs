//! Carrying the federation's byte messages over QUIC: one bidirectional stream per
//! site, opened by the site, with length-delimited frames. The coordinator names each
//! connection by its CA-verified certificate and the CA-signed roster, never by
//! anything the peer says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tessera_net::frame::{MAX_FRAME, read_frame, write_frame};
use tessera_net::pki::SignedRoster;
use tessera_net::quic::peer_name;
use tessera_secagg::SiteId;
use tokio::sync::mpsc;

use crate::error::FlError;

/// The coordinator's ends of its sites' links.
pub struct SiteLinks {
    pub senders: BTreeMap<SiteId, mpsc::Sender<Vec<u8>>>,
    pub inbox: mpsc::Receiver<(SiteId, Vec<u8>)>,
    /// Frame payload bytes carried so far (QUIC and TLS overhead not included).
    pub traffic: Arc<Traffic>,
    /// Roster sites that connect later (or reconnect), with their new link; the
    /// coordinator swaps them in at the start of the next round.
    pub joins: mpsc::Receiver<(SiteId, mpsc::Sender<Vec<u8>>)>,
}

/// Bytes that crossed a federation's links, both ways.
#[derive(Debug, Default)]
pub struct Traffic {
    pub to_coordinator: AtomicU64,
    pub to_sites: AtomicU64,
}

impl Traffic {
    /// (to the coordinator, to the sites) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.to_coordinator.load(Ordering::Relaxed),
            self.to_sites.load(Ordering::Relaxed),
        )
    }
}

/// Writes `outgoing` as frames and forwards non-empty incoming frames, wrapped by
/// `wrap`, into `incoming` (waiting for room: back-pressure, not loss).
fn pump<M: Send + 'static>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<M>,
    wrap: impl Fn(Vec<u8>) -> M + Send + 'static,
    counters: Option<(Arc<Traffic>, bool)>,
) {
    let count = move |n: usize, inbound: bool| {
        if let Some((t, coordinator_side)) = &counters {
            let c = if inbound == *coordinator_side {
                &t.to_coordinator
            } else {
                &t.to_sites
            };
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let count_out = count.clone();
    tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            count_out(bytes.len(), false);
            if write_frame(&mut send, &bytes, MAX_FRAME).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    tokio::spawn(async move {
        // A corrupt, oversized or truncated frame ends this link; the site is then a
        // dropout, and nothing else is affected. Empty frames only open the stream.
        while let Ok(Some(bytes)) = read_frame(&mut recv, MAX_FRAME).await {
            count(bytes.len(), true);
            if !bytes.is_empty() && incoming.send(wrap(bytes)).await.is_err() {
                break;
            }
        }
    });
}

/// Accepts a connection and names it through the roster; `None` for strangers.
async fn accept_one(
    incoming: quinn::Incoming,
    roster: &SignedRoster,
) -> Option<(SiteId, quinn::Connection)> {
    let conn = incoming.await.ok()?;
    match peer_name(&conn).and_then(|name| roster.site_of(&name)) {
        Some(site) => Some((site, conn)),
        None => {
            conn.close(1u32.into(), b"not a site of this federation");
            None
        }
    }
}

/// Accepts connections until `expected` distinct roster sites have joined or `wait`
/// has passed; strangers are refused. Afterwards it keeps accepting in the background:
/// a roster site that connects again (after a network failure) or late is reported on
/// [`SiteLinks::joins`].
pub async fn accept_sites(
    endpoint: &quinn::Endpoint,
    roster: &SignedRoster,
    expected: usize,
    wait: Duration,
) -> Result<SiteLinks, FlError> {
    let (inbox_tx, inbox) = mpsc::channel(1024);
    let traffic = Arc::new(Traffic::default());
    let mut senders = BTreeMap::new();
    let link = |conn: quinn::Connection,
                site: SiteId,
                inbox_tx: mpsc::Sender<(SiteId, Vec<u8>)>,
                traffic: Arc<Traffic>| async move {
        let (send, recv) = tokio::time::timeout(Duration::from_secs(30), conn.accept_bi())
            .await
            .ok()?
            .ok()?;
        let (tx, rx) = mpsc::channel(64);
        pump(
            send,
            recv,
            rx,
            inbox_tx,
            move |bytes| (site, bytes),
            Some((traffic, true)),
        );
        Some(tx)
    };
    let deadline = tokio::time::Instant::now() + wait;
    while senders.len() < expected {
        let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, endpoint.accept()).await else {
            break;
        };
        let Some((site, conn)) = accept_one(incoming, roster).await else {
            continue;
        };
        if let Some(tx) = link(conn, site, inbox_tx.clone(), traffic.clone()).await {
            senders.insert(site, tx);
        }
    }
    let (joins_tx, joins) = mpsc::channel(64);
    let (endpoint, roster, bg_traffic) = (endpoint.clone(), roster.clone(), traffic.clone());
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Some((site, conn)) = accept_one(incoming, &roster).await else {
                continue;
            };
            if let Some(tx) = link(conn, site, inbox_tx.clone(), bg_traffic.clone()).await
                && joins_tx.send((site, tx)).await.is_err()
            {
                break;
            }
        }
    });
    Ok(SiteLinks {
        senders,
        inbox,
        traffic,
        joins,
    })
}

/// A site's ends of its link to the coordinator: (to the coordinator, from it).
pub async fn open_link(
    conn: &quinn::Connection,
) -> Result<(mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>), FlError> {
    let (mut send, recv) = conn.open_bi().await.map_err(|_| FlError::Disconnected)?;
    // QUIC streams appear to the peer only once written to: announce this one.
    write_frame(&mut send, &[], MAX_FRAME)
        .await
        .map_err(|_| FlError::Disconnected)?;
    let (out_tx, out_rx) = mpsc::channel(64);
    let (in_tx, in_rx) = mpsc::channel(64);
    pump(send, recv, out_rx, in_tx, |bytes| bytes, None);
    Ok((out_tx, in_rx))
}

/// A site's link that survives losing its connection: it dials the coordinator
/// (`server_name` in its certificate) and, whenever the connection fails, dials again
/// every 250 ms for up to `retry_for`, carrying on with the same channels. A message that
/// was being written when the connection failed is lost; the coordinator's deadlines
/// treat the gap like any dropout. Returns the site's ends: (to the coordinator, from it);
/// the second closes when the coordinator cannot be reached again.
pub fn reconnecting_link(
    endpoint: quinn::Endpoint,
    addr: std::net::SocketAddr,
    server_name: String,
    retry_for: Duration,
) -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        loop {
            let deadline = tokio::time::Instant::now() + retry_for;
            let conn = loop {
                match tessera_net::quic::connect(&endpoint, addr, &server_name).await {
                    Ok(c) => break Some(c),
                    Err(_) if tokio::time::Instant::now() >= deadline => break None,
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            };
            // Unreachable for too long: dropping `in_tx` tells the site.
            let Some(conn) = conn else { return };
            let Ok((mut send, mut recv)) = conn.open_bi().await else {
                continue;
            };
            // QUIC streams appear to the peer only once written to: announce this one.
            if write_frame(&mut send, &[], MAX_FRAME).await.is_err() {
                continue;
            }
            let reader = async {
                while let Ok(Some(bytes)) = read_frame(&mut recv, MAX_FRAME).await {
                    if !bytes.is_empty() && in_tx.send(bytes).await.is_err() {
                        break;
                    }
                }
            };
            let writer = async {
                while let Some(bytes) = out_rx.recv().await {
                    if write_frame(&mut send, &bytes, MAX_FRAME).await.is_err() {
                        return false;
                    }
                }
                true // the site has finished
            };
            tokio::select! {
                _ = reader => {}
                finished = writer => if finished {
                    let _ = send.finish();
                    let _ = send.stopped().await;
                    return;
                },
            }
        }
    });
    (out_tx, in_rx)
}
