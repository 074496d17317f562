//! Any bytes: decoding never panics, and whatever decodes re-encodes to the same bytes
//! and decodes back to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_secagg::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_bytes(data) {
        let again = Envelope::from_bytes(&env.to_bytes()).expect("re-encoded message decodes");
        assert_eq!(again, env);
    }
});
