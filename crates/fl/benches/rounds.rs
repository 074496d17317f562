//! One federated round over QUIC on loopback, with the coordinator and n sites in this
//! process (so site work — training the known-update model, encoding, masking — shares
//! the machine with the coordinator): plaintext FedAvg vs SecAgg vs SecAgg+, with the
//! frame payload bytes each way, and raw single-stream QUIC throughput in the same run.
//!
//! `TESSERA_BENCH_QUIC_COST=1 cargo bench -p tessera-fl --bench rounds` prints only the
//! plaintext round against raw QUIC moving the same bytes over as many connections,
//! the two alternating (`TESSERA_BENCH_QUIC_COST=10x1000000`: that n × m row alone).
//!
//! `cargo bench -p tessera-fl --bench rounds` prints a Markdown table: per configuration,
//! the median wall time of five rounds after a warm-up round and the mean bytes per
//! round (setting up a federation per configuration makes criterion impractical here).
//! Beside it, each party's own work: the coordinator's (median per round) and the
//! slowest site's (mean per round), whose sum is the round's critical path when every
//! party has a machine of its own (network time excluded). Measured with every party
//! on this machine, each party's work includes time it lost to the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_core::seed::RootSeed;
use tessera_fl::{FederationConfig, KnownUpdateTrainer, Protocol, loopback};
use tessera_net::frame::{MAX_FRAME, read_frame, write_frame};
use tessera_net::pki::{Role, init, issue};
use tessera_net::quic::{Credentials, client, connect, server};
use tessera_secagg::SiteId;

fn federation_dir(n: usize) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tessera-bench-{n}-{}", std::process::id()))
}

/// Timed rounds per configuration (after one warm-up); the median is reported.
const ROUNDS: usize = 5;

/// One configuration's figures.
#[derive(Clone, Copy)]
struct Measured {
    /// Median wall time of a round, every party sharing this machine.
    wall: f64,
    up: u64,
    down: u64,
    /// Median of the coordinator's own work per round.
    coordinator: f64,
    /// The slowest site's own work per round (mean over all rounds, warm-up included).
    site: f64,
}

impl Measured {
    /// What a round needs when every party has a machine of its own (network excluded).
    fn critical_path(&self) -> f64 {
        self.coordinator + self.site
    }
}

/// This process's CPU time (user + system) in seconds, from `/proc/self/stat`; `None`
/// where that file is missing or unreadable (the bench then prints "n/a").
fn process_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and
    // 13th of them, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / 100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A loopback federation of n known-update sites with m parameters, from scratch.
async fn start(n: usize, m: usize, protocol: Protocol) -> loopback::LoopbackFederation {
    let dir = federation_dir(n);
    for file in ["checkpoint.bin", "checkpoint.round"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    for i in 0..n {
        let _ = std::fs::remove_file(dir.join(format!("site-{i}.transcript")));
    }
    let config = FederationConfig::builder([1; 16], dir.join("checkpoint.bin"))
        .protocol(protocol)
        .rates(0.0, 0.05)
        .timeouts(Duration::from_secs(120), Duration::from_secs(120))
        .build()
        .unwrap();
    let trainers = (0..n)
        .map(|i| KnownUpdateTrainer::new(m, 0.001 * (i as f32 + 1.0), 100).unwrap())
        .collect();
    let layout = KnownUpdateTrainer::layout_for(m).unwrap();
    loopback::start(
        config,
        layout,
        vec![0.0; m],
        trainers,
        &BTreeMap::new(),
        &dir,
        RootSeed::from_experiment(3),
    )
    .await
    .unwrap()
}

/// Runs one round, which must complete with all n sites; its wall time in seconds.
async fn timed_round(fed: &mut loopback::LoopbackFederation, n: usize) -> f64 {
    let start = Instant::now();
    let report = fed.coordinator.run_round().await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        report.aborted.is_none() && report.contributors.len() == n,
        "{report:?}"
    );
    secs
}

async fn round(n: usize, m: usize, protocol: Protocol) -> Measured {
    let mut fed = start(n, m, protocol).await;
    fed.coordinator.run_round().await.unwrap(); // warm-up
    let traffic = fed.coordinator.traffic().clone();
    let (up0, down0) = traffic.snapshot();
    let mut times = Vec::with_capacity(ROUNDS);
    let mut coordinator = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        times.push(timed_round(&mut fed, n).await);
        coordinator.push(fed.coordinator.last_round_busy().as_secs_f64());
    }
    let (up1, down1) = traffic.snapshot();
    let sites = fed.shutdown().await.unwrap();
    let slowest = sites
        .iter()
        .map(|s| s.busy.as_secs_f64())
        .fold(0.0, f64::max)
        / (ROUNDS + 1) as f64;
    Measured {
        wall: median(times),
        up: (up1 - up0) / ROUNDS as u64,
        down: (down1 - down0) / ROUNDS as u64,
        coordinator: median(coordinator),
        site: slowest,
    }
}

/// A throwaway PKI's coordinator endpoint on 127.0.0.1, its address, and a site's
/// client endpoint, for raw QUIC beside the federation.
fn raw_endpoints() -> (quinn::Endpoint, std::net::SocketAddr, quinn::Endpoint) {
    let dir = federation_dir(3).join("pki");
    if !dir.join("site-0.pem").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir).unwrap();
        issue(&dir, "coordinator", Role::Coordinator).unwrap();
        issue(&dir, "site-0", Role::Site(SiteId(0))).unwrap();
    }
    let endpoint = server(
        ([127, 0, 0, 1], 0).into(),
        &Credentials::load(&dir, "coordinator").unwrap(),
        false,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let ep = client(&Credentials::load(&dir, "site-0").unwrap(), false).unwrap();
    (endpoint, addr, ep)
}

async fn raw_throughput(bytes: usize) -> f64 {
    let (endpoint, addr, ep) = raw_endpoints();
    let receiver = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (_, mut recv) = conn.accept_bi().await.unwrap();
        let mut got = 0;
        while let Ok(Some(f)) = read_frame(&mut recv, MAX_FRAME).await {
            got += f.len();
        }
        got
    });
    let conn = connect(&ep, addr, "coordinator").await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let chunk = vec![7u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..bytes / chunk.len() {
        write_frame(&mut send, &chunk, MAX_FRAME).await.unwrap();
    }
    send.finish().unwrap();
    let got = receiver.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, bytes / chunk.len() * chunk.len());
    got as f64 / secs / 1e6
}

/// n raw QUIC connections on loopback with the federation's QUIC settings (mutual
/// TLS), server side and client side, and the endpoints that keep them open.
struct RawLinks {
    servers: Vec<quinn::Connection>,
    clients: Vec<quinn::Connection>,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

async fn raw_links(n: usize) -> RawLinks {
    let (endpoint, addr, ep) = raw_endpoints();
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..n {
        let (c, s) = tokio::join!(connect(&ep, addr, "coordinator"), async {
            endpoint.accept().await.unwrap().await.unwrap()
        });
        clients.push(c.unwrap());
        servers.push(s);
    }
    RawLinks {
        servers,
        clients,
        _endpoints: (endpoint, ep),
    }
}

/// What raw QUIC needs to move a plaintext round's bytes the way the round moves them:
/// the server sends each client `down` bytes in one frame, each client answers with
/// `up` bytes once it has them all; seconds until the server has every answer.
async fn raw_exchange(links: &RawLinks, down: &Arc<Vec<u8>>, up: &Arc<Vec<u8>>) -> f64 {
    let answering: Vec<_> = links
        .clients
        .iter()
        .map(|c| {
            let (c, up) = (c.clone(), up.clone());
            tokio::spawn(async move {
                let (mut send, mut recv) = c.accept_bi().await.unwrap();
                read_frame(&mut recv, MAX_FRAME).await.unwrap().unwrap();
                write_frame(&mut send, &up, MAX_FRAME).await.unwrap();
                send.finish().unwrap();
                let _ = send.stopped().await;
            })
        })
        .collect();
    let start = Instant::now();
    let asking: Vec<_> = links
        .servers
        .iter()
        .map(|c| {
            let (c, down) = (c.clone(), down.clone());
            tokio::spawn(async move {
                let (mut send, mut recv) = c.open_bi().await.unwrap();
                write_frame(&mut send, &down, MAX_FRAME).await.unwrap();
                read_frame(&mut recv, MAX_FRAME)
                    .await
                    .unwrap()
                    .unwrap()
                    .len()
            })
        })
        .collect();
    for a in asking {
        assert_eq!(a.await.unwrap(), up.len());
    }
    let secs = start.elapsed().as_secs_f64();
    for a in answering {
        a.await.unwrap();
    }
    secs
}

/// Timed pairs per row of the QUIC-cost comparison.
const PAIRS: usize = 7;

/// The plaintext round against raw QUIC moving the same bytes, for the given (n, m)
/// rows. Rounds and raw exchanges alternate in one process (after a warm-up of each),
/// so that a slow spell of the machine falls on both; medians of [`PAIRS`] each, and
/// the process's CPU time per round and per exchange.
async fn quic_cost(rows: Vec<(usize, usize)>) {
    println!(
        "| n | m | plaintext round | raw QUIC, same bytes | round ÷ raw | CPU per round | CPU, raw |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, m) in rows {
        let mut fed = start(n, m, Protocol::Plaintext).await;
        let traffic = fed.coordinator.traffic().clone();
        let (up0, down0) = traffic.snapshot();
        timed_round(&mut fed, n).await; // warm-up, and the bytes a round moves
        let (up1, down1) = traffic.snapshot();
        let down = Arc::new(vec![7u8; ((down1 - down0) / n as u64) as usize]);
        let up = Arc::new(vec![9u8; ((up1 - up0) / n as u64) as usize]);
        let links = raw_links(n).await;
        raw_exchange(&links, &down, &up).await; // warm-up
        let (mut rounds, mut raws) = (Vec::new(), Vec::new());
        let (mut round_cpu, mut raw_cpu) = (Some(0.0), Some(0.0));
        for _ in 0..PAIRS {
            let a = process_cpu();
            rounds.push(timed_round(&mut fed, n).await);
            let b = process_cpu();
            raws.push(raw_exchange(&links, &down, &up).await);
            let c = process_cpu();
            round_cpu = round_cpu.zip(a.zip(b)).map(|(t, (a, b))| t + b - a);
            raw_cpu = raw_cpu.zip(b.zip(c)).map(|(t, (b, c))| t + c - b);
        }
        fed.shutdown().await.unwrap();
        let (round, raw) = (median(rounds), median(raws));
        let secs = |cpu: Option<f64>| {
            cpu.map_or("n/a".to_string(), |c| format!("{:.3} s", c / PAIRS as f64))
        };
        println!(
            "| {n} | {m} | {round:.3} s | {raw:.3} s | {:.2}× | {} | {} |",
            round / raw,
            secs(round_cpu),
            secs(raw_cpu),
        );
    }
}

fn main() {
    // As `tessera coordinator` and `tessera site` do (every party here shares it).
    tessera_fl::allocator::retain_freed_buffers();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    run(&rt);
    // The federations' checkpoints, transcripts and PKI (megabytes each) go with the run.
    for n in [3, 10, 50] {
        let _ = std::fs::remove_dir_all(federation_dir(n));
    }
    if let Ok(row) = std::env::var("TESSERA_BENCH_QUIC_COST")
        && let Some((n, _)) = row.split_once('x')
        && let Ok(n) = n.parse::<usize>()
    {
        let _ = std::fs::remove_dir_all(federation_dir(n));
    }
}

fn run(rt: &tokio::runtime::Runtime) {
    // `1`: the three standard rows; `NxM` (e.g. `10x1000000`): that row alone.
    match std::env::var("TESSERA_BENCH_QUIC_COST").as_deref() {
        Ok("1") => {
            let rows = vec![(10, 100_000), (10, 1_000_000), (50, 1_000_000)];
            return rt.block_on(quic_cost(rows));
        }
        Ok(row) => {
            let parsed = row
                .split_once('x')
                .and_then(|(n, m)| Some((n.parse().ok()?, m.parse().ok()?)));
            let Some(row) = parsed else {
                eprintln!("TESSERA_BENCH_QUIC_COST={row}: use 1, or NxM such as 10x1000000");
                std::process::exit(2);
            };
            return rt.block_on(quic_cost(vec![row]));
        }
        Err(_) => {}
    }
    rt.block_on(async {
        println!("raw single-stream QUIC over loopback (mutual TLS, 1 MiB frames, 256 MiB): {:.0} MB/s", raw_throughput(256 << 20).await);
        println!();
        println!("| n | m | protocol | round wall time | up (sites → coordinator) | down | time vs plaintext | up bytes vs plaintext | coordinator work | slowest site's work | critical path | critical path vs plaintext |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for n in [3, 10, 50] {
            for m in [100_000, 1_000_000] {
                let plain = round(n, m, Protocol::Plaintext).await;
                for (name, protocol) in [("plaintext", Protocol::Plaintext), ("SecAgg", Protocol::Secagg), ("SecAgg+", Protocol::SecaggPlus)] {
                    let r = if protocol == Protocol::Plaintext { plain } else { round(n, m, protocol).await };
                    println!(
                        "| {n} | {m} | {name} | {:.3} s | {:.2} MB | {:.2} MB | {:.2}× | {:.3}× | {:.3} s | {:.3} s | {:.3} s | {:.2}× |",
                        r.wall,
                        r.up as f64 / 1e6,
                        r.down as f64 / 1e6,
                        r.wall / plain.wall,
                        r.up as f64 / plain.up as f64,
                        r.coordinator,
                        r.site,
                        r.critical_path(),
                        r.critical_path() / plain.critical_path(),
                    );
                }
            }
        }
    });
}
