//! Links between the coordinator and its sites, as the coordinator's driver sees them:
//! one stream of [`LinkEvent`]s (a link opened, a message, a link closed) whatever the
//! transport. In one process the links are channels ([`crate::memory`]); over the
//! network each site opens one bidirectional QUIC stream carrying length-delimited
//! frames, and the coordinator names each connection by its CA-verified certificate and
//! the CA-signed roster, never by anything the peer says.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tessera_net::frame::{FrameError, MAX_MESSAGE, read_message_sized, send_message};
use tessera_net::pki::SignedRoster;
use tessera_net::quic::peer_name;
use tessera_secagg::SiteId;
use tokio::sync::mpsc;

use crate::egress::SiteLink;
use crate::error::FlError;

/// Messages a link can queue towards a site before the site counts as stalled.
pub const SITE_QUEUE: usize = 64;

/// What the coordinator's driver hears from its links.
pub enum LinkEvent {
    /// A roster site connected (again): `to_site` replaces any earlier link of it.
    Opened {
        site: SiteId,
        link: u64,
        to_site: mpsc::Sender<Bytes>,
    },
    Message {
        site: SiteId,
        bytes: Vec<u8>,
    },
    /// The link `link` of `site` ended.
    Closed {
        site: SiteId,
        link: u64,
    },
    /// A connection was refused, with the reason (logged by the coordinator).
    Refused {
        peer: String,
        reason: String,
    },
}

/// Bytes that crossed a federation's links, both ways (frame payloads; QUIC and TLS
/// overhead not included).
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

/// Accepts roster sites in the background, each connection handshaking on its own
/// task (a slow peer does not hold up the others), and reports them as [`LinkEvent`]s.
pub fn accept_sites(
    endpoint: &quinn::Endpoint,
    roster: &SignedRoster,
) -> mpsc::Receiver<LinkEvent> {
    let (events, rx) = mpsc::channel(1024);
    let (endpoint, roster) = (endpoint.clone(), roster.clone());
    tokio::spawn(async move {
        let ids = Arc::new(AtomicU64::new(0));
        let open: Arc<std::sync::Mutex<BTreeMap<SiteId, usize>>> = Arc::default();
        while let Some(incoming) = endpoint.accept().await {
            let (events, roster, ids) = (events.clone(), roster.clone(), ids.clone());
            let open = open.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address().to_string();
                let accepted = accept_one(incoming, &roster)
                    .await
                    .and_then(|(site, conn)| admit(&open, site, conn));
                match accepted {
                    Ok((site, conn)) => {
                        let link = ids.fetch_add(1, Ordering::Relaxed);
                        serve(conn, site, link, events).await;
                        if let Ok(mut o) = open.lock() {
                            o.entry(site).and_modify(|n| *n = n.saturating_sub(1));
                        }
                    }
                    Err(reason) => {
                        let _ = events
                            .send(LinkEvent::Refused {
                                peer: remote,
                                reason,
                            })
                            .await;
                    }
                }
            });
        }
    });
    rx
}

/// Connections one site may hold at once: its current one and a reconnection.
pub const MAX_LINKS_PER_SITE: usize = 2;

/// Counts a site's open connections and refuses one past [`MAX_LINKS_PER_SITE`].
fn admit(
    open: &std::sync::Mutex<BTreeMap<SiteId, usize>>,
    site: SiteId,
    conn: quinn::Connection,
) -> Result<(SiteId, quinn::Connection), String> {
    let mut open = open
        .lock()
        .map_err(|_| "connection table poisoned".to_string())?;
    let n = open.entry(site).or_default();
    if *n >= MAX_LINKS_PER_SITE {
        conn.close(2u32.into(), b"too many connections for this site");
        return Err(format!(
            "{site} already has {MAX_LINKS_PER_SITE} connections open"
        ));
    }
    *n += 1;
    Ok((site, conn))
}

/// Completes the handshake (bounded in time) and names the peer through the roster.
async fn accept_one(
    incoming: quinn::Incoming,
    roster: &SignedRoster,
) -> Result<(SiteId, quinn::Connection), String> {
    let conn = tokio::time::timeout(Duration::from_secs(10), incoming)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let name = peer_name(&conn).ok_or("certificate without a name")?;
    match roster.site_of(&name) {
        Some(site) => Ok((site, conn)),
        None => {
            conn.close(1u32.into(), b"not a site of this federation");
            Err(format!("{name} is not a site of this federation's roster"))
        }
    }
}

/// Runs one site's link: waits for its stream, reports it, then carries frames.
async fn serve(conn: quinn::Connection, site: SiteId, link: u64, events: mpsc::Sender<LinkEvent>) {
    let Ok(Ok((mut send, mut recv))) =
        tokio::time::timeout(Duration::from_secs(30), conn.accept_bi()).await
    else {
        return;
    };
    let (to_site, mut outgoing) = mpsc::channel::<Bytes>(SITE_QUEUE);
    if events
        .send(LinkEvent::Opened {
            site,
            link,
            to_site,
        })
        .await
        .is_err()
    {
        return;
    }
    tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if send_message(&mut send, bytes).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    // A corrupt, oversized or truncated frame ends this link; the site is then a
    // dropout, and nothing else is affected. Empty frames only open the stream.
    let mut largest = 0;
    while let Ok(Some(bytes)) = next_message(&mut recv, &mut largest).await {
        if !bytes.is_empty()
            && events
                .send(LinkEvent::Message { site, bytes })
                .await
                .is_err()
        {
            return;
        }
    }
    let _ = events.send(LinkEvent::Closed { site, link }).await;
}

/// The next message of a link, read into room for the largest one it has read so far
/// (the same model or update arrives every round).
async fn next_message(
    recv: &mut quinn::RecvStream,
    largest: &mut usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let message = read_message_sized(recv, MAX_MESSAGE, *largest).await?;
    if let Some(m) = &message {
        *largest = (*largest).max(m.len());
    }
    Ok(message)
}

/// A site's link over an established connection.
pub async fn open_link(conn: &quinn::Connection) -> Result<SiteLink, FlError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|_| FlError::Disconnected)?;
    // QUIC streams appear to the peer only once written to: announce this one.
    send_message(&mut send, Bytes::new())
        .await
        .map_err(|_| FlError::Disconnected)?;
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(SITE_QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(SITE_QUEUE);
    tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if send_message(&mut send, bytes.into()).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    tokio::spawn(async move {
        let mut largest = 0;
        while let Ok(Some(bytes)) = next_message(&mut recv, &mut largest).await {
            if !bytes.is_empty() && in_tx.send(bytes.into()).await.is_err() {
                break;
            }
        }
    });
    Ok(SiteLink::new(out_tx, in_rx))
}

/// A site's link that survives losing its connection: it dials the coordinator
/// (`server_name` in its certificate) and, whenever the connection fails, dials again
/// every 250 ms for up to `retry_for`, carrying on with the same channels. A message that
/// was being written when the connection failed is lost; the coordinator treats the gap
/// like any dropout. The inbox closes when the coordinator cannot be reached again;
/// `failure` then holds the last reason.
pub fn reconnecting_link(
    endpoint: quinn::Endpoint,
    addr: std::net::SocketAddr,
    server_name: String,
    retry_for: Duration,
) -> (SiteLink, Arc<std::sync::Mutex<Option<String>>>) {
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(SITE_QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(SITE_QUEUE);
    let failure = Arc::new(std::sync::Mutex::new(None));
    let last = failure.clone();
    tokio::spawn(async move {
        loop {
            let Some(conn) = dial(&endpoint, addr, &server_name, retry_for, &last).await else {
                return; // unreachable for too long: dropping `in_tx` tells the site
            };
            let Ok((mut send, mut recv)) = conn.open_bi().await else {
                continue;
            };
            // QUIC streams appear to the peer only once written to: announce this one.
            if send_message(&mut send, Bytes::new()).await.is_err() {
                continue;
            }
            // Whether the coordinator ended its stream cleanly: it is done with this
            // site (after `Shutdown`), so there is nothing to re-dial for.
            let reader = async {
                let mut largest = 0;
                loop {
                    match next_message(&mut recv, &mut largest).await {
                        Ok(Some(bytes)) => {
                            if !bytes.is_empty() && in_tx.send(bytes.into()).await.is_err() {
                                return false;
                            }
                        }
                        Ok(None) => return true,
                        Err(_) => return false,
                    }
                }
            };
            let writer = async {
                while let Some(bytes) = out_rx.recv().await {
                    if send_message(&mut send, bytes.into()).await.is_err() {
                        return false;
                    }
                }
                true // the site has finished
            };
            tokio::select! {
                ended = reader => {
                    if ended {
                        return;
                    }
                    if let Some(reason) = conn.close_reason() {
                        let text = format!("the coordinator closed the connection: {reason}");
                        let refused = is_refusal(&text);
                        record(&last, text);
                        if refused {
                            return; // re-dialling cannot fix a refusal
                        }
                    }
                }
                finished = writer => if finished {
                    let _ = send.finish();
                    let _ = send.stopped().await;
                    return;
                },
            }
        }
    });
    (SiteLink::new(out_tx, in_rx), failure)
}

/// Whether a connection failure is the coordinator refusing this site (its
/// certificate, or its place on the roster) rather than the network failing.
fn is_refusal(text: &str) -> bool {
    ["not a site", "handshake", "certificate", "alert"]
        .iter()
        .any(|w| text.contains(w))
}

fn record(slot: &std::sync::Mutex<Option<String>>, reason: String) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(reason);
    }
}

/// Dials until connected or `retry_for` has passed. A refusal by the coordinator (a
/// TLS alert, or closing the connection because the site is not on its roster) is
/// final: re-dialling cannot fix it, so the site learns it at once.
async fn dial(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    server_name: &str,
    retry_for: Duration,
    last: &std::sync::Mutex<Option<String>>,
) -> Option<quinn::Connection> {
    let deadline = tokio::time::Instant::now() + retry_for;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = left.clamp(Duration::from_millis(500), Duration::from_secs(5));
        let attempt = tokio::time::timeout(
            wait,
            tessera_net::quic::connect(endpoint, addr, server_name),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => return Some(conn),
            Ok(Err(e)) => {
                let text = e.to_string();
                let refused = is_refusal(&text);
                record(last, text);
                if refused {
                    return None;
                }
            }
            Err(_) => record(last, format!("no answer from {addr} within {wait:?}")),
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
