//! `tessera simulate` end to end: the binary runs rounds and checks its own aggregate.

use std::process::Command;

fn tessera(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

#[test]
fn simulate_reports_exact_sums_for_both_protocols() {
    for protocol in ["secagg", "secagg-plus"] {
        let out = tessera(&[
            "simulate",
            "--sites",
            "12",
            "--dim",
            "500",
            "--rounds",
            "2",
            "--dropout",
            "0.1",
            "--protocol",
            protocol,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{protocol}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rounds: Vec<&str> = stdout
            .lines()
            .filter(|l| {
                l.contains(" | ") && l.trim_start().starts_with(|c: char| c.is_ascii_digit())
            })
            .collect();
        assert_eq!(rounds.len(), 2, "{stdout}");
        for line in rounds {
            assert!(
                line.contains("within bound") || line.contains("aborted"),
                "{line}"
            );
        }
    }
}

#[test]
fn infeasible_settings_fail_with_a_clear_message() {
    let out = tessera(&[
        "simulate",
        "--sites",
        "10",
        "--dropout",
        "0.6",
        "--protocol",
        "secagg",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Lower the dropout or corruption rate"),
        "{stderr}"
    );
    let out = tessera(&["simulate", "--bits", "40"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bits: modulus of 40 bits is not supported")
    );
}

#[test]
fn five_hundred_sites_through_the_orchestration() {
    let out = tessera(&[
        "simulate",
        "--sites",
        "500",
        "--dim",
        "100",
        "--rounds",
        "1",
        "--dropout",
        "0",
        "--phase-timeout-ms",
        "60000",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("500 of 500 | within bound"), "{stdout}");
}

#[test]
fn simulate_over_quic_on_loopback() {
    let out = tessera(&[
        "simulate",
        "--quic",
        "--sites",
        "6",
        "--dim",
        "200",
        "--rounds",
        "2",
        "--dropout",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sites connect over QUIC with mutual TLS on 127.0.0.1"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("6 of 6   | within bound").count(),
        2,
        "{stdout}"
    );
}

/// The contributors of each round depend on the seed alone: the same simulation in
/// memory and over QUIC (different timing, different load) gives the same columns, and
/// aborted rounds make the exit code 2.
#[test]
fn results_do_not_depend_on_timing_and_aborts_exit_2() {
    let args = [
        "simulate",
        "--sites",
        "20",
        "--dim",
        "200",
        "--rounds",
        "4",
        "--dropout",
        "0.3",
        "--protocol",
        "secagg",
        "--seed",
        "1",
    ];
    let columns = |out: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(" | ")
            })
            .map(|l| l.split(" | ").take(2).collect::<Vec<_>>().join("|"))
            .collect()
    };
    let memory = tessera(&args);
    let mut quic_args = args.to_vec();
    quic_args.push("--quic");
    let quic = tessera(&quic_args);
    let (m, q) = (columns(&memory), columns(&quic));
    assert_eq!(m.len(), 4, "{}", String::from_utf8_lossy(&memory.stdout));
    assert_eq!(m, q);
    assert!(m.iter().any(|c| c.contains("0 of 20")), "{m:?}");
    assert_eq!(memory.status.code(), Some(2));
    assert_eq!(quic.status.code(), Some(2));
}
