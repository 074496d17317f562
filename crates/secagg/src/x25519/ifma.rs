//! Eight X25519 ladders at once with AVX-512 IFMA: one 64-bit lane per ladder, field
//! elements in radix 2^51 (five limbs), products from the 52-bit multiply-adds.
//!
//! **Limb bounds.** IFMA reads only the low 52 bits of each factor, so every factor's
//! limbs must stay below 2^52. Every operation here returns *loose* limbs, below
//! 2^51 + 2^16, from one carry pass over limbs below 2^62:
//! - `add`: sums of loose limbs are below 2^52 + 2^17.
//! - `sub` adds 2p first, whose limbs (2^52 − 38 and 2^52 − 2) exceed any loose limb, so
//!   no limb goes negative; the result is below 2^53.
//! - `mul`: a product of loose limbs has a low half below 2^52 and a high half below
//!   2^50.01. A column gathers at most five of each, the high halves doubled (they sit
//!   one bit past the next 51-bit column), so columns stay below 2^55, and below 2^60
//!   after the upper five fold down times 19 (2^255 ≡ 19 mod p).
//!
//! All eight ladders use one scalar (a site agreeing with eight peers), so the swap
//! decisions are the same in every lane; they are still made without branches or
//! secret-dependent addresses. The scalar's copy and the stored limbs are zeroized;
//! copies the compiler leaves in vector registers and on the stack are not.

use core::arch::x86_64::*;
use zeroize::Zeroizing;

const MASK51: u64 = (1 << 51) - 1;

/// Eight field elements, one per lane.
#[derive(Clone, Copy)]
struct Fe([__m512i; 5]);

#[inline(always)]
fn splat(x: u64) -> __m512i {
    // SAFETY: `_mm512_set1_epi64` only needs AVX-512F, which every caller has enabled.
    unsafe { _mm512_set1_epi64(x as i64) }
}

/// One parallel carry pass: limb i keeps its low 51 bits and passes the rest to limb
/// i + 1; limb 4's carry comes back to limb 0 times 19. Inputs below 2^62 come out
/// loose: limb 0 below 2^51 + 19·2^11, the others below 2^51 + 2^11.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn carry(z: [__m512i; 5]) -> Fe {
    let m = splat(MASK51);
    let c = z.map(|l| _mm512_srli_epi64::<51>(l));
    let l = z.map(|l| _mm512_and_si512(l, m));
    let c19 = times19(c[4]);
    Fe([
        _mm512_add_epi64(l[0], c19),
        _mm512_add_epi64(l[1], c[0]),
        _mm512_add_epi64(l[2], c[1]),
        _mm512_add_epi64(l[3], c[2]),
        _mm512_add_epi64(l[4], c[3]),
    ])
}

/// 19x = 16x + 2x + x (a 64-bit multiply costs three uops).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn times19(x: __m512i) -> __m512i {
    let x16 = _mm512_slli_epi64::<4>(x);
    let x2 = _mm512_slli_epi64::<1>(x);
    _mm512_add_epi64(_mm512_add_epi64(x16, x2), x)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add(a: &Fe, b: &Fe) -> Fe {
    carry(core::array::from_fn(|i| _mm512_add_epi64(a.0[i], b.0[i])))
}

/// a − b + 2p.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn sub(a: &Fe, b: &Fe) -> Fe {
    let two_p = |i: usize| {
        splat(if i == 0 {
            (1 << 52) - 38
        } else {
            (1 << 52) - 2
        })
    };
    carry(core::array::from_fn(|i| {
        _mm512_sub_epi64(_mm512_add_epi64(a.0[i], two_p(i)), b.0[i])
    }))
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul(a: &Fe, b: &Fe) -> Fe {
    let zero = _mm512_setzero_si512();
    let mut lo = [zero; 9];
    let mut hi = [zero; 9];
    for i in 0..5 {
        for j in 0..5 {
            lo[i + j] = _mm512_madd52lo_epu64(lo[i + j], a.0[i], b.0[j]);
            hi[i + j] = _mm512_madd52hi_epu64(hi[i + j], a.0[i], b.0[j]);
        }
    }
    fold(lo, hi)
}

/// Column k of a product is lo[k] + 2·hi[k − 1] (the high half of a 51-bit column's
/// product sits 52 bits up, one bit past the next column); columns 5–9 fold into 0–4.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn fold(lo: [__m512i; 9], hi: [__m512i; 9]) -> Fe {
    let column = |k: usize| {
        let l = if k < 9 { lo[k] } else { _mm512_setzero_si512() };
        if k == 0 {
            l
        } else {
            _mm512_add_epi64(l, _mm512_slli_epi64::<1>(hi[k - 1]))
        }
    };
    carry(core::array::from_fn(|m| {
        _mm512_add_epi64(column(m), times19(column(m + 5)))
    }))
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square(a: &Fe) -> Fe {
    mul(a, a)
}

/// a · 121665 (the curve's (A − 2)/4), as a product with a one-limb factor.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_a24(a: &Fe) -> Fe {
    let c = splat(121_665);
    let zero = _mm512_setzero_si512();
    let mut lo = [zero; 9];
    let mut hi = [zero; 9];
    for i in 0..5 {
        lo[i] = _mm512_madd52lo_epu64(zero, a.0[i], c);
        hi[i] = _mm512_madd52hi_epu64(zero, a.0[i], c);
    }
    fold(lo, hi)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_times(a: &Fe, n: usize) -> Fe {
    let mut t = square(a);
    for _ in 1..n {
        t = square(&t);
    }
    t
}

/// z^(p − 2) = 1/z (0 for z = 0), by the usual chain of 254 squarings and 11 products.
#[target_feature(enable = "avx512f,avx512ifma")]
fn invert(z: &Fe) -> Fe {
    let z2 = square(z);
    let z9 = mul(&square_times(&z2, 2), z);
    let z11 = mul(&z9, &z2);
    let z_5_0 = mul(&square(&z11), &z9);
    let z_10_0 = mul(&square_times(&z_5_0, 5), &z_5_0);
    let z_20_0 = mul(&square_times(&z_10_0, 10), &z_10_0);
    let z_40_0 = mul(&square_times(&z_20_0, 20), &z_20_0);
    let z_50_0 = mul(&square_times(&z_40_0, 10), &z_10_0);
    let z_100_0 = mul(&square_times(&z_50_0, 50), &z_50_0);
    let z_200_0 = mul(&square_times(&z_100_0, 100), &z_100_0);
    let z_250_0 = mul(&square_times(&z_200_0, 50), &z_50_0);
    mul(&square_times(&z_250_0, 5), &z11)
}

/// Swaps a and b where `mask` is all ones (the same in every lane).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn cswap(mask: __m512i, a: &mut Fe, b: &mut Fe) {
    for i in 0..5 {
        let t = _mm512_and_si512(_mm512_xor_si512(a.0[i], b.0[i]), mask);
        a.0[i] = _mm512_xor_si512(a.0[i], t);
        b.0[i] = _mm512_xor_si512(b.0[i], t);
    }
}

/// Eight u-coordinates (bit 255 ignored, as RFC 7748 asks) as limbs.
fn load(us: &[[u8; 32]; 8]) -> Fe {
    let mut limbs = [[0u64; 8]; 5];
    for (lane, u) in us.iter().enumerate() {
        let w: [u64; 4] = core::array::from_fn(|i| {
            u64::from_le_bytes(u[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]))
        });
        limbs[0][lane] = w[0] & MASK51;
        limbs[1][lane] = ((w[0] >> 51) | (w[1] << 13)) & MASK51;
        limbs[2][lane] = ((w[1] >> 38) | (w[2] << 26)) & MASK51;
        limbs[3][lane] = ((w[2] >> 25) | (w[3] << 39)) & MASK51;
        limbs[4][lane] = (w[3] >> 12) & MASK51;
    }
    // SAFETY: unaligned loads of eight u64 from arrays of eight; AVX-512F is enabled by
    // every caller (this is only reached from `ladder8`).
    Fe(limbs.map(|l| unsafe { _mm512_loadu_si512(l.as_ptr().cast()) }))
}

/// The canonical encodings of eight loose elements.
fn store(a: &Fe) -> [[u8; 32]; 8] {
    let mut limbs = Zeroizing::new([[0u64; 8]; 5]);
    for (i, l) in limbs.iter_mut().enumerate() {
        // SAFETY: an unaligned store of one vector into an array of eight u64.
        unsafe { _mm512_storeu_si512(l.as_mut_ptr().cast(), a.0[i]) };
    }
    core::array::from_fn(|lane| freeze(core::array::from_fn(|i| limbs[i][lane])))
}

/// Fully reduces one element (limbs below 2^52) and encodes it, in constant time.
fn freeze(mut h: [u64; 5]) -> [u8; 32] {
    for _ in 0..2 {
        for i in 0..4 {
            h[i + 1] += h[i] >> 51;
            h[i] &= MASK51;
        }
        h[0] += 19 * (h[4] >> 51);
        h[4] &= MASK51;
    }
    // Limbs 1–4 are now below 2^51 and limb 0 below 2^51 + 19, so h < 2^255 + 19 < 2p
    // and q = ⌊(h + 19) / 2^255⌋ is 1 exactly when h ≥ p.
    let mut q = (h[0] + 19) >> 51;
    for l in &h[1..] {
        q = (l + q) >> 51;
    }
    h[0] += 19 * q;
    for i in 0..4 {
        h[i + 1] += h[i] >> 51;
        h[i] &= MASK51;
    }
    h[4] &= MASK51;
    let w = [
        h[0] | (h[1] << 51),
        (h[1] >> 13) | (h[2] << 38),
        (h[2] >> 26) | (h[3] << 25),
        (h[3] >> 39) | (h[4] << 12),
    ];
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(8).zip(w) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// X25519(scalar, u) for eight u at once (RFC 7748 §5: clamped scalar, Montgomery
/// ladder over bits 254 … 0).
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 IFMA.
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) unsafe fn ladder8(scalar: &[u8; 32], us: &[[u8; 32]; 8]) -> [[u8; 32]; 8] {
    let mut k = Zeroizing::new(*scalar);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    let zero = _mm512_setzero_si512();
    let one = Fe([splat(1), zero, zero, zero, zero]);
    let x1 = load(us);
    let (mut x2, mut z2, mut x3, mut z3) = (one, Fe([zero; 5]), x1, one);
    let mut swap = 0u64;
    for t in (0..255).rev() {
        let bit = u64::from((k[t / 8] >> (t % 8)) & 1);
        let mask = splat((swap ^ bit).wrapping_neg());
        cswap(mask, &mut x2, &mut x3);
        cswap(mask, &mut z2, &mut z3);
        swap = bit;
        let a = add(&x2, &z2);
        let aa = square(&a);
        let b = sub(&x2, &z2);
        let bb = square(&b);
        let e = sub(&aa, &bb);
        let c = add(&x3, &z3);
        let d = sub(&x3, &z3);
        let da = mul(&d, &a);
        let cb = mul(&c, &b);
        x3 = square(&add(&da, &cb));
        z3 = mul(&x1, &square(&sub(&da, &cb)));
        x2 = mul(&aa, &bb);
        z2 = mul(&e, &add(&aa, &mul_a24(&e)));
    }
    let mask = splat(swap.wrapping_neg());
    cswap(mask, &mut x2, &mut x3);
    cswap(mask, &mut z2, &mut z3);
    store(&mul(&x2, &invert(&z2)))
}
