//! Helpers shared by the CLI's end-to-end tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

/// A UDP port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `tessera` with `args` and asserts it succeeded.
pub fn run(args: &[&str]) {
    let ok = tessera()
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "{args:?}");
}

/// A PKI in `dir`: a CA, the coordinator's certificate and one per site (ids in order).
pub fn pki(dir: &Path, sites: &[&str]) {
    let d = dir.to_str().unwrap();
    run(&["pki", "init", "--dir", d]);
    run(&["pki", "issue", "--dir", d, "--coordinator"]);
    for (i, site) in sites.iter().enumerate() {
        run(&[
            "pki",
            "issue",
            "--dir",
            d,
            "--site",
            site,
            "--id",
            &i.to_string(),
        ]);
    }
}

/// Starts `tessera` with `args`, capturing its output.
pub fn spawn(args: &[&str]) -> Child {
    tessera()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child; (exit code, stdout then stderr).
pub fn output(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}
