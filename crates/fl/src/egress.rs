//! The one way out of a site.
//!
//! A [`SiteLink`] is a site's end of its link to the coordinator; its sending half is
//! private to this crate, and the only way to use it is [`Egress::open`], which wraps it
//! with the site's signed transcript. Every message is therefore recorded, durably,
//! before it is handed to the transport. (Links also carry zero-length frames that only
//! announce a QUIC stream; they carry no data and are not recorded.)

use bytes::Bytes;
use std::path::PathBuf;
use tessera_net::receipt::Receipt;
use tessera_net::transcript::{RoundFacts, TranscriptWriter};
use tokio::sync::mpsc;

use crate::config::{parse_session, session_hex};
use crate::error::FlError;
use crate::policy::Refusal;
use crate::wire::{self, ToCoordinator};

/// A site's end of its link: messages from the coordinator, and a sender that only
/// [`Egress`] can reach.
pub struct SiteLink {
    out: mpsc::Sender<Vec<u8>>,
    inbox: mpsc::Receiver<Bytes>,
}

impl SiteLink {
    pub(crate) fn new(out: mpsc::Sender<Vec<u8>>, inbox: mpsc::Receiver<Bytes>) -> Self {
        Self { out, inbox }
    }
}

/// Messages from the coordinator.
pub struct SiteInbox(mpsc::Receiver<Bytes>);

impl SiteInbox {
    /// The next message; `None` once the link is gone for good.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.0.recv().await
    }
}

/// Records each outgoing message in the transcript, then sends it.
pub struct Egress {
    out: mpsc::Sender<Vec<u8>>,
    transcript: TranscriptWriter,
    /// The session of the last round recorded (hex), for messages that do not name it.
    session: String,
    /// Where masked uploads are kept, when the site keeps them (never plaintext).
    payloads: Option<PathBuf>,
}

impl Egress {
    /// The site's sending side (through the transcript) and its inbox.
    pub fn open(link: SiteLink, transcript: TranscriptWriter) -> (Self, SiteInbox) {
        let egress = Self {
            out: link.out,
            transcript,
            session: "0".repeat(32),
            payloads: None,
        };
        (egress, SiteInbox(link.inbox))
    }

    /// Keeps every masked upload (`masked-input`, and nothing else) in `dir`, named by
    /// its transcript record, so that an auditor can test it.
    pub fn keep_payloads(mut self, dir: PathBuf) -> Self {
        self.payloads = Some(dir);
        self
    }

    /// Records the parameters of a round the site answers, before it sends anything.
    pub(crate) fn record_round(&mut self, facts: RoundFacts) -> Result<(), FlError> {
        self.session = facts.session.clone();
        self.transcript.round(facts)?;
        Ok(())
    }

    /// Records a refused round in the transcript. Nothing is sent.
    pub(crate) fn record_refusal(
        &mut self,
        session: &[u8; 16],
        round: u64,
        refusal: &Refusal,
    ) -> Result<(), FlError> {
        self.transcript
            .refusal(&session_hex(session), round, refusal.key, &refusal.reason)?;
        Ok(())
    }

    /// Stores the coordinator's receipt of the transcript's head.
    pub(crate) fn record_receipt(&mut self, receipt: Receipt) -> Result<(), FlError> {
        self.transcript.receipt(receipt)?;
        Ok(())
    }

    /// Sends the transcript's head for the coordinator to sign.
    pub(crate) async fn send_head(&mut self) -> Result<(), FlError> {
        let (seq, head) = self.transcript.head();
        let Some(session) = parse_session(&self.session) else {
            return Ok(());
        };
        self.send(&ToCoordinator::Head { session, seq, head }).await
    }

    /// Test-only fault: sends `bytes` as a message *without* recording it, so that a
    /// test can show the wire audit catching a site that leaks past its transcript.
    #[cfg(feature = "fault-injection")]
    pub async fn send_unrecorded(&mut self, bytes: Vec<u8>) -> Result<(), FlError> {
        self.out
            .send(bytes)
            .await
            .map_err(|_| FlError::Disconnected)
    }

    pub(crate) async fn send(&mut self, msg: &ToCoordinator) -> Result<(), FlError> {
        let (round, phase) = match msg {
            ToCoordinator::SecAgg(env) => (env.header.round.0, env.phase().to_string()),
            ToCoordinator::Plain { round, .. } => (*round, "plaintext".to_string()),
            ToCoordinator::Withdraw { round, .. } => (*round, "withdraw".to_string()),
            ToCoordinator::Head { .. } => (0, "anchor".to_string()),
        };
        let bytes = wire::encode(msg)?;
        let record = self
            .transcript
            .message(&self.session, round, msg.kind(), &phase, &bytes)?;
        if let Some(dir) = &self.payloads
            && msg.kind() == "masked-input"
        {
            std::fs::create_dir_all(dir).map_err(FlError::io(dir))?;
            let path = dir.join(format!("{}.bin", record.seq));
            tessera_core::atomic::write_atomic(&path, &bytes).map_err(FlError::io(&path))?;
        }
        self.out
            .send(bytes)
            .await
            .map_err(|_| FlError::Disconnected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{RosterFacts, open_transcript};
    use crate::policy::SitePolicy;
    use std::sync::Arc;
    use tessera_net::transcript::Durability;
    use tessera_secagg::{
        Body, Envelope, Header, IdentityKeyPair, MaskedVector, Modulus, PROTOCOL_VERSION, Party,
        PlainVector, Round, SessionId, SiteId,
    };

    /// With `keep_payloads`, a masked upload is kept (the exact bytes sent) and a
    /// plaintext update never is.
    #[tokio::test]
    async fn only_masked_uploads_are_kept() {
        let dir = std::env::temp_dir().join(format!("tessera-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let identity = Arc::new(IdentityKeyPair::from_seed([3; 32]).unwrap());
        let transcript = open_transcript(
            &dir.join("site.transcript"),
            identity,
            SiteId(0),
            &RosterFacts::unsigned(),
            &SitePolicy::permissive(),
            true,
            Durability::Synced,
        )
        .unwrap();
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let (_in_tx, in_rx) = mpsc::channel(8);
        let (egress, _inbox) = Egress::open(SiteLink::new(out_tx, in_rx), transcript);
        let kept = dir.join("payloads");
        let mut egress = egress.keep_payloads(kept.clone());
        let modulus = Modulus::new(16).unwrap();
        let plain = PlainVector::new(modulus, vec![1, 2, 3]);
        let vector: MaskedVector =
            postcard::from_bytes(&postcard::to_allocvec(&plain).unwrap()).unwrap();
        let masked = ToCoordinator::SecAgg(Envelope {
            header: Header {
                version: PROTOCOL_VERSION,
                session: SessionId([0; 16]),
                round: Round(1),
                sender: Party::Site(SiteId(0)),
                recipient: Party::Aggregator,
            },
            body: Body::MaskedInput(tessera_secagg::MaskedUpload {
                vector,
                accused: vec![],
            }),
        });
        egress
            .send(&ToCoordinator::Plain {
                round: 1,
                update: plain,
            })
            .await
            .unwrap();
        egress.send(&masked).await.unwrap();
        let _plain_bytes = out_rx.recv().await.unwrap();
        let masked_bytes = out_rx.recv().await.unwrap();
        let files: Vec<_> = std::fs::read_dir(&kept).unwrap().flatten().collect();
        assert_eq!(files.len(), 1);
        // Records 0 (open), 1 (plain-update), 2 (masked-input).
        assert_eq!(files[0].file_name(), "2.bin");
        assert_eq!(std::fs::read(files[0].path()).unwrap(), masked_bytes);
    }
}
