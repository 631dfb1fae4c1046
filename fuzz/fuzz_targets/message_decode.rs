//! Block-transfer message decoder: never panics, and a decoded message round-trips.
#![no_main]

use kshuffle::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let bytes = message.to_bytes();
        assert_eq!(Message::decode(&bytes).as_ref(), Ok(&message));
    }
});
