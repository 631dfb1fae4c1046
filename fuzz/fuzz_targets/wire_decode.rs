//! Frame decoder: never panics, never consumes more than it was given, refuses frames over
//! the limit, and whatever decodes re-encodes to bytes that decode to the same frame.
#![no_main]

use bytes::BytesMut;
use kshuffle::wire;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match wire::decode(&mut buf, MAX) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                assert!(used <= before && used <= MAX, "consumed {used} of {before}");
                let mut again = BytesMut::new();
                wire::encode(&frame, &mut again);
                let decoded = wire::decode(&mut again, usize::MAX >> 1).expect("re-decode");
                assert_eq!(decoded.as_ref(), Some(&frame));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "incomplete input must not be consumed");
                break;
            }
            Err(_) => break,
        }
    }
});
