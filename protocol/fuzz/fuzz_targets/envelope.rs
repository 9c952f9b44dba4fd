//! Any bytes as a bus message; whatever decodes must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vera_protocol::message::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let again = Envelope::decode(&envelope.encode()).expect("encoded envelope must decode");
        assert_eq!(again, envelope);
    }
});
