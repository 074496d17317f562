//! The packed masked-vector decoder: never panics; accepted vectors are canonical.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_secagg::MaskedVector;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = postcard::from_bytes::<MaskedVector>(data) {
        let mask = if v.modulus().bits() == 32 { u32::MAX } else { (1u32 << v.modulus().bits()) - 1 };
        assert!(v.as_slice().iter().all(|w| w & !mask == 0));
        let bytes = postcard::to_allocvec(&v).expect("encodes");
        assert_eq!(postcard::from_bytes::<MaskedVector>(&bytes).expect("decodes"), v);
    }
});
