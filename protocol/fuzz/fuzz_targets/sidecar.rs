//! Any bytes as a `.vera.meta` sidecar; whatever decodes must re-encode canonically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vera_protocol::sidecar::Sidecar;

fuzz_target!(|data: &[u8]| {
    if let Ok(sidecar) = Sidecar::decode(data) {
        let encoded = sidecar.encode();
        let again = Sidecar::decode(&encoded).expect("canonical encoding must decode");
        assert_eq!(again, sidecar);
        assert_eq!(again.encode(), encoded);
    }
});
