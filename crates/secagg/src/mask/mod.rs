//! Mask expansion: a 256-bit seed becomes a stream of `u32` words added to (or
//! subtracted from) a vector mod 2^32.
//!
//! The generator is a signed round parameter ([`MaskPrg`], inside the parameters'
//! digest), so every party of a round expands seeds the same way; a party shown another
//! generator has another digest and fails the first signature check. AES-256 in counter
//! mode is the default: every current server CPU has AES instructions, which make it
//! several times faster than a software ChaCha20 (`crates/secagg/README.md`, mask
//! bench). ChaCha20 stays for machines without them.
//!
//! Both are used as stream ciphers with a fixed IV (zero) and the seed as the full
//! 256-bit key: every seed is derived for one ordered pair (or one site) and one round,
//! so no key is ever used for two streams.

use aws_lc_rs::cipher::{AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ring::MaskSign;

#[cfg(target_arch = "x86_64")]
mod vaes;

/// The pseudorandom generator that expands mask seeds; part of the round parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MaskPrg {
    /// AES-256-CTR keyed by the 256-bit seed, counter block 0, 1, 2, … (hardware AES).
    #[default]
    #[serde(rename = "aes-256-ctr")]
    Aes256Ctr,
    /// ChaCha20 (RFC 8439) keyed by the seed, nonce 0, block counter from 0.
    #[serde(rename = "chacha20")]
    ChaCha20,
}

impl MaskPrg {
    /// The name used in configurations and reports.
    pub fn name(self) -> &'static str {
        match self {
            MaskPrg::Aes256Ctr => "aes-256-ctr",
            MaskPrg::ChaCha20 => "chacha20",
        }
    }
}

impl std::str::FromStr for MaskPrg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aes-256-ctr" => Ok(MaskPrg::Aes256Ctr),
            "chacha20" => Ok(MaskPrg::ChaCha20),
            other => Err(format!(
                "mask PRG \"{other}\": use \"aes-256-ctr\" (default) or \"chacha20\""
            )),
        }
    }
}

/// A 256-bit key for one mask stream; zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MaskSeed([u8; 32]);

impl MaskSeed {
    pub(crate) fn new(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(*bytes)
    }

    /// A seed from raw bytes, for benchmarks and tests of the expansion itself.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// One mask stream to add or subtract.
pub(crate) struct MaskJob {
    pub seed: MaskSeed,
    pub sign: MaskSign,
}

/// Words of keystream generated per step; 16 KiB stays in L1/L2 with the accumulator.
const KEYSTREAM_WORDS: usize = 4096;
/// Coordinates per parallel work item when applying many streams.
const PARALLEL_CHUNK_WORDS: usize = 1 << 16;

/// A keystream positioned at a byte offset.
pub(crate) enum Keystream {
    /// AWS-LC's AES-256-CTR (hardware AES, VAES where present; the key schedule is
    /// zeroized on drop) and the next 128-bit counter block.
    Aes {
        key: Box<EncryptingKey>,
        block: u128,
    },
    ChaCha(Box<ChaCha20>),
}

impl Keystream {
    /// Positioned at `byte_offset`, which for AES must be a whole number of 16-byte
    /// blocks (callers start at 0 or at a multiple of `PARALLEL_CHUNK_WORDS` words).
    pub(crate) fn new(prg: MaskPrg, seed: &MaskSeed, byte_offset: u64) -> Self {
        match prg {
            MaskPrg::Aes256Ctr => {
                debug_assert_eq!(byte_offset % 16, 0, "AES streams start on a block");
                // Fails only for a key of the wrong length; the seed is 32 bytes by type.
                let key = UnboundCipherKey::new(&AES_256, &seed.0)
                    .and_then(EncryptingKey::ctr)
                    .expect("a 32-byte key is a valid AES-256 key");
                Keystream::Aes {
                    key: Box::new(key),
                    block: u128::from(byte_offset / 16),
                }
            }
            MaskPrg::ChaCha20 => {
                let mut c = ChaCha20::new(&seed.0.into(), &[0u8; 12].into());
                c.seek(byte_offset);
                Keystream::ChaCha(Box::new(c))
            }
        }
    }

    /// Overwrites `buf` with the next `buf.len()` keystream bytes (for AES, a whole
    /// number of blocks except in the last call).
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        match self {
            Keystream::Aes { key, block } => {
                buf.fill(0);
                let iv = EncryptionContext::Iv128(block.to_be_bytes().into());
                // CTR encryption of a buffer in place cannot fail for any length.
                key.less_safe_encrypt(buf, iv)
                    .expect("AES-CTR encrypts any buffer in place");
                *block += buf.len().div_ceil(16) as u128;
            }
            Keystream::ChaCha(c) => c.write_keystream(buf),
        }
    }
}

/// Adds (or subtracts) the keystream of `seed`, read as little-endian `u32` words
/// starting at word `offset` (a multiple of 4), into `acc` (mod 2^32). Single-threaded.
/// AES streams use VAES where the CPU has it (module `vaes`), AWS-LC otherwise.
pub(crate) fn apply_mask_stream(
    acc: &mut [u32],
    prg: MaskPrg,
    seed: &MaskSeed,
    sign: MaskSign,
    offset: usize,
) {
    debug_assert_eq!(offset % 4, 0, "streams start on a 16-byte block");
    #[cfg(target_arch = "x86_64")]
    if prg == MaskPrg::Aes256Ctr
        && let Some(width) = vaes::width()
        && vaes::apply(width, acc, &seed.0, sign, offset as u64 / 4)
    {
        return;
    }
    apply_keystream(
        acc,
        &mut Keystream::new(prg, seed, (offset as u64) * 4),
        sign,
    );
}

/// Adds (or subtracts) the words of `stream` into `acc`, a buffer of keystream at a time.
fn apply_keystream(acc: &mut [u32], stream: &mut Keystream, sign: MaskSign) {
    let mut buf = [0u8; KEYSTREAM_WORDS * 4];
    for chunk in acc.chunks_mut(KEYSTREAM_WORDS) {
        let bytes = &mut buf[..chunk.len() * 4];
        stream.fill(bytes);
        let words = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match sign {
            MaskSign::Add => chunk
                .iter_mut()
                .zip(words)
                .for_each(|(a, w)| *a = a.wrapping_add(w)),
            MaskSign::Sub => chunk
                .iter_mut()
                .zip(words)
                .for_each(|(a, w)| *a = a.wrapping_sub(w)),
        }
    }
    buf.zeroize();
}

/// Applies many mask streams, splitting the coordinates across the rayon pool so that
/// each thread streams every job over a cache-resident slice of the accumulator.
pub(crate) fn apply_mask_streams(acc: &mut [u32], prg: MaskPrg, jobs: &[MaskJob]) {
    acc.par_chunks_mut(PARALLEL_CHUNK_WORDS)
        .enumerate()
        .for_each(|(i, slice)| {
            for job in jobs {
                apply_mask_stream(slice, prg, &job.seed, job.sign, i * PARALLEL_CHUNK_WORDS);
            }
        });
}

/// Adds one mask stream to `acc` on the calling thread (public for benchmarks).
pub fn add_mask_stream(acc: &mut [u32], prg: MaskPrg, seed: &MaskSeed) {
    apply_mask_stream(acc, prg, seed, MaskSign::Add, 0);
}

/// Fills `out` with the raw keystream of `seed` (the benchmark's speed limit).
pub fn raw_keystream(out: &mut [u8], prg: MaskPrg, seed: &MaskSeed) {
    Keystream::new(prg, seed, 0).fill(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockEncrypt, KeyInit};

    #[test]
    fn chacha20_matches_rfc8439_keystream() {
        // RFC 8439 §A.1 test vector #1: all-zero key and nonce, counter 0.
        let mut out = [0u8; 64];
        raw_keystream(&mut out, MaskPrg::ChaCha20, &MaskSeed([0u8; 32]));
        assert_eq!(
            &out[..16],
            &[
                0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90, 0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86,
                0xbd, 0x28
            ]
        );
    }

    #[test]
    fn aes_256_ctr_is_the_block_cipher_on_counters_from_zero() {
        // FIPS-197 §C.3: the block cipher itself.
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let aes = aes::Aes256::new(&key.into());
        let mut block = aes::Block::from(std::array::from_fn::<u8, 16, _>(|i| (i * 0x11) as u8));
        aes.encrypt_block(&mut block);
        assert_eq!(
            block.as_slice(),
            &[
                0x8e, 0xa2, 0xb7, 0xca, 0x51, 0x67, 0x45, 0xbf, 0xea, 0xfc, 0x49, 0x90, 0x4b, 0x49,
                0x60, 0x89
            ]
        );
        // The stream is E_k(0), E_k(1), E_k(2), … with big-endian 128-bit counters.
        let mut stream = [0u8; 48];
        raw_keystream(&mut stream, MaskPrg::Aes256Ctr, &MaskSeed(key));
        for (i, chunk) in stream.chunks(16).enumerate() {
            let mut b = aes::Block::from((i as u128).to_be_bytes());
            aes.encrypt_block(&mut b);
            assert_eq!(chunk, b.as_slice(), "block {i}");
        }
        // A mask stream adds those bytes as little-endian words, by whichever
        // implementation this CPU runs (VAES or AWS-LC).
        let mut words = vec![0u32; 12];
        add_mask_stream(&mut words, MaskPrg::Aes256Ctr, &MaskSeed(key));
        let expected: Vec<u32> = stream
            .chunks(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(words, expected);
    }

    #[test]
    fn chunked_parallel_streams_equal_sequential() {
        for prg in [MaskPrg::Aes256Ctr, MaskPrg::ChaCha20] {
            let n = PARALLEL_CHUNK_WORDS * 2 + 777;
            let seeds = [[1u8; 32], [2u8; 32], [3u8; 32]];
            let signs = [MaskSign::Add, MaskSign::Sub, MaskSign::Add];
            let mut seq = vec![5u32; n];
            for (s, sign) in seeds.iter().zip(signs) {
                apply_mask_stream(&mut seq, prg, &MaskSeed(*s), sign, 0);
            }
            let jobs: Vec<MaskJob> = seeds
                .iter()
                .zip(signs)
                .map(|(s, sign)| MaskJob {
                    seed: MaskSeed(*s),
                    sign,
                })
                .collect();
            let mut par = vec![5u32; n];
            apply_mask_streams(&mut par, prg, &jobs);
            assert_eq!(seq, par, "{prg:?}");
            // and adding then subtracting the same stream is the identity
            let mut v = vec![9u32; 1000];
            apply_mask_stream(&mut v, prg, &MaskSeed([4u8; 32]), MaskSign::Add, 0);
            assert_ne!(v, vec![9u32; 1000]);
            apply_mask_stream(&mut v, prg, &MaskSeed([4u8; 32]), MaskSign::Sub, 0);
            assert_eq!(v, vec![9u32; 1000]);
        }
    }

    #[test]
    fn the_two_generators_give_different_masks() {
        let (mut a, mut c) = (vec![0u32; 64], vec![0u32; 64]);
        add_mask_stream(&mut a, MaskPrg::Aes256Ctr, &MaskSeed([9; 32]));
        add_mask_stream(&mut c, MaskPrg::ChaCha20, &MaskSeed([9; 32]));
        assert_ne!(a, c);
        assert_eq!("chacha20".parse::<MaskPrg>(), Ok(MaskPrg::ChaCha20));
        assert!(
            "aes"
                .parse::<MaskPrg>()
                .unwrap_err()
                .contains("aes-256-ctr")
        );
    }
}
