//! Vectors over the ring Z_{2^b}, 8 ≤ b ≤ 32.
//!
//! Elements are held in `u32` words and all arithmetic is done modulo 2^32, which is
//! correct modulo 2^b because 2^b divides 2^32; values are reduced to b bits whenever
//! they leave this module. Plain and masked vectors are distinct types so that an
//! unmasked input can never be sent where a masked one is expected.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The modulus 2^b of the aggregation ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Modulus {
    bits: u8,
}

/// A modulus outside the supported range.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("modulus of {0} bits is not supported: choose between 8 and 32 bits")]
pub struct UnsupportedModulus(pub u8);

impl Modulus {
    pub const MIN_BITS: u8 = 8;
    pub const MAX_BITS: u8 = 32;

    pub fn new(bits: u8) -> Result<Self, UnsupportedModulus> {
        if (Self::MIN_BITS..=Self::MAX_BITS).contains(&bits) {
            Ok(Self { bits })
        } else {
            Err(UnsupportedModulus(bits))
        }
    }

    pub fn bits(self) -> u8 {
        self.bits
    }

    /// Bit mask selecting the low b bits.
    pub fn mask(self) -> u32 {
        if self.bits == 32 {
            u32::MAX
        } else {
            (1u32 << self.bits) - 1
        }
    }

    /// Bytes used per element on the wire.
    pub fn wire_width(self) -> usize {
        usize::from(self.bits).div_ceil(8)
    }
}

impl<'de> Deserialize<'de> for Modulus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            bits: u8,
        }
        let raw = Raw::deserialize(d)?;
        Modulus::new(raw.bits).map_err(serde::de::Error::custom)
    }
}

/// An unmasked vector of ring elements: a site's encoded input, or the unmasked sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainVector {
    modulus: Modulus,
    words: Vec<u32>,
}

impl PlainVector {
    /// Reduces every word modulo 2^b.
    pub fn new(modulus: Modulus, mut words: Vec<u32>) -> Self {
        let mask = modulus.mask();
        for w in &mut words {
            *w &= mask;
        }
        Self { modulus, words }
    }

    pub fn zeros(modulus: Modulus, len: usize) -> Self {
        Self {
            modulus,
            words: vec![0; len],
        }
    }

    pub fn modulus(&self) -> Modulus {
        self.modulus
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.words
    }

    pub fn into_words(self) -> Vec<u32> {
        self.words
    }

    /// Element-wise sum modulo 2^b (a reference for tests and plaintext baselines).
    pub fn add_assign(&mut self, other: &PlainVector) {
        let mask = self.modulus.mask();
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a = a.wrapping_add(*b) & mask;
        }
    }
}

/// A masked input: uniformly distributed in Z_{2^b}^m to anyone lacking the masks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedVector {
    modulus: Modulus,
    words: Vec<u32>,
}

impl MaskedVector {
    /// Wraps words that already carry masks; reduces them modulo 2^b.
    pub(crate) fn from_masked_words(modulus: Modulus, mut words: Vec<u32>) -> Self {
        let mask = modulus.mask();
        for w in &mut words {
            *w &= mask;
        }
        Self { modulus, words }
    }

    pub fn modulus(&self) -> Modulus {
        self.modulus
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.words
    }
}

/// Wire form: the modulus and the elements packed little-endian in ⌈b/8⌉ bytes each.
/// Decoding borrows the packed bytes from the message where the format allows it.
#[derive(Serialize, Deserialize)]
struct PackedWire<'a> {
    bits: u8,
    #[serde(borrow, with = "serde_bytes")]
    bytes: std::borrow::Cow<'a, [u8]>,
}

/// `words` little-endian in `W` bytes each: a fixed width per call, so that the copy
/// of each element compiles to a few moves instead of a variable-length copy.
fn pack<const W: usize>(words: &[u32], out: &mut [u8]) {
    for (dst, w) in out.chunks_exact_mut(W).zip(words) {
        dst.copy_from_slice(&w.to_le_bytes()[..W]);
    }
}

/// The inverse of [`pack`]; `Err` carries the first element wider than `mask`.
fn unpack<const W: usize>(bytes: &[u8], mask: u32) -> Result<Vec<u32>, u32> {
    let words: Vec<u32> = bytes
        .chunks_exact(W)
        .map(|c| {
            let mut le = [0u8; 4];
            le[..W].copy_from_slice(c);
            u32::from_le_bytes(le)
        })
        .collect();
    // One pass without branches decides; only a bad vector is searched again.
    let excess = words.iter().fold(0, |acc, w| acc | (w & !mask));
    if excess != 0 {
        let first = words.iter().find(|w| *w & !mask != 0);
        return Err(first.copied().unwrap_or(excess));
    }
    Ok(words)
}

fn serialize_packed<S: Serializer>(
    modulus: Modulus,
    words: &[u32],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut bytes = vec![0u8; words.len() * modulus.wire_width()];
    match modulus.wire_width() {
        1 => pack::<1>(words, &mut bytes),
        2 => pack::<2>(words, &mut bytes),
        3 => pack::<3>(words, &mut bytes),
        _ => pack::<4>(words, &mut bytes),
    }
    PackedWire {
        bits: modulus.bits,
        bytes: bytes.into(),
    }
    .serialize(s)
}

fn deserialize_packed<'de, D: Deserializer<'de>>(d: D) -> Result<(Modulus, Vec<u32>), D::Error> {
    use serde::de::Error;
    let wire = PackedWire::deserialize(d)?;
    let modulus = Modulus::new(wire.bits).map_err(D::Error::custom)?;
    let width = modulus.wire_width();
    if wire.bytes.len() % width != 0 {
        return Err(D::Error::custom(format!(
            "packed vector of {} bytes is not a whole number of {width}-byte elements",
            wire.bytes.len()
        )));
    }
    let mask = modulus.mask();
    let words = match width {
        1 => unpack::<1>(&wire.bytes, mask),
        2 => unpack::<2>(&wire.bytes, mask),
        3 => unpack::<3>(&wire.bytes, mask),
        _ => unpack::<4>(&wire.bytes, mask),
    }
    .map_err(|w| {
        D::Error::custom(format!(
            "element {w:#x} does not fit in {} bits",
            modulus.bits
        ))
    })?;
    Ok((modulus, words))
}

impl Serialize for MaskedVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_packed(self.modulus, &self.words, s)
    }
}

impl<'de> Deserialize<'de> for MaskedVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (modulus, words) = deserialize_packed(d)?;
        Ok(Self { modulus, words })
    }
}

/// Plain vectors travel only in the plaintext baseline (no secure aggregation).
impl Serialize for PlainVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_packed(self.modulus, &self.words, s)
    }
}

impl<'de> Deserialize<'de> for PlainVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (modulus, words) = deserialize_packed(d)?;
        Ok(Self { modulus, words })
    }
}

/// Adds (`Add`) or subtracts (`Sub`) a mask stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MaskSign {
    Add,
    Sub,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coordinator decodes every site's vector: the packed bytes are read where they
    /// lie in the message, not copied out first.
    #[test]
    fn decoding_borrows_the_packed_bytes() {
        let v = PlainVector::zeros(Modulus::new(24).unwrap(), 1000);
        let bytes = postcard::to_allocvec(&v).unwrap();
        let wire: PackedWire = postcard::from_bytes(&bytes).unwrap();
        assert!(matches!(wire.bytes, std::borrow::Cow::Borrowed(_)));
        assert_eq!(wire.bytes.len(), 3000);
    }

    #[test]
    fn modulus_bounds() {
        assert!(Modulus::new(7).is_err());
        assert!(Modulus::new(33).is_err());
        assert_eq!(Modulus::new(8).unwrap().mask(), 0xff);
        assert_eq!(Modulus::new(20).unwrap().mask(), 0xf_ffff);
        assert_eq!(Modulus::new(32).unwrap().mask(), u32::MAX);
        assert_eq!(Modulus::new(20).unwrap().wire_width(), 3);
    }

    #[test]
    fn packed_roundtrip_and_rejects_overwide_elements() {
        for bits in [8u8, 12, 16, 20, 24, 31, 32] {
            let m = Modulus::new(bits).unwrap();
            let v = MaskedVector::from_masked_words(m, vec![0, 1, u32::MAX, 0x1234_5678]);
            let bytes = postcard::to_allocvec(&v).unwrap();
            let back: MaskedVector = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, v);
        }
        // 12-bit modulus, one element 0x1fff (13 bits) in 2 bytes.
        let forged = postcard::to_allocvec(&PackedWire {
            bits: 12,
            bytes: vec![0xff, 0x1f].into(),
        })
        .unwrap();
        assert!(postcard::from_bytes::<MaskedVector>(&forged).is_err());
        let ragged = postcard::to_allocvec(&PackedWire {
            bits: 16,
            bytes: vec![1, 2, 3].into(),
        })
        .unwrap();
        assert!(postcard::from_bytes::<MaskedVector>(&ragged).is_err());
        let bad_mod = postcard::to_allocvec(&PackedWire {
            bits: 40,
            bytes: vec![].into(),
        })
        .unwrap();
        assert!(postcard::from_bytes::<MaskedVector>(&bad_mod).is_err());
    }

    #[test]
    fn packing_is_little_endian_in_the_width_and_refuses_a_bad_element_anywhere() {
        for bits in [8u8, 12, 20, 32] {
            let m = Modulus::new(bits).unwrap();
            let words: Vec<u32> = (0..1000u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let v = PlainVector::new(m, words);
            let mut expected = Vec::new();
            for w in v.as_slice() {
                expected.extend_from_slice(&w.to_le_bytes()[..m.wire_width()]);
            }
            let bytes = postcard::to_allocvec(&v).unwrap();
            let wire: PackedWire = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(wire.bytes, expected, "{bits} bits");
            assert_eq!(postcard::from_bytes::<PlainVector>(&bytes).unwrap(), v);
        }
        // 12 bits in 2 bytes; element 777 of 1000 is 0x1000, 13 bits wide.
        let mut bytes = vec![0u8; 2000];
        bytes[777 * 2 + 1] = 0x10;
        let forged = postcard::to_allocvec(&PackedWire {
            bits: 12,
            bytes: bytes.into(),
        })
        .unwrap();
        assert!(postcard::from_bytes::<PlainVector>(&forged).is_err());
        assert_eq!(
            unpack::<2>(&[0, 0, 0, 0x10, 0xff, 0xff], 0xfff),
            Err(0x1000)
        );
    }
}
