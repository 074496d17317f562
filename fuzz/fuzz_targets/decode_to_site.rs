//! Any bytes from a coordinator: decoding a `ToSite` never panics; a decoded round start
//! goes through everything a site checks before it trains (its policy and the context
//! digest) without panicking; whatever decodes re-encodes and decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_fl::SitePolicy;
use tessera_fl::wire::{ToSite, decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode::<ToSite>(data) {
        if let ToSite::RoundStart(start) = &msg {
            let _ = SitePolicy::default().check(start, None);
            let _ = SitePolicy::permissive().check(start, Some(1));
            let _ = start.context_matches();
        }
        let again: ToSite = decode(&encode(&msg).expect("a decoded message encodes"))
            .expect("a re-encoded message decodes");
        // NaN model values compare unequal; compare the encodings instead.
        assert_eq!(encode(&again).unwrap(), encode(&msg).unwrap());
    }
});
