//! Cross-module codec tests: the golden vectors of Appendix A (produced by the real Spark
//! 3.5.9 and 4.3.0 classes), decoding at every split point, and a deterministic mutation test.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;

/// Bytes from hex, ignoring whitespace and the `|` that marks out-of-frame bodies.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'|')
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => panic!("not hex: {}", b as char),
        })
        .collect();
    let pairs = digits.chunks_exact(2);
    assert!(pairs.remainder().is_empty(), "odd number of hex digits");
    pairs.map(|p| p[0] << 4 | p[1]).collect()
}

/// The encoded form of `frame`.
pub(crate) fn frame_bytes(frame: &Frame) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode(frame, &mut dst);
    dst.to_vec()
}

/// Decodes exactly one frame from `bytes`, asserting it consumes `consumed` bytes.
fn decode_one(bytes: &[u8], consumed: usize) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = decode(&mut buf, DEFAULT_MAX_FRAME_LEN_BYTES)
        .unwrap()
        .unwrap();
    assert_eq!(bytes.len() - buf.len(), consumed, "{frame:?}");
    frame
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| s(x)).collect()
}

// === A.1 block-transfer payloads ===

const REGISTER_EXECUTOR_HEX: &str = "
    02000000 05617070 2d310000 00013100 00000100 00000e2f 64312f62 6c6f636b 6d67722d 61000000
    40000000 306f7267 2e617061 6368652e 73706172 6b2e7368 7566666c 652e736f 72742e53 6f727453
    68756666 6c654d61 6e616765 72";

const STREAM_HANDLE_HEX: &str = "03010203 04050607 08000000 03";

fn register_executor() -> Message {
    Message::RegisterExecutor {
        app_id: s("app-1"),
        exec_id: s("1"),
        info: ExecutorShuffleInfo {
            local_dirs: strings(&["/d1/blockmgr-a"]),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: s("org.apache.spark.shuffle.sort.SortShuffleManager"),
        },
    }
}

fn merge_statuses_bitmap() -> Bytes {
    Bytes::from(hex(
        "3a300000 01000000 0000 0300 10000000 0100 0200 0300 e803",
    ))
}

/// Appendix A.1: (description, hex, expected message).
fn golden_messages() -> Vec<(&'static str, &'static str, Message)> {
    vec![
        (
            "RegisterExecutor",
            REGISTER_EXECUTOR_HEX,
            register_executor(),
        ),
        (
            "OpenBlocks",
            "00000000 05617070 2d310000 00013100 00000200 00000d73 68756666 6c655f30 5f355f32
             00000007 7264645f 335f34",
            Message::OpenBlocks {
                app_id: s("app-1"),
                exec_id: s("1"),
                block_ids: strings(&["shuffle_0_5_2", "rdd_3_4"]),
            },
        ),
        (
            "FetchShuffleBlocks plain",
            "09000000 05617070 2d310000 00013100 00000000 00000200 00000000 00000500 00000000
             00000600 00000200 00000200 00000000 00000100 00000100 00000200",
            Message::FetchShuffleBlocks {
                app_id: s("app-1"),
                exec_id: s("1"),
                shuffle_id: 0,
                map_ids: vec![5, 6],
                reduce_ids: vec![vec![0, 1], vec![2]],
                batch_fetch_enabled: false,
            },
        ),
        (
            "FetchShuffleBlocks batch",
            "09000000 05617070 2d310000 00013100 00000000 00000100 00000000 00000500 00000100
             00000200 00000000 00000301",
            Message::FetchShuffleBlocks {
                app_id: s("app-1"),
                exec_id: s("1"),
                shuffle_id: 0,
                map_ids: vec![5],
                reduce_ids: vec![vec![0, 3]],
                batch_fetch_enabled: true,
            },
        ),
        (
            "StreamHandle",
            STREAM_HANDLE_HEX,
            Message::StreamHandle {
                stream_id: 0x0102_0304_0506_0708,
                num_chunks: 3,
            },
        ),
        (
            "RemoveBlocks",
            "07000000 05617070 2d310000 00013100 00000100 00001373 68756666 6c655f30 5f355f30
             2e696e64 6578",
            Message::RemoveBlocks {
                app_id: s("app-1"),
                exec_id: s("1"),
                block_ids: strings(&["shuffle_0_5_0.index"]),
            },
        ),
        (
            "BlocksRemoved",
            "08000000 02",
            Message::BlocksRemoved {
                num_removed_blocks: 2,
            },
        ),
        (
            "GetLocalDirsForExecutors",
            "0a000000 05617070 2d310000 00010000 000131",
            Message::GetLocalDirsForExecutors {
                app_id: s("app-1"),
                exec_ids: strings(&["1"]),
            },
        ),
        (
            "LocalDirsForExecutors",
            "0b000000 01000000 01310000 00010000 00020000 00020000 000e2f64 312f626c 6f636b6d
             67722d61 0000000e 2f64322f 626c6f63 6b6d6772 2d62",
            Message::LocalDirsForExecutors {
                exec_ids: strings(&["1"]),
                num_local_dirs_by_exec: vec![2],
                all_local_dirs: strings(&["/d1/blockmgr-a", "/d2/blockmgr-b"]),
            },
        ),
        (
            "DiagnoseCorruption",
            "10000000 05617070 2d310000 00013100 00000000 00000000 00000500 00000200 00000000
             00000700 00000741 444c4552 3332",
            Message::DiagnoseCorruption {
                app_id: s("app-1"),
                exec_id: s("1"),
                shuffle_id: 0,
                map_id: 5,
                reduce_id: 2,
                checksum: 7,
                algorithm: s("ADLER32"),
            },
        ),
        (
            "CorruptionCause",
            "1101",
            Message::CorruptionCause { cause: 1 },
        ),
        (
            "FinalizeShuffleMerge",
            "0d000000 05617070 2d310000 00010000 00000000 0000",
            Message::FinalizeShuffleMerge {
                app_id: s("app-1"),
                app_attempt_id: 1,
                shuffle_id: 0,
                shuffle_merge_id: 0,
            },
        ),
        (
            "PushBlockStream",
            "0c000000 05617070 2d310000 00010000 00000000 00000000 00030000 00020000 0000",
            Message::PushBlockStream {
                app_id: s("app-1"),
                app_attempt_id: 1,
                shuffle_id: 0,
                shuffle_merge_id: 0,
                map_index: 3,
                reduce_id: 2,
                index: 0,
            },
        ),
        (
            "BlockPushReturnCode",
            "12010000 00137368 7566666c 65507573 685f305f 305f335f 32",
            Message::BlockPushReturnCode {
                return_code: 1,
                failure_block_id: s("shufflePush_0_0_3_2"),
            },
        ),
        (
            "RemoveShuffleMerge",
            "13000000 05617070 2d310000 00010000 0000ffff ffff",
            Message::RemoveShuffleMerge {
                app_id: s("app-1"),
                app_attempt_id: 1,
                shuffle_id: 0,
                shuffle_merge_id: -1,
            },
        ),
        (
            "FetchShuffleBlockChunks",
            "0f000000 05617070 2d310000 00013100 00000000 00000000 00000100 00000200 00000100
             00000200 00000000 000001",
            Message::FetchShuffleBlockChunks {
                app_id: s("app-1"),
                exec_id: s("1"),
                shuffle_id: 0,
                shuffle_merge_id: 0,
                reduce_ids: vec![2],
                chunk_ids: vec![vec![0, 1]],
            },
        ),
        (
            "UploadBlockStream",
            "06000000 07726464 5f315f32 00000001 aa",
            Message::UploadBlockStream {
                block_id: s("rdd_1_2"),
                metadata: Bytes::from_static(&[0xaa]),
            },
        ),
        (
            "MergeStatuses",
            "0e000000 00000000 00000000 013a3000 00010000 00000003 00100000 00010002 000300e8
             03000000 01000000 02000000 01000000 00000000 64",
            Message::MergeStatuses {
                shuffle_id: 0,
                shuffle_merge_id: 0,
                bitmaps: vec![merge_statuses_bitmap()],
                reduce_ids: vec![2],
                sizes: vec![100],
            },
        ),
    ]
}

#[test]
fn golden_messages_decode_and_reencode() {
    for (name, hex_str, expected) in golden_messages() {
        let bytes = hex(hex_str);
        let decoded = Message::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded, expected, "{name}");
        assert_eq!(expected.to_bytes().as_ref(), bytes.as_slice(), "{name}");
        assert_eq!(decoded.type_id(), bytes[0], "{name}");
    }
}

// === A.2 frames ===

/// Appendix A.2: (description, in-frame hex, out-of-frame hex, expected frame).
fn golden_frames() -> Vec<(&'static str, String, &'static str, Frame)> {
    let id = StreamChunkId {
        stream_id: 0x0102_0304_0506_0708,
        chunk_index: 0,
    };
    vec![
        (
            "RpcRequest",
            format!("00000000 00000072 03 0000000000000001 0000005d {REGISTER_EXECUTOR_HEX}"),
            "",
            Frame::RpcRequest {
                request_id: 1,
                body: register_executor().to_bytes(),
            },
        ),
        (
            "RpcResponse empty",
            s("00000000 00000015 04000000 00000000 01000000 00"),
            "",
            Frame::RpcResponse {
                request_id: 1,
                body: Bytes::new(),
            },
        ),
        (
            "RpcResponse StreamHandle",
            s("00000000 00000022 04000000 00000000 02000000 0d030102 03040506 07080000 0003"),
            "",
            Frame::RpcResponse {
                request_id: 2,
                body: Bytes::from(hex(STREAM_HANDLE_HEX)),
            },
        ),
        (
            "RpcFailure",
            s("00000000 00000019 05000000 00000000 01000000 04626f6f 6d"),
            "",
            Frame::RpcFailure {
                request_id: 1,
                error: s("boom"),
            },
        ),
        (
            "ChunkFetchRequest",
            s("00000000 00000015 00010203 04050607 08000000 00"),
            "",
            Frame::ChunkFetchRequest(id),
        ),
        (
            "ChunkFetchSuccess",
            s("00000000 0000001a 01010203 04050607 08000000 0068656c 6c6f"),
            "",
            Frame::ChunkFetchSuccess {
                id,
                body: Bytes::from_static(b"hello"),
            },
        ),
        (
            "ChunkFetchFailure",
            s("00000000 0000001c 02010203 04050607 08000000 01000000 03657272"),
            "",
            Frame::ChunkFetchFailure {
                id: StreamChunkId {
                    chunk_index: 1,
                    ..id
                },
                error: s("err"),
            },
        ),
        (
            "StreamRequest",
            s("00000000 00000020 06000000 13373236 32333835 39373930 33383238 35365f30"),
            "",
            Frame::StreamRequest {
                stream_id: s("72623859790382856_0"),
            },
        ),
        (
            "StreamResponse",
            s("00000000 00000018 07000000 03375f30 00000000 00000005"),
            "68656c6c 6f",
            Frame::StreamResponse {
                stream_id: s("7_0"),
                byte_count: 5,
            },
        ),
        (
            "StreamFailure",
            s("00000000 00000017 08000000 03375f30 00000003 657272"),
            "",
            Frame::StreamFailure {
                stream_id: s("7_0"),
                error: s("err"),
            },
        ),
        (
            "OneWayMessage",
            s("00000000 0000000f 09000000 02aabb"),
            "",
            Frame::OneWayMessage {
                body: Bytes::from_static(&[0xaa, 0xbb]),
            },
        ),
        (
            "UploadStream",
            s("00000000 0000001e 0a000000 00000000 03000000 01cc0000 00000000 0002"),
            "6869",
            Frame::UploadStream {
                request_id: 3,
                meta: Bytes::from_static(&[0xcc]),
                body_byte_count: 2,
            },
        ),
        (
            "MergedBlockMetaRequest",
            s(
                "00000000 00000026 0b000000 00000000 04000000 05617070 2d310000 00000000 00000000
               0002",
            ),
            "",
            Frame::MergedBlockMetaRequest {
                request_id: 4,
                app_id: s("app-1"),
                shuffle_id: 0,
                shuffle_merge_id: 0,
                reduce_id: 2,
            },
        ),
        (
            "MergedBlockMetaSuccess",
            s("00000000 00000016 0c000000 00000000 04000000 01dd"),
            "",
            Frame::MergedBlockMetaSuccess {
                request_id: 4,
                num_chunks: 1,
                body: Bytes::from_static(&[0xdd]),
            },
        ),
    ]
}

#[test]
fn golden_frames_decode_and_reencode() {
    let frames = golden_frames();
    assert_eq!(frames.len(), 14);
    for (name, in_frame, out_of_frame, expected) in frames {
        let in_frame = hex(&in_frame);
        let out_of_frame = hex(out_of_frame);
        let mut wire = in_frame.clone();
        wire.extend_from_slice(&out_of_frame);

        let mut buf = BytesMut::from(wire.as_slice());
        let decoded = decode(&mut buf, DEFAULT_MAX_FRAME_LEN_BYTES)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete"));
        assert_eq!(decoded, expected, "{name}");
        // Out-of-frame bytes are left for the caller.
        assert_eq!(buf.as_ref(), out_of_frame.as_slice(), "{name}");

        assert_eq!(frame_bytes(&expected), in_frame, "{name}");
        assert_eq!(expected.encoded_len(), in_frame.len() as u64, "{name}");
    }
}

#[test]
fn golden_rpc_payloads_are_messages() {
    let Frame::RpcResponse { body, .. } = decode_one(
        &hex("00000000 00000022 04000000 00000000 02000000 0d030102 03040506 07080000 0003"),
        0x22,
    ) else {
        panic!("not an RpcResponse")
    };
    assert_eq!(
        Message::decode(&body).unwrap(),
        Message::StreamHandle {
            stream_id: 0x0102_0304_0506_0708,
            num_chunks: 3
        }
    );
}

#[test]
fn golden_header_helpers() {
    let id = StreamChunkId {
        stream_id: 0x0102_0304_0506_0708,
        chunk_index: 0,
    };
    let mut dst = BytesMut::new();
    encode_chunk_success_header(id, 5, &mut dst).unwrap();
    dst.put_slice(b"hello");
    assert_eq!(
        dst.as_ref(),
        hex("00000000 0000001a 01010203 04050607 08000000 0068656c 6c6f").as_slice()
    );

    let mut dst = BytesMut::new();
    encode_stream_response_header("7_0", 5, &mut dst);
    assert_eq!(
        dst.as_ref(),
        hex("00000000 00000018 07000000 03375f30 00000000 00000005").as_slice()
    );
}

// === split points ===

/// A stream of frames of every type (out-of-frame bodies empty, so the stream is only frames).
fn sample_stream() -> (Vec<Frame>, Vec<u8>) {
    let frames: Vec<Frame> = golden_frames()
        .into_iter()
        .map(|(_, _, _, f)| match f {
            Frame::StreamResponse { stream_id, .. } => Frame::StreamResponse {
                stream_id,
                byte_count: 0,
            },
            Frame::UploadStream {
                request_id, meta, ..
            } => Frame::UploadStream {
                request_id,
                meta,
                body_byte_count: 0,
            },
            f => f,
        })
        .collect();
    let wire = frames.iter().flat_map(frame_bytes).collect();
    (frames, wire)
}

/// Decodes every complete frame in `buf`, checking that `Ok(None)` consumes nothing.
fn drain(buf: &mut BytesMut, out: &mut Vec<Frame>) {
    loop {
        let before = buf.len();
        match decode(buf, DEFAULT_MAX_FRAME_LEN_BYTES).unwrap() {
            Some(frame) => {
                assert_eq!(before - buf.len(), frame_bytes(&frame).len());
                out.push(frame);
            }
            None => {
                assert_eq!(buf.len(), before);
                return;
            }
        }
    }
}

#[test]
fn decode_at_every_split_point() {
    let (frames, wire) = sample_stream();
    for split in 0..=wire.len() {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        buf.extend_from_slice(&wire[..split]);
        drain(&mut buf, &mut got);
        buf.extend_from_slice(&wire[split..]);
        drain(&mut buf, &mut got);
        assert_eq!(got, frames, "split at {split}");
        assert!(buf.is_empty());
    }
}

#[test]
fn decode_byte_by_byte() {
    let (frames, wire) = sample_stream();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in &wire {
        buf.put_u8(b);
        drain(&mut buf, &mut got);
    }
    assert_eq!(got, frames);
    assert!(buf.is_empty());
}

// === mutation (property-style) ===

use crate::test_rng::Rng;

/// Applies 1–4 random mutations to `bytes`.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let pos = rng.below(bytes.len());
        match rng.below(7) {
            0 => {
                if let Some(b) = bytes.get_mut(pos) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                if let Some(b) = bytes.get_mut(pos) {
                    *b = rng.next() as u8;
                }
            }
            2 => bytes.truncate(pos),
            3 => bytes.insert(pos.min(bytes.len()), rng.next() as u8),
            4 => {
                // An extreme i32 where a length or count may be.
                let v = [i32::MAX, i32::MIN, -1, 0, 1, 0x7fff_fff0][rng.below(6)];
                for (i, b) in v.to_be_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(pos + i) {
                        *slot = b;
                    }
                }
            }
            5 => {
                let extra = rng.below(16);
                bytes.extend((0..extra).map(|_| rng.next() as u8));
            }
            _ => {
                if pos < bytes.len() {
                    bytes.remove(pos);
                }
            }
        }
    }
}

fn sample_messages() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = golden_messages()
        .into_iter()
        .map(|(_, h, _)| hex(h))
        .collect();
    out.extend(
        message::tests::all_variants()
            .iter()
            .map(|m| m.to_bytes().to_vec()),
    );
    out
}

#[test]
fn mutated_frames_never_panic_or_overconsume() {
    let (_, wire) = sample_stream();
    let (frames, _) = sample_stream();
    let inputs: Vec<Vec<u8>> = frames
        .iter()
        .map(frame_bytes)
        .chain(std::iter::once(wire))
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let max = 4096;
    let (mut decoded, mut failed) = (0, 0);
    for round in 0..20_000 {
        let mut bytes = inputs[round % inputs.len()].clone();
        mutate(&mut rng, &mut bytes);
        let mut buf = BytesMut::from(bytes.as_slice());
        loop {
            let before = buf.len();
            match decode(&mut buf, max) {
                Ok(Some(frame)) => {
                    decoded += 1;
                    assert!(buf.len() < before);
                    // Whatever decodes re-encodes to something that decodes to the same.
                    let again = decode_one(&frame_bytes(&frame), frame_bytes(&frame).len());
                    assert_eq!(again, frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    assert!(buf.capacity() <= 2 * max.max(bytes.len()) + 64);
                    break;
                }
                Err(_) => {
                    failed += 1;
                    assert!(buf.len() <= before);
                    break;
                }
            }
        }
    }
    // The mutations exercise both paths.
    assert!(
        decoded > 1000 && failed > 1000,
        "decoded {decoded}, failed {failed}"
    );
}

#[test]
fn mutated_messages_never_panic() {
    let inputs = sample_messages();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let (mut decoded, mut failed) = (0, 0);
    for round in 0..50_000 {
        let mut bytes = inputs[round % inputs.len()].clone();
        mutate(&mut rng, &mut bytes);
        match Message::decode(&bytes) {
            Ok(msg) => {
                decoded += 1;
                assert_eq!(Message::decode(&msg.to_bytes()).unwrap(), msg);
            }
            Err(_) => failed += 1,
        }
        let _ = BlockId::parse(&String::from_utf8_lossy(&bytes));
    }
    assert!(
        decoded > 1000 && failed > 1000,
        "decoded {decoded}, failed {failed}"
    );
}

#[test]
fn every_prefix_of_every_message_fails_cleanly() {
    for bytes in sample_messages() {
        for len in 0..bytes.len() {
            assert!(
                Message::decode(&bytes[..len]).is_err(),
                "{:?}",
                &bytes[..len]
            );
        }
    }
}

#[test]
fn mutated_block_ids_parse_only_to_their_exact_display() {
    let seeds = [
        "shuffle_0_5_2",
        "shuffle_12_123456789012_0_17",
        "rdd_3_4",
        "shuffleChunk_1_2_3_4",
        "shuffle_2147483647_9223372036854775807_2147483647",
    ];
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut parsed = 0;
    for round in 0..50_000 {
        let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..=rng.below(2) {
            let pos = rng.below(bytes.len() + 1);
            let byte = b"0123456789_-+ x9"[rng.below(16)];
            match rng.below(3) {
                0 if pos < bytes.len() => bytes[pos] = byte,
                1 if pos < bytes.len() => {
                    bytes.remove(pos);
                }
                _ => bytes.insert(pos, byte),
            }
        }
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        if let Ok(id) = BlockId::parse(&text) {
            parsed += 1;
            assert_eq!(id.to_string(), text);
        }
    }
    assert!(parsed > 1000, "parsed {parsed}");
}
