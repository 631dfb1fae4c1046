//! Checks of the pure codec: frames, block-transfer messages, block ids.

use bytes::BytesMut;

use super::{Input, assert_alloc_bounded, measure};
use crate::wire::{self, BlockId, Message};

/// Frame limit the frame check decodes with: small, so the limit is exercised.
pub const FRAME_LIMIT_BYTES: usize = 64 * 1024;

/// Frames: decoding consumes exactly one frame or nothing, never more than the limit;
/// incomplete input is left untouched; whatever decodes re-encodes to bytes that decode to
/// the same frame; allocation follows the bytes present.
///
/// # Panics
/// When an invariant is broken.
pub fn check_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let (result, peak) = measure(|| wire::decode(&mut buf, FRAME_LIMIT_BYTES));
        assert_alloc_bounded("frame decode", peak, before, 2);
        match result {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                assert!(
                    used > 0 && used <= FRAME_LIMIT_BYTES,
                    "consumed {used} of {before} bytes"
                );
                let mut again = BytesMut::new();
                wire::encode(&frame, &mut again);
                assert_eq!(
                    u64::try_from(again.len()).ok(),
                    Some(frame.encoded_len()),
                    "encoded_len disagrees with encode"
                );
                let decoded = wire::decode(&mut again, usize::MAX >> 1);
                assert_eq!(decoded.as_ref().ok().and_then(Option::as_ref), Some(&frame));
                assert!(again.is_empty(), "re-encoded frame left bytes behind");
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "incomplete input must not be consumed");
                break;
            }
            Err(_) => break,
        }
    }
}

/// Messages: decoding never panics, allocates at most a small multiple of the input (a
/// `Vec<String>` of empty strings is 24 bytes of headers per 4 input bytes), and a decoded
/// message re-encodes to bytes that decode to the same message.
///
/// # Panics
/// When an invariant is broken.
pub fn check_message(data: &[u8]) {
    let (result, peak) = measure(|| Message::decode(data));
    assert_alloc_bounded("message decode", peak, data.len(), 8);
    if let Ok(message) = result {
        let bytes = message.to_bytes();
        assert_eq!(Message::decode(&bytes).as_ref(), Ok(&message));
    }
}

/// Block ids, both ways:
/// - the input as text: a parsed id displays back to exactly the input (parsing is strict,
///   so `Display` is its inverse), and a refused one yields an error whose copy of the id
///   is bounded;
/// - the input as the fields of an id: its display parses back to the same id (batch ranges
///   with `start >= end` are refused).
///
/// # Panics
/// When an invariant is broken.
pub fn check_block_id(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let (parsed, peak) = measure(|| BlockId::parse(text));
        assert_alloc_bounded("block id parse", peak, 0, 1);
        match parsed {
            Ok(id) => assert_eq!(id.to_string(), text, "display is not the inverse of parse"),
            Err(wire::Error::InvalidBlockId { id, .. }) => assert!(
                id.len() <= wire::MAX_ID_IN_ERROR_BYTES + 3,
                "error keeps {} bytes of the id",
                id.len()
            ),
            Err(other) => panic!("block id refused with an unexpected error: {other:?}"),
        }
    }
    let mut input = Input::new(data);
    let (a, b, c, d) = (
        input.u32() as i32,
        input.u32() as i32,
        input.u32() as i32,
        input.u32() as i32,
    );
    let wide = (i64::from(input.u32()) << 32) | i64::from(input.u32());
    let id = match input.u8() % 4 {
        0 => BlockId::Shuffle {
            shuffle_id: a,
            map_id: wide,
            reduce_id: b,
        },
        1 => BlockId::ShuffleBatch {
            shuffle_id: a,
            map_id: wide,
            start_reduce_id: b,
            end_reduce_id: c,
        },
        2 => BlockId::Rdd {
            rdd_id: a,
            split_index: b,
        },
        _ => BlockId::ShuffleChunk {
            shuffle_id: a,
            shuffle_merge_id: b,
            reduce_id: c,
            chunk_id: d,
        },
    };
    let valid = match id {
        BlockId::Shuffle {
            shuffle_id,
            map_id,
            reduce_id,
        } => shuffle_id >= 0 && map_id >= 0 && reduce_id >= 0,
        BlockId::ShuffleBatch {
            shuffle_id,
            map_id,
            start_reduce_id,
            end_reduce_id,
        } => {
            shuffle_id >= 0
                && map_id >= 0
                && start_reduce_id >= 0
                && start_reduce_id < end_reduce_id
        }
        BlockId::Rdd {
            rdd_id,
            split_index,
        } => rdd_id >= 0 && split_index >= 0,
        BlockId::ShuffleChunk {
            shuffle_id,
            shuffle_merge_id,
            reduce_id,
            chunk_id,
        } => shuffle_id >= 0 && shuffle_merge_id >= 0 && reduce_id >= 0 && chunk_id >= 0,
    };
    let shown = id.to_string();
    match BlockId::parse(&shown) {
        Ok(back) => {
            assert!(
                valid,
                "{id:?} shows as {shown:?}, which parses, but it is not valid"
            );
            assert_eq!(back, id, "{shown:?} parsed to another id");
        }
        Err(e) => assert!(!valid, "{id:?} shows as {shown:?}, which is refused: {e}"),
    }
}
