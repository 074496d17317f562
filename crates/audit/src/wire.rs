//! Against the wire: a packet capture of a site's QUIC traffic, decrypted by Wireshark's
//! own dissector (`tshark`) with the TLS key log the site wrote, must carry nothing from
//! the site that its transcript does not account for.
//!
//! The site's connections are those whose ClientHello random is in the key log. In each,
//! every packet the site sent must decrypt; the STREAM frames it sent are reassembled
//! per stream, split into Tessera messages (`net::frame`), and each message must match a
//! distinct `message` record of the transcript by SHA-256 and size. DATAGRAM frames,
//! undecryptable packets, gaps and bytes that form no whole message are findings. With
//! `site`, any connection from that address that the key log does not cover is one too.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use tessera_net::frame::split_messages;
use tessera_net::transcript::{Entry, sha256_hex};

use crate::{AuditError, Finding};

/// What the auditor supplies for the wire check.
pub struct WireInputs {
    pub capture: PathBuf,
    pub keylog: PathBuf,
    pub transcript: PathBuf,
    pub pki: PathBuf,
    /// The site's address (`IP` or `IP:port`): its connections the key log does not
    /// cover are findings. Without it, uncovered connections are only counted.
    pub site: Option<String>,
    /// The `tshark` to run.
    pub tshark: PathBuf,
}

/// One QUIC connection in the capture.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Connection {
    pub number: u64,
    /// The client's address (`ip:port`).
    pub client: String,
    /// Whether the key log holds its secrets (it is the site's).
    pub covered: bool,
}

/// What the capture shows.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct WireAudit {
    pub connections: Vec<Connection>,
    /// Packets the site sent on its connections, and how many of those did not decrypt.
    pub packets: usize,
    pub undecrypted: usize,
    /// Stream bytes the site sent, and the non-empty messages they carry.
    pub stream_bytes: u64,
    pub messages: usize,
    /// Messages matched to a transcript record.
    pub matched: usize,
    /// Transcript messages not seen in the capture (sent before or after it).
    pub recorded_not_seen: usize,
    pub findings: Vec<Finding>,
}

/// A site's stream data in one connection: offset → bytes, per stream.
type Streams = BTreeMap<u64, BTreeMap<u64, Vec<u8>>>;

fn tool_error(tshark: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::File {
        path: tshark.to_owned(),
        message: format!(
            "cannot run tshark ({e}); install Wireshark's command-line tools, e.g. \
             `apt-get install tshark` on Debian or Ubuntu"
        ),
    }
}

fn tshark(inputs: &WireInputs, args: &[&str]) -> Result<Vec<u8>, AuditError> {
    let keylog = format!("tls.keylog_file:{}", inputs.keylog.display());
    let out = Command::new(&inputs.tshark)
        .arg("-r")
        .arg(&inputs.capture)
        .args(["-o", &keylog])
        .args(args)
        .output()
        .map_err(|e| tool_error(&inputs.tshark, e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(AuditError::File {
            path: inputs.capture.clone(),
            message: format!("tshark could not read it: {line}"),
        });
    }
    Ok(out.stdout)
}

/// The client randoms of the connections whose secrets the key log holds.
fn keylog_randoms(path: &Path) -> Result<BTreeSet<String>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuditError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    // NSS key log lines: `LABEL <client random, 64 hex> <secret>`; `#` comments.
    let randoms: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (label, random) = (f.next()?, f.next()?);
            let is_label = label
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
            let is_random = random.len() == 64 && random.chars().all(|c| c.is_ascii_hexdigit());
            (is_label && is_random && f.next().is_some()).then(|| random.to_ascii_lowercase())
        })
        .collect();
    if randoms.is_empty() {
        return Err(AuditError::File {
            path: path.to_owned(),
            message: "not a TLS key log (no `LABEL client_random secret` lines)".into(),
        });
    }
    Ok(randoms)
}

/// Every connection's client address and whether the key log covers it.
fn connections(
    inputs: &WireInputs,
    randoms: &BTreeSet<String>,
) -> Result<Vec<Connection>, AuditError> {
    let out = tshark(
        inputs,
        &[
            "-Y",
            "tls.handshake.type == 1",
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-e",
            "quic.connection.number",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "udp.srcport",
            "-e",
            "tls.handshake.random",
        ],
    )?;
    let mut seen = BTreeMap::new();
    for line in String::from_utf8_lossy(&out).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(n), Some(port), Some(random)) = (
            f.first()
                .and_then(|n| n.split(',').next()?.parse::<u64>().ok()),
            f.get(3),
            f.get(4),
        ) else {
            continue;
        };
        let ip = f
            .get(1)
            .filter(|s| !s.is_empty())
            .or(f.get(2))
            .copied()
            .unwrap_or("");
        seen.entry(n).or_insert(Connection {
            number: n,
            client: format!("{ip}:{port}"),
            covered: randoms.contains(&random.to_ascii_lowercase()),
        });
    }
    Ok(seen.into_values().collect())
}

fn as_list(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => vec![],
    }
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn unhex_colons(s: &str) -> Option<Vec<u8>> {
    s.split(':')
        .filter(|b| !b.is_empty())
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

/// The site's stream data per connection, and the problems seen on the way.
fn stream_data(
    inputs: &WireInputs,
    conns: &[Connection],
    out: &mut WireAudit,
    find: &mut dyn FnMut(String),
) -> Result<BTreeMap<u64, Streams>, AuditError> {
    let covered: Vec<&Connection> = conns.iter().filter(|c| c.covered).collect();
    if covered.is_empty() {
        return Ok(BTreeMap::new());
    }
    let filter = covered
        .iter()
        .map(|c| format!("quic.connection.number == {}", c.number))
        .collect::<Vec<_>>()
        .join(" || ");
    let json = tshark(
        inputs,
        &[
            "-Y",
            &filter,
            "-T",
            "json",
            "--no-duplicate-keys",
            "-J",
            "frame ip ipv6 udp quic",
        ],
    )?;
    let packets: Vec<Value> = serde_json::from_slice(&json).map_err(|e| AuditError::File {
        path: inputs.capture.clone(),
        message: format!("tshark's JSON did not parse: {e}"),
    })?;
    let clients: BTreeMap<u64, &str> = covered
        .iter()
        .map(|c| (c.number, c.client.as_str()))
        .collect();
    let mut data: BTreeMap<u64, Streams> = BTreeMap::new();
    for p in &packets {
        let layers = &p["_source"]["layers"];
        let ip = text(&layers["ip"], "ip.src").or(text(&layers["ipv6"], "ipv6.src"));
        let from = format!(
            "{}:{}",
            ip.unwrap_or(""),
            text(&layers["udp"], "udp.srcport").unwrap_or("")
        );
        let frame_no = text(&layers["frame"], "frame.number").unwrap_or("?");
        for q in as_list(layers.get("quic")) {
            let Some(n) = q["QUIC Connection information"]["quic.connection.number"]
                .as_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if clients.get(&n) != Some(&from.as_str()) {
                continue; // the coordinator's packets, or another connection's
            }
            out.packets += 1;
            if q.get("quic.remaining_payload").is_some()
                || q.get("_ws.expert")
                    .is_some_and(|e| e.get("quic.decryption_failed").is_some())
            {
                out.undecrypted += 1;
                find(format!(
                    "packet {frame_no} from the site did not decrypt with the key log"
                ));
                continue;
            }
            for f in as_list(q.get("quic.frame")) {
                match frame(f) {
                    Ok(Frame::Stream {
                        stream,
                        offset,
                        bytes,
                    }) => {
                        let pieces = data.entry(n).or_default().entry(stream).or_default();
                        pieces.entry(offset).or_insert(bytes);
                    }
                    Ok(Frame::Datagram) => find(format!(
                        "packet {frame_no}: a DATAGRAM frame (data outside any stream)"
                    )),
                    Ok(Frame::Other) => {}
                    Err(what) => find(format!("packet {frame_no}: {what}")),
                }
            }
        }
    }
    Ok(data)
}

/// One QUIC frame as tshark decoded it.
enum Frame {
    Stream {
        stream: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    Datagram,
    Other,
}

/// Reads a frame; a field tshark printed that does not parse is an error, never a
/// default (a STREAM frame's absent offset is 0 and its absent data empty, by RFC 9000).
fn frame(f: &Value) -> Result<Frame, String> {
    let number = |key: &str| -> Result<Option<u64>, String> {
        text(f, key)
            .map(|t| {
                t.parse::<u64>()
                    .map_err(|_| format!("{key} \"{t}\" is not a number"))
            })
            .transpose()
    };
    let kind = number("quic.frame_type")?.ok_or("a frame without a type")?;
    Ok(match kind {
        0x08..=0x0f => Frame::Stream {
            stream: number("quic.stream.stream_id")?.ok_or("a STREAM frame without a stream id")?,
            offset: number("quic.stream.offset")?.unwrap_or(0),
            bytes: match text(f, "quic.stream_data") {
                Some(hex) => unhex_colons(hex).ok_or("stream data that is not hex")?,
                None => Vec::new(),
            },
        },
        0x30 | 0x31 => Frame::Datagram,
        _ => Frame::Other,
    })
}

/// Joins a stream's pieces (retransmissions overlap) into its bytes; a gap ends it.
fn reassemble(pieces: &BTreeMap<u64, Vec<u8>>) -> (Vec<u8>, Option<u64>) {
    let mut out = Vec::new();
    for (&offset, bytes) in pieces {
        let have = out.len() as u64;
        if offset > have {
            return (out, Some(have));
        }
        let skip = (have - offset) as usize;
        if skip < bytes.len() {
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    (out, None)
}

/// Checks a capture of a site's traffic against its verified transcript.
pub fn audit_wire(inputs: &WireInputs) -> Result<WireAudit, AuditError> {
    let randoms = keylog_randoms(&inputs.keylog)?;
    let records = crate::checks::verified_records(&inputs.pki, &inputs.transcript)?;
    let conns = connections(inputs, &randoms)?;
    let mut out = WireAudit::default();
    let mut findings = Vec::new();
    let mut find = |message: String| findings.push(message);
    if !conns.iter().any(|c| c.covered) {
        find("no connection in the capture is covered by the key log".into());
    }
    if let Some(site) = &inputs.site {
        for c in conns.iter().filter(|c| !c.covered) {
            let ip = c.client.rsplit_once(':').map_or("", |(ip, _)| ip);
            if &c.client == site || ip == site {
                find(format!(
                    "connection {} from the site ({}) is not in the key log",
                    c.number, c.client
                ));
            }
        }
    }
    let data = stream_data(inputs, &conns, &mut out, &mut find)?;
    let mut unused: Vec<(String, u64)> = records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Message { sha256, size, .. } => Some((sha256.clone(), *size)),
            _ => None,
        })
        .collect();
    for (conn, streams) in &data {
        for (stream, pieces) in streams {
            let (bytes, gap) = reassemble(pieces);
            out.stream_bytes += bytes.len() as u64;
            if let Some(at) = gap {
                find(format!(
                    "connection {conn}, stream {stream}: bytes missing from offset {at} (incomplete capture?)"
                ));
            }
            let split = split_messages(&bytes);
            if split.trailing > 0 {
                find(format!(
                    "connection {conn}, stream {stream}: {} bytes at the end form no whole message",
                    split.trailing
                ));
            }
            for m in split.messages.iter().filter(|m| !m.is_empty()) {
                out.messages += 1;
                let hash = sha256_hex(m);
                match unused
                    .iter()
                    .position(|(h, s)| *h == hash && *s == m.len() as u64)
                {
                    Some(i) => {
                        unused.swap_remove(i);
                        out.matched += 1;
                    }
                    None => find(format!(
                        "connection {conn}, stream {stream}: a message of {} bytes (SHA-256 {}) that no transcript record accounts for",
                        m.len(),
                        &hash[..16]
                    )),
                }
            }
        }
    }
    out.recorded_not_seen = unused.len();
    out.connections = conns;
    out.findings = findings
        .into_iter()
        .map(|message| Finding {
            file: inputs.capture.clone(),
            seq: None,
            check: "wire",
            message,
        })
        .collect();
    Ok(out)
}
