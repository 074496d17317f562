//! The sans-IO frame decoder on arbitrary bytes in arbitrary chunks: never panics,
//! never yields a frame above the maximum, and agrees with re-encoding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_net::frame::{Decoder, encode};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut d = Decoder::new(MAX);
    let mut frames = Vec::new();
    for chunk in rest.chunks(usize::from(split).max(1)) {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let wire: Vec<u8> = frames.iter().flat_map(|f| encode(f, MAX).expect("decoded frames fit")).collect();
    assert_eq!(&wire[..], &rest[..wire.len()]);
});
