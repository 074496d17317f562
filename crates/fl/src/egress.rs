//! The one way out of a site.
//!
//! A [`SiteLink`] is a site's end of its link to the coordinator; its sending half is
//! private to this crate, and the only way to use it is [`Egress::open`], which wraps it
//! with the site's signed transcript. Every message is therefore recorded, durably,
//! before it is handed to the transport. (Links also carry zero-length frames that only
//! announce a QUIC stream; they carry no data and are not recorded.)

use std::sync::Arc;
use tessera_net::transcript::TranscriptWriter;
use tokio::sync::mpsc;

use crate::error::FlError;
use crate::policy::Refusal;
use crate::wire::{self, ToCoordinator};

/// A site's end of its link: messages from the coordinator, and a sender that only
/// [`Egress`] can reach.
pub struct SiteLink {
    out: mpsc::Sender<Vec<u8>>,
    inbox: mpsc::Receiver<Arc<[u8]>>,
}

impl SiteLink {
    pub(crate) fn new(out: mpsc::Sender<Vec<u8>>, inbox: mpsc::Receiver<Arc<[u8]>>) -> Self {
        Self { out, inbox }
    }
}

/// Messages from the coordinator.
pub struct SiteInbox(mpsc::Receiver<Arc<[u8]>>);

impl SiteInbox {
    /// The next message; `None` once the link is gone for good.
    pub async fn recv(&mut self) -> Option<Arc<[u8]>> {
        self.0.recv().await
    }
}

/// Records each outgoing message in the transcript, then sends it.
pub struct Egress {
    out: mpsc::Sender<Vec<u8>>,
    transcript: TranscriptWriter,
}

impl Egress {
    /// The site's sending side (through the transcript) and its inbox.
    pub fn open(link: SiteLink, transcript: TranscriptWriter) -> (Self, SiteInbox) {
        let egress = Self {
            out: link.out,
            transcript,
        };
        (egress, SiteInbox(link.inbox))
    }

    /// Records a refused round in the transcript. Nothing is sent: a `refusal` record
    /// stands for no bytes on the wire (its size is the reason's, for the auditor).
    pub(crate) fn record_refusal(&mut self, round: u64, refusal: &Refusal) -> Result<(), FlError> {
        self.transcript
            .append("refusal", round, refusal.key, refusal.reason.as_bytes())?;
        Ok(())
    }

    pub(crate) async fn send(&mut self, msg: &ToCoordinator) -> Result<(), FlError> {
        let (round, phase) = match msg {
            ToCoordinator::SecAgg(env) => (env.header.round.0, env.phase().to_string()),
            ToCoordinator::Plain { round, .. } => (*round, "plaintext".to_string()),
            ToCoordinator::Withdraw { round, .. } => (*round, "withdraw".to_string()),
        };
        let bytes = wire::encode(msg)?;
        self.transcript.append(msg.kind(), round, &phase, &bytes)?;
        self.out
            .send(bytes)
            .await
            .map_err(|_| FlError::Disconnected)
    }
}
