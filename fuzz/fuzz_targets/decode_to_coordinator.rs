//! Any bytes from a site: decoding a `ToCoordinator` never panics, and whatever decodes
//! re-encodes and decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_fl::wire::{ToCoordinator, decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode::<ToCoordinator>(data) {
        let _ = msg.kind();
        let again: ToCoordinator = decode(&encode(&msg).expect("a decoded message encodes"))
            .expect("a re-encoded message decodes");
        assert_eq!(again, msg);
    }
});
