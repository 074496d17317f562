//! One mask stream for 10^6 coordinates against `openssl speed` for the same cipher and
//! the same bytes, in one run: the target is ≤ 1.3× OpenSSL's time.
//!
//! `cargo bench -p tessera-secagg --bench mask` prints, for AES-256-CTR (the default
//! generator) and ChaCha20, the median time of one single-threaded mask stream added
//! into a 10^6-coordinate vector, the raw keystream alone, and OpenSSL's single-thread
//! rate from `openssl speed -evp <cipher> -bytes 16384` (skipped, saying so, when the
//! `openssl` command is missing). A last row times RustCrypto's `aes` + `ctr` in the
//! same mask loop, the pure-Rust alternative to AWS-LC that Tessera compared.

mod common;

use std::hint::black_box;
use std::process::Command;
use tessera_secagg::MaskPrg;
use tessera_secagg::crypto::{MaskSeed, add_mask_stream, raw_keystream};

const COORDINATES: usize = 1_000_000;
const REPEATS: usize = 301;

fn median_seconds(f: impl FnMut()) -> f64 {
    common::median_seconds(20, REPEATS, f)
}

/// OpenSSL's rate in bytes per second for `cipher` on 16 KiB blocks, one thread.
fn openssl_rate(cipher: &str) -> Result<f64, String> {
    let out = Command::new("openssl")
        .args(["speed", "-evp", cipher, "-bytes", "16384", "-seconds", "2"])
        .output()
        .map_err(|e| format!("openssl: {e} (install the openssl package)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line is "<name> <rate>k" in thousands of bytes per second.
    let last = text.lines().last().unwrap_or("");
    let rate = last
        .split_whitespace()
        .last()
        .and_then(|w| w.strip_suffix('k'))
        .and_then(|w| w.parse::<f64>().ok())
        .ok_or_else(|| format!("openssl speed printed no rate: {last:?}"))?;
    Ok(rate * 1000.0)
}

/// RustCrypto's AES-256-CTR in Tessera's mask loop (16 KiB of keystream at a time).
fn rustcrypto_mask(acc: &mut [u32], key: &[u8; 32]) {
    use aes::cipher::{KeyIvInit, StreamCipher};
    let mut cipher = ctr::Ctr128BE::<aes::Aes256>::new(key.into(), &[0u8; 16].into());
    let mut buf = [0u8; 4096 * 4];
    for chunk in acc.chunks_mut(4096) {
        let bytes = &mut buf[..chunk.len() * 4];
        bytes.fill(0);
        cipher.apply_keystream(bytes);
        for (a, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            *a = a.wrapping_add(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
    }
}

fn main() {
    let bytes = (COORDINATES * 4) as f64;
    let seed = MaskSeed::from_bytes([7; 32]);
    let mut acc = vec![0u32; COORDINATES];
    let mut raw = vec![0u8; COORDINATES * 4];
    println!(
        "one mask stream, {COORDINATES} coordinates ({:.0} MB), one thread, median of {REPEATS}",
        bytes / 1e6
    );
    println!(
        "generator   | mask stream added | raw keystream | openssl speed, same bytes | mask / openssl"
    );
    for (prg, cipher) in [
        (MaskPrg::Aes256Ctr, "aes-256-ctr"),
        (MaskPrg::ChaCha20, "chacha20"),
    ] {
        let mask = median_seconds(|| add_mask_stream(black_box(&mut acc), prg, &seed));
        let stream = median_seconds(|| raw_keystream(black_box(&mut raw), prg, &seed));
        let (openssl, ratio) = match openssl_rate(cipher) {
            Ok(rate) => {
                let t = bytes / rate;
                (
                    format!("{:.3} ms ({:.2} GB/s)", t * 1e3, rate / 1e9),
                    format!("{:.2}×", mask / t),
                )
            }
            Err(e) => (format!("not measured: {e}"), "–".into()),
        };
        println!(
            "{:<11} | {:.3} ms ({:.2} GB/s) | {:.3} ms ({:.2} GB/s) | {openssl} | {ratio}",
            prg.name(),
            mask * 1e3,
            bytes / mask / 1e9,
            stream * 1e3,
            bytes / stream / 1e9,
        );
    }
    let rc = median_seconds(|| rustcrypto_mask(black_box(&mut acc), &[7; 32]));
    println!(
        "RustCrypto aes + ctr, same mask loop (not used by Tessera): {:.3} ms ({:.2} GB/s)",
        rc * 1e3,
        bytes / rc / 1e9
    );
}
