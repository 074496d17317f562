//! The allocator settings do what the federation processes set them for. A test binary
//! of its own: the settings are process wide, and other tests' allocations would blur
//! the counts.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn retained_buffers_come_from_the_heap_and_mapped_ones_get_their_own_mapping() {
    use tessera_fl::allocator::{map_large_buffers, retain_freed_buffers};
    // Bytes in mappings of their own (glibc's count).
    let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
    const BUFFER: usize = 4 << 20;
    // First on a small heap: mapped, and unmapped when freed.
    assert!(map_large_buffers(), "glibc refused the setting");
    let before = mapped();
    let buffer = std::hint::black_box(vec![1u8; BUFFER]);
    assert!(
        mapped() >= before + BUFFER,
        "a large buffer came from the heap"
    );
    drop(buffer);
    assert_eq!(mapped(), before, "a freed mapping was kept");
    // Then retained: the heap grows instead, and keeps the memory once it is freed.
    assert!(retain_freed_buffers(), "glibc refused the settings");
    let before = mapped();
    let buffer = std::hint::black_box(vec![1u8; BUFFER]);
    assert!(
        mapped() < before + BUFFER,
        "a retained-size buffer was mapped"
    );
    drop(buffer);
    let free = unsafe { libc::mallinfo2() }.fordblks;
    assert!(
        free >= BUFFER,
        "the freed buffer went back to the kernel ({free} bytes free)"
    );
}
