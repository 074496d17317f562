//! glibc `malloc` settings for the two shapes of federation process. Both are process
//! wide, so the binary sets one before its threads start; elsewhere they do nothing.
//!
//! - A coordinator or a site (and a loopback federation, all of them in one process)
//!   allocates the same few model-sized buffers every round. glibc's defaults hand such
//!   a buffer back to the kernel when it is freed (a mapping of its own, or the top of
//!   a heap trimmed past the trim threshold), so the next round faults every page of it
//!   in again; [`retain_freed_buffers`] keeps freed memory for reuse instead, at the
//!   price of up to [`RETAINED_FREE`] bytes of free heap held per glibc arena.
//! - Thousands of simulated sites each allocate and free several small vectors: kept
//!   in heap arenas those fragment (at 3000 sites × 10^5 coordinates, peak memory was
//!   2.5 GB instead of 1.4 GB), so [`map_large_buffers`] gives every buffer of 128 KiB
//!   or more a mapping of its own, returned to the system when freed.

/// Buffers up to this size come from the heap and are reused once freed (older glibc
/// versions refuse an mmap threshold above 32 MiB on 64-bit targets).
pub const RETAINED_BUFFER: usize = 32 << 20;

/// Free memory a heap keeps before returning any of it to the kernel: room for a few
/// model-sized buffers, not a process's peak (a QUIC round of 10 sites and 10^6
/// parameters ran as fast with 128 MiB as with 1 GiB, and slower with 32 MiB).
pub const RETAINED_FREE: usize = 128 << 20;

/// Keeps freed buffers of up to [`RETAINED_BUFFER`] bytes, and up to [`RETAINED_FREE`]
/// bytes of free heap, for reuse. Returns whether glibc took both settings (`false`
/// where the allocator is not glibc's).
pub fn retain_freed_buffers() -> bool {
    set(RETAINED_BUFFER, RETAINED_FREE)
}

/// Gives every buffer of 128 KiB or more a mapping of its own, returned when freed.
/// Returns whether glibc took the setting.
pub fn map_large_buffers() -> bool {
    set(128 << 10, 0)
}

/// Sets the mmap threshold and, when `trim` is not 0, the trim threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(mmap_threshold: usize, trim: usize) -> bool {
    let as_int = |v: usize| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes allocator tunables; glibc refuses (returns 0 for) a
    // value it does not accept and keeps its default then.
    unsafe {
        let mapped = libc::mallopt(libc::M_MMAP_THRESHOLD, as_int(mmap_threshold)) == 1;
        let trimmed = trim == 0 || libc::mallopt(libc::M_TRIM_THRESHOLD, as_int(trim)) == 1;
        mapped && trimmed
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_: usize, _: usize) -> bool {
    false
}
