//! Taking in what sites send during a round: refusals recorded, withdrawals and
//! closed links dropping a site at once, and the round moved on phase by phase.

use bytes::Bytes;
use tessera_secagg::{SiteId, Status};

use super::{Action, Collect, CoordinatorMachine};
use crate::error::FlError;
use crate::report::{RejectReason, Rejection};
use crate::wire::{self, ToCoordinator, ToSite};

impl CoordinatorMachine {
    /// Signs a receipt of a site's transcript head, sends it back and keeps the latest
    /// per site (written to the receipts file). Without a receipt key, nothing.
    fn receipt(
        &mut self,
        from: SiteId,
        session: [u8; 16],
        seq: u64,
        head: String,
    ) -> Result<(), FlError> {
        let Some(receipts) = self.receipts.as_mut() else {
            return Ok(());
        };
        // One head per ended round, a transcript that only grows, a well-formed hash:
        // a site can neither make the coordinator sign at will nor roll its anchor back.
        let problem = if !receipts.due.remove(&from) {
            Some("no round ended for it since its last head")
        } else if session != self.config.session {
            Some("for another session")
        } else if receipts.latest.get(&from.0).is_some_and(|r| seq <= r.seq) {
            Some("its transcript would have shrunk since the last receipt")
        } else if head.len() != 64 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some("the head is not a SHA-256 in hex")
        } else {
            None
        };
        if let Some(why) = problem {
            self.reject(from, RejectReason::Head(why));
            return Ok(());
        }
        let session = crate::config::session_hex(&session);
        let receipt = receipts.signer.sign(from.0, &session, seq, &head)?;
        receipts.latest.insert(from.0, receipt.clone());
        let bytes = serde_json::to_vec_pretty(&receipts.latest).map_err(|e| FlError::File {
            path: receipts.path.clone(),
            message: e.to_string(),
        })?;
        // A receipts write still queued (heads of several sites taken in at once) is
        // brought up to date in place instead of queueing a second: it is before every
        // receipt send queued since, so each receipt is still on disk before it leaves.
        let queued = self.actions.iter_mut().find_map(|a| match a {
            Action::Write { path, bytes } if *path == receipts.path => Some(bytes),
            _ => None,
        });
        match queued {
            Some(queued) => *queued = bytes,
            None => self.actions.push_back(Action::Write {
                path: receipts.path.clone(),
                bytes,
            }),
        }
        let bytes = wire::encode(&ToSite::Receipt(receipt))?;
        self.actions.push_back(Action::Send {
            to: from,
            bytes: Bytes::from(bytes),
        });
        Ok(())
    }

    pub(super) fn reject(&mut self, from: SiteId, reason: RejectReason) {
        let rejection = Rejection { from, reason };
        match &mut self.running {
            Some(run) => run.rejected.push(rejection),
            None => self.between_rounds.push(rejection),
        }
    }

    pub(super) fn message(&mut self, from: SiteId, bytes: &[u8]) -> Result<(), FlError> {
        let msg = match wire::decode::<ToCoordinator>(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.reject(from, RejectReason::Wire(e));
                return Ok(());
            }
        };
        if let ToCoordinator::Head { session, seq, head } = msg {
            return self.receipt(from, session, seq, head);
        }
        let Some(run) = self.running.as_mut() else {
            self.reject(from, RejectReason::NoRound);
            return Ok(());
        };
        if !run.participants.contains(&from) {
            self.reject(from, RejectReason::NotParticipant);
            return Ok(());
        }
        let current = run.round;
        match (msg, &mut run.collect) {
            (ToCoordinator::Withdraw { round, reason }, _) if round == current => {
                run.withdrawals.push((from, reason));
                self.leave(from)
            }
            (ToCoordinator::Withdraw { round, .. }, _) => {
                self.reject(
                    from,
                    RejectReason::WrongRound {
                        got: round,
                        expected: current,
                    },
                );
                Ok(())
            }
            (ToCoordinator::SecAgg(env), Collect::Secure(agg)) => {
                if let Err(e) = agg.handle(from, env) {
                    self.reject(from, RejectReason::Aggregator(e));
                }
                self.progress()
            }
            (ToCoordinator::Plain { round, update }, Collect::Plain { sum, received }) => {
                let reason = if round != current {
                    Some(RejectReason::WrongRound {
                        got: round,
                        expected: current,
                    })
                } else if update.len() != sum.len() || update.modulus() != sum.modulus() {
                    Some(RejectReason::BadShape)
                } else if !received.insert(from) {
                    Some(RejectReason::Duplicate)
                } else {
                    sum.add_assign(&update);
                    None
                };
                if let Some(reason) = reason {
                    self.reject(from, reason);
                }
                self.progress()
            }
            (msg, _) => {
                self.reject(from, RejectReason::WrongKind(msg.kind()));
                Ok(())
            }
        }
    }

    /// A participant is gone (link closed or withdrew): drop it from the round now.
    pub(super) fn leave(&mut self, site: SiteId) -> Result<(), FlError> {
        let Some(run) = self.running.as_mut() else {
            return Ok(());
        };
        if !run.participants.contains(&site) || !run.left.insert(site) {
            return Ok(());
        }
        if let Collect::Secure(agg) = &mut run.collect
            && matches!(agg.status(), Status::Collecting(_))
        {
            agg.mark_dropped(site)?;
        }
        self.progress()
    }

    /// Acts on where the round stands: sends the next phase's messages and arms its
    /// deadline, or finishes the round.
    pub(super) fn progress(&mut self) -> Result<(), FlError> {
        loop {
            let Some(run) = self.running.as_mut() else {
                return Ok(());
            };
            let status = match &mut run.collect {
                Collect::Plain { received, .. } => {
                    let waiting = run
                        .participants
                        .iter()
                        .any(|s| !received.contains(s) && !run.left.contains(s));
                    if waiting {
                        return Ok(());
                    }
                    return self.finish();
                }
                Collect::Secure(agg) => agg.status().clone(),
            };
            let Status::Collecting(phase) = status else {
                return self.finish();
            };
            if run.phase == Some(phase) {
                return Ok(());
            }
            let first = run.phase.is_none();
            run.phase = Some(phase);
            let Collect::Secure(agg) = &mut run.collect else {
                return Ok(());
            };
            let mut sends = Vec::new();
            for out in agg.take_outgoing() {
                if !run.left.contains(&out.to) {
                    sends.push((out.to, ToSite::SecAgg(Box::new(out.envelope))));
                }
            }
            // Sites that left stay out of every later phase.
            for &site in &run.left {
                if !matches!(agg.status(), Status::Collecting(_)) {
                    break;
                }
                agg.mark_dropped(site)?;
            }
            if !first {
                self.actions.push_back(Action::PhaseStarted(phase));
                let after = self.config.phase_timeout;
                let timer = self.arm(after);
                if let Some(run) = self.running.as_mut() {
                    run.timer = timer;
                }
            }
            for (to, msg) in sends {
                let bytes: Bytes = wire::encode(&msg)?.into();
                self.actions.push_back(Action::Send { to, bytes });
            }
        }
    }
}
