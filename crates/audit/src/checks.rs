//! The checks on one transcript, and across the transcripts of several sites.

use std::collections::BTreeMap;
use std::path::Path;
use tessera_net::pki::SignedRoster;
use tessera_net::receipt::Receipt;
use tessera_net::transcript::{Entry, OpenFacts, Record, RoundFacts, Verified, verify};
use tessera_secagg::IdentityPublicKey;

use crate::sizes::{self, SizeError};
use crate::{AuditError, Finding, SiteAudit, Trust, file_error, uniformity};

struct Ctx<'a> {
    file: &'a Path,
    findings: Vec<Finding>,
}

impl Ctx<'_> {
    fn find(&mut self, seq: Option<u64>, check: &'static str, message: impl Into<String>) {
        self.findings.push(Finding {
            file: self.file.to_owned(),
            seq,
            check,
            message: message.into(),
        });
    }
}

/// The site a transcript belongs to: its first `open` record's, with that site's key.
fn site_key(roster: &SignedRoster, path: &Path) -> Result<(u32, IdentityPublicKey), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let first = text.lines().next().ok_or("empty transcript")?;
    let record: Record = serde_json::from_str(first).map_err(|e| format!("line 1: {e}"))?;
    let Entry::Open(open) = record.entry else {
        return Err("the first record is not `open` (not a v2 transcript?)".into());
    };
    let entry = roster
        .entries
        .iter()
        .find(|e| e.site == open.site)
        .ok_or(format!("site {} is not in the roster", open.site))?;
    let key = roster.identity_of(&entry.name).ok_or(format!(
        "the roster's key for site {} is malformed",
        open.site
    ))?;
    Ok((open.site, key))
}

/// A transcript's records, verified against its site's key in the PKI's roster.
pub(crate) fn verified_records(pki: &Path, path: &Path) -> Result<Vec<Record>, AuditError> {
    let roster = SignedRoster::load(&pki.join("roster.json"), &pki.join("ca.pem"))?;
    let (_, key) = site_key(&roster, path).map_err(|m| file_error(path, m))?;
    verify(path, &key)
        .map(|v| v.records)
        .map_err(|e| file_error(path, e))
}

pub(crate) fn site(trust: &Trust, path: &Path) -> SiteAudit {
    let mut ctx = Ctx {
        file: path,
        findings: Vec::new(),
    };
    let mut out = SiteAudit {
        file: path.to_owned(),
        ..SiteAudit::default()
    };
    let verified = match site_key(&trust.roster, path).and_then(|(site, key)| {
        out.site = Some(site);
        verify(path, &key).map_err(|e| e.to_string())
    }) {
        Ok(v) => v,
        Err(message) => {
            ctx.find(None, "chain", message);
            out.findings = ctx.findings;
            return out;
        }
    };
    let site = out.site.unwrap_or_default();
    out.records = verified.records.len();
    out.bytes_by_kind = verified.bytes_by_kind();
    anchoring(trust, site, &verified, &mut ctx, &mut out);
    let rounds = messages(trust, site, &verified.records, &mut ctx, &mut out);
    privacy(trust, &rounds, &mut ctx, &mut out);
    out.uniformity = uniformity::retained(path, &verified.records, &mut |seq, m| {
        ctx.find(Some(seq), "uniformity", m)
    });
    out.findings = ctx.findings;
    out
}

/// Receipts in the transcript and the coordinator's latest: signed by the coordinator,
/// for this site, covering records that are present and unaltered.
fn anchoring(trust: &Trust, site: u32, v: &Verified, ctx: &mut Ctx, out: &mut SiteAudit) {
    let hashes = &v.hashes;
    let check = |r: &Receipt, at: Option<u64>, ctx: &mut Ctx, whose: &str| {
        if !trust.coordinator.verify(r) {
            ctx.find(
                at,
                "anchor",
                format!("{whose} receipt is not the coordinator's signature"),
            );
        } else if r.site != site {
            ctx.find(
                at,
                "anchor",
                format!("{whose} receipt is for site {}", r.site),
            );
        } else if r.seq == 0 || r.seq as usize > hashes.len() {
            ctx.find(
                at,
                "anchor",
                format!(
                    "{whose} receipt covers {} records; the transcript has {} (records removed)",
                    r.seq,
                    hashes.len()
                ),
            );
        } else if hashes[r.seq as usize - 1] != r.head {
            ctx.find(
                at,
                "anchor",
                format!(
                    "record {} differs from the one {whose} receipt covers",
                    r.seq - 1
                ),
            );
        }
    };
    let mut anchored = 0;
    for rec in &v.records {
        if let Entry::Receipt(r) = &rec.entry {
            out.receipts += 1;
            check(r, Some(rec.seq), ctx, "the transcript's");
            anchored = anchored.max(r.seq as usize);
        }
    }
    if let Some(r) = trust.latest.get(&site) {
        check(r, None, ctx, "the coordinator's latest");
        anchored = anchored.max(r.seq as usize);
    }
    // The head a receipt answers, and the receipt itself, always follow what it covers.
    out.unanchored = v
        .records
        .iter()
        .skip(anchored)
        .filter(|r| match &r.entry {
            Entry::Receipt(_) => false,
            Entry::Message { kind, .. } => kind != "head",
            _ => true,
        })
        .count();
}

/// Kinds against the policy, rounds admitted before their messages, sizes against
/// each round's parameters. Returns the round facts in transcript order.
fn messages<'a>(
    trust: &Trust,
    site: u32,
    records: &'a [Record],
    ctx: &mut Ctx,
    out: &mut SiteAudit,
) -> Vec<&'a RoundFacts> {
    let mut rounds: BTreeMap<(String, u64), &RoundFacts> = BTreeMap::new();
    let mut order = Vec::new();
    for rec in records {
        let at = Some(rec.seq);
        match &rec.entry {
            Entry::Open(open) => check_open(trust, open, at, ctx),
            Entry::Round(facts) => {
                out.rounds.push((facts.session.clone(), facts.round));
                out.views
                    .push(format!("{}/{}", facts.context, facts.params_sha256));
                if rounds
                    .insert((facts.session.clone(), facts.round), facts)
                    .is_some()
                {
                    ctx.find(
                        at,
                        "policy",
                        format!("round {} admitted twice", facts.round),
                    );
                }
                order.push(facts);
            }
            Entry::Refusal {
                round, key, reason, ..
            } => out.refusals.push((*round, key.clone(), reason.clone())),
            Entry::Receipt(_) => {}
            Entry::Message {
                session,
                round,
                kind,
                size,
                ..
            } => {
                let facts = rounds.get(&(session.clone(), *round)).copied();
                check_message(
                    trust,
                    site,
                    rec.seq,
                    (session, *round, kind, *size),
                    facts,
                    ctx,
                );
            }
        }
    }
    order
}

/// One message: its kind against the policy and the round it belongs to, its size
/// against that round's parameters. `msg` is (session, round, kind, size).
fn check_message(
    trust: &Trust,
    site: u32,
    seq: u64,
    msg: (&str, u64, &str, u64),
    facts: Option<&RoundFacts>,
    ctx: &mut Ctx,
) {
    let (session, round, kind, size) = msg;
    let at = Some(seq);
    if kind == "head" {
        match sizes::head(session, seq) {
            Ok(want) if size != want => {
                ctx.find(at, "size", format!("head of {size} bytes, not {want}"))
            }
            Ok(_) => {}
            Err(e) => ctx.find(at, "size", e.to_string()),
        }
        return;
    }
    if kind == "plain-update" && trust.policy.require_secure {
        ctx.find(
            at,
            "policy",
            "a plain-update: the policy requires secure aggregation",
        );
    }
    let Some(facts) = facts else {
        ctx.find(
            at,
            "policy",
            format!("a {kind} for round {round}, which the site never admitted"),
        );
        return;
    };
    match sizes::expected(kind, facts, site) {
        Err(SizeError::NotInRound) => ctx.find(
            at,
            "policy",
            format!("a {kind} in a {} round", facts.protocol),
        ),
        Err(e @ SizeError::Facts(_)) => ctx.find(at, "size", format!("round {round}: {e}")),
        Ok(range) if !range.contains(&size) => ctx.find(
            at,
            "size",
            format!(
                "{kind} of {size} bytes; round {round}'s parameters imply {}..={}",
                range.start(),
                range.end()
            ),
        ),
        Ok(_) => {}
    }
}

fn check_open(trust: &Trust, open: &OpenFacts, at: Option<u64>, ctx: &mut Ctx) {
    if trust.policy_given
        && tessera_fl::facts::policy_digest(&trust.policy)
            .ok()
            .as_deref()
            != Some(open.policy_sha256.as_str())
    {
        ctx.find(
            at,
            "policy",
            "the site ran under another policy than the one given",
        );
    }
    if open.roster_version > trust.roster.version {
        ctx.find(
            at,
            "policy",
            format!(
                "the site trusted roster version {}, newer than the one given ({})",
                open.roster_version, trust.roster.version
            ),
        );
    }
}

/// The site's ε recomputed from its per-round ρ, and the policy's floor and budget.
fn privacy(trust: &Trust, rounds: &[&RoundFacts], ctx: &mut Ctx, out: &mut SiteAudit) {
    let p = &trust.policy;
    let mut rhos = Vec::new();
    for facts in rounds {
        let Some(dp) = &facts.dp else {
            if let Some(m) = p.require_mechanism {
                ctx.find(
                    None,
                    "privacy",
                    format!("round {} added no {} noise", facts.round, m.name()),
                );
            }
            continue;
        };
        rhos.push((dp.rho, dp.sampling_rate));
        let eps = tessera_dp::accounting::composed_epsilon(&rhos, dp.delta)
            .map_or(f64::INFINITY, |(eps, _)| eps);
        if (eps - dp.epsilon_after).abs() > 1e-6 * eps.max(1.0) {
            ctx.find(
                None,
                "privacy",
                format!(
                    "round {}: ε after it is {eps:.6}, the transcript says {:.6}",
                    facts.round, dp.epsilon_after
                ),
            );
        }
        if let Some(m) = p.require_mechanism
            && m.name() != dp.mechanism
        {
            ctx.find(
                None,
                "privacy",
                format!(
                    "round {}: {} noise, not {}",
                    facts.round,
                    dp.mechanism,
                    m.name()
                ),
            );
        }
        if dp.noise_per_clip < p.min_noise_per_clip {
            ctx.find(
                None,
                "privacy",
                format!(
                    "round {}: noise {:.4} per unit of clip, below the policy's {}",
                    facts.round, dp.noise_per_clip, p.min_noise_per_clip
                ),
            );
        }
        if let Some(max) = p.max_epsilon
            && eps > max * (1.0 + 1e-9)
        {
            ctx.find(
                None,
                "privacy",
                format!("round {}: ε {eps:.4} past the budget {max}", facts.round),
            );
        }
        out.epsilon = Some(eps);
    }
}

/// One context and one parameter digest per round across the sites.
pub(crate) fn across_sites(sites: &mut [SiteAudit]) {
    let mut seen: BTreeMap<(String, u64), Vec<(usize, String)>> = BTreeMap::new();
    for (i, site) in sites.iter().enumerate() {
        for (round, view) in site.rounds.iter().zip(&site.views) {
            seen.entry(round.clone())
                .or_default()
                .push((i, view.clone()));
        }
    }
    for ((_, round), views) in seen {
        for (i, mine) in &views {
            let others: Vec<String> = views
                .iter()
                .filter(|(_, v)| v != mine)
                .map(|(j, _)| sites[*j].file.display().to_string())
                .collect();
            if others.is_empty() {
                continue;
            }
            let file = sites[*i].file.clone();
            sites[*i].findings.push(Finding {
                file,
                seq: None,
                check: "context",
                message: format!(
                    "round {round}: its context or parameter digest differs from {} (split view)",
                    others.join(", ")
                ),
            });
        }
    }
}
