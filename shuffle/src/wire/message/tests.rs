//! Message round trips and decode errors (golden vectors are in `wire/tests.rs`).

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::wire::Error;

fn s(v: &str) -> String {
    v.to_owned()
}

/// One value of every variant, with edge values (empty strings, unicode, extremes).
pub(crate) fn all_variants() -> Vec<Message> {
    vec![
        Message::OpenBlocks {
            app_id: s("app-1"),
            exec_id: s(""),
            block_ids: vec![s("shuffle_0_5_2"), s(""), s("rdd_3_4")],
        },
        Message::UploadBlock {
            app_id: s("app"),
            exec_id: s("7"),
            block_id: s("rdd_1_2"),
            metadata: Bytes::from_static(&[1, 2, 3]),
            block_data: Bytes::new(),
        },
        Message::RegisterExecutor {
            app_id: s("app-ü"),
            exec_id: s("12"),
            info: ExecutorShuffleInfo {
                local_dirs: vec![s("/a/blockmgr-1"), s("/b/blockmgr-2")],
                sub_dirs_per_local_dir: 64,
                shuffle_manager: s("sort"),
            },
        },
        Message::StreamHandle {
            stream_id: i64::MAX,
            num_chunks: 0,
        },
        Message::RegisterDriver {
            app_id: s("a"),
            heartbeat_timeout_ms: -1,
        },
        Message::ShuffleServiceHeartbeat { app_id: s("") },
        Message::UploadBlockStream {
            block_id: s("x"),
            metadata: Bytes::new(),
        },
        Message::RemoveBlocks {
            app_id: s("a"),
            exec_id: s("1"),
            block_ids: vec![],
        },
        Message::BlocksRemoved {
            num_removed_blocks: i32::MIN,
        },
        Message::FetchShuffleBlocks {
            app_id: s("a"),
            exec_id: s("1"),
            shuffle_id: 3,
            map_ids: vec![i64::MAX, 0, 9],
            reduce_ids: vec![vec![], vec![1, 2, 3], vec![-4]],
            batch_fetch_enabled: false,
        },
        Message::FetchShuffleBlocks {
            app_id: s("a"),
            exec_id: s("1"),
            shuffle_id: 3,
            map_ids: vec![1, 2],
            reduce_ids: vec![vec![0, 1], vec![5, i32::MAX]],
            batch_fetch_enabled: true,
        },
        Message::GetLocalDirsForExecutors {
            app_id: s("a"),
            exec_ids: vec![s("1"), s("2")],
        },
        Message::LocalDirsForExecutors {
            exec_ids: vec![s("1"), s("2")],
            num_local_dirs_by_exec: vec![0, 2],
            all_local_dirs: vec![s("/x"), s("/y")],
        },
        Message::PushBlockStream {
            app_id: s("a"),
            app_attempt_id: 1,
            shuffle_id: 2,
            shuffle_merge_id: 3,
            map_index: 4,
            reduce_id: 5,
            index: 6,
        },
        Message::FinalizeShuffleMerge {
            app_id: s("a"),
            app_attempt_id: -1,
            shuffle_id: 2,
            shuffle_merge_id: 3,
        },
        Message::MergeStatuses {
            shuffle_id: 1,
            shuffle_merge_id: 2,
            bitmaps: vec![
                Bytes::from_static(&[0x3a, 0x30, 0, 0, 0, 0, 0, 0]),
                Bytes::from_static(&[0x3b, 0x30, 0, 0, 0x01, 0, 0, 9, 0, 1, 0, 5, 0, 9, 0]),
            ],
            reduce_ids: vec![0, 1],
            sizes: vec![0, i64::MAX],
        },
        Message::FetchShuffleBlockChunks {
            app_id: s("a"),
            exec_id: s("1"),
            shuffle_id: 1,
            shuffle_merge_id: 2,
            reduce_ids: vec![3, 4],
            chunk_ids: vec![vec![0], vec![]],
        },
        Message::DiagnoseCorruption {
            app_id: s("a"),
            exec_id: s("1"),
            shuffle_id: 1,
            map_id: 2,
            reduce_id: 3,
            checksum: -4,
            algorithm: s("CRC32C"),
        },
        Message::CorruptionCause { cause: 4 },
        Message::BlockPushReturnCode {
            return_code: 0,
            failure_block_id: s(""),
        },
        Message::RemoveShuffleMerge {
            app_id: s("a"),
            app_attempt_id: 1,
            shuffle_id: 2,
            shuffle_merge_id: -1,
        },
    ]
}

#[test]
fn every_variant_round_trips() {
    let variants = all_variants();
    let mut seen = [false; 20];
    for msg in &variants {
        let bytes = msg.to_bytes();
        assert_eq!(bytes[0], msg.type_id());
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            *msg,
            "{}",
            msg.type_name()
        );
        let mut dst = BytesMut::from(&b"prefix"[..]);
        msg.encode(&mut dst);
        assert_eq!(&dst[6..], bytes.as_ref());
        seen[usize::from(msg.type_id())] = true;
    }
    assert!(seen.iter().all(|&x| x), "a variant is missing: {seen:?}");
    let mut names: Vec<_> = variants.iter().map(Message::type_name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 20);
}

#[test]
fn app_id_is_reported_for_client_requests() {
    for msg in all_variants() {
        let expected = matches!(
            msg.type_id(),
            0 | 1 | 2 | 4 | 5 | 7 | 9 | 10 | 12 | 13 | 15 | 16 | 19
        );
        assert_eq!(msg.app_id().is_some(), expected, "{}", msg.type_name());
    }
    let msg = Message::ShuffleServiceHeartbeat { app_id: s("app-9") };
    assert_eq!(msg.app_id(), Some("app-9"));
}

#[test]
fn unknown_types_are_reported_signed() {
    let err = Message::decode(&[0xfb, 0, 0, 0, 5]).unwrap_err();
    assert_eq!(err, Error::UnknownMessageType { ty: -5 });
    assert_eq!(err.to_string(), "Unknown message type: -5");
    assert_eq!(
        Message::decode(&[0xea]).unwrap_err().to_string(),
        "Unknown message type: -22"
    );
    assert_eq!(
        Message::decode(&[20]).unwrap_err(),
        Error::UnknownMessageType { ty: 20 }
    );
    assert_eq!(
        Message::decode(&[]).unwrap_err(),
        Error::Truncated {
            what: "message type",
            needed: 1,
            remaining: 0
        }
    );
}

#[test]
fn trailing_bytes_are_ignored_and_booleans_are_lenient() {
    let mut bytes = BytesMut::from(
        Message::BlocksRemoved {
            num_removed_blocks: 2,
        }
        .to_bytes(),
    );
    bytes.put_slice(b"junk");
    assert_eq!(
        Message::decode(&bytes).unwrap(),
        Message::BlocksRemoved {
            num_removed_blocks: 2
        }
    );

    let msg = Message::FetchShuffleBlocks {
        app_id: s("a"),
        exec_id: s("1"),
        shuffle_id: 0,
        map_ids: vec![5],
        reduce_ids: vec![vec![0, 3]],
        batch_fetch_enabled: true,
    };
    let mut bytes = msg.to_bytes().to_vec();
    *bytes.last_mut().unwrap() = 7; // any non-zero byte is true
    assert_eq!(Message::decode(&bytes).unwrap(), msg);
}

/// `FetchShuffleBlocks` body with the given arrays (no consistency checks).
fn fetch(map_ids: &[i64], reduce_ids: &[Vec<i32>], batch: bool) -> Bytes {
    Message::FetchShuffleBlocks {
        app_id: s("a"),
        exec_id: s("1"),
        shuffle_id: 0,
        map_ids: map_ids.to_vec(),
        reduce_ids: reduce_ids.to_vec(),
        batch_fetch_enabled: batch,
    }
    .to_bytes()
}

fn assert_malformed(bytes: &[u8], what: &str) {
    match Message::decode(bytes) {
        Err(Error::Malformed { what: w, detail }) => {
            assert_eq!(w, what, "{detail}");
        }
        other => panic!("expected Malformed {what}, got {other:?}"),
    }
}

#[test]
fn fetch_shuffle_blocks_must_be_consistent() {
    assert_malformed(&fetch(&[1, 2], &[vec![0]], false), "FetchShuffleBlocks");
    assert_malformed(
        &fetch(&[1], &[vec![0], vec![1]], false),
        "FetchShuffleBlocks",
    );
    assert_malformed(&fetch(&[1], &[vec![0]], true), "FetchShuffleBlocks");
    assert_malformed(&fetch(&[1], &[vec![0, 1, 2]], true), "FetchShuffleBlocks");
    assert_malformed(&fetch(&[1], &[vec![3, 3]], true), "FetchShuffleBlocks");
    assert_malformed(&fetch(&[1], &[vec![4, 3]], true), "FetchShuffleBlocks");
    assert_malformed(&fetch(&[1], &[vec![-1, 3]], true), "FetchShuffleBlocks");
    assert_malformed(
        &fetch(&[1, 2], &[vec![0, 2], vec![]], true),
        "FetchShuffleBlocks",
    );
    // The same rows are fine without batch.
    assert!(Message::decode(&fetch(&[1], &[vec![4, 3]], false)).is_ok());
    assert!(Message::decode(&fetch(&[], &[], true)).is_ok());
}

#[test]
fn other_row_counts_must_match() {
    let chunks = Message::FetchShuffleBlockChunks {
        app_id: s("a"),
        exec_id: s("1"),
        shuffle_id: 1,
        shuffle_merge_id: 2,
        reduce_ids: vec![3, 4],
        chunk_ids: vec![vec![0]],
    };
    assert_malformed(&chunks.to_bytes(), "FetchShuffleBlockChunks");

    let dirs = |nums: Vec<i32>, dirs: usize| {
        Message::LocalDirsForExecutors {
            exec_ids: vec![s("1"), s("2")],
            num_local_dirs_by_exec: nums,
            all_local_dirs: vec![s("/d"); dirs],
        }
        .to_bytes()
    };
    assert_malformed(&dirs(vec![1], 1), "LocalDirsForExecutors");
    assert_malformed(&dirs(vec![1, 1], 3), "LocalDirsForExecutors");
    assert_malformed(&dirs(vec![3, -1], 2), "LocalDirsForExecutors");
    assert!(Message::decode(&dirs(vec![1, 2], 3)).is_ok());

    let statuses = Message::MergeStatuses {
        shuffle_id: 1,
        shuffle_merge_id: 2,
        bitmaps: vec![Bytes::from_static(&[0x3a, 0x30, 0, 0, 0, 0, 0, 0])],
        reduce_ids: vec![0, 1],
        sizes: vec![0],
    };
    assert_malformed(&statuses.to_bytes(), "MergeStatuses");
}

#[test]
fn negative_and_huge_counts_are_refused_without_allocating() {
    // OpenBlocks with blockIds count -1.
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 1, b'1']);
    let prefix = b.clone();
    b.put_i32(-1);
    assert_eq!(
        Message::decode(&b).unwrap_err(),
        Error::NegativeLength {
            what: "OpenBlocks.blockIds",
            len: -1
        }
    );

    // blockIds count i32::MAX with 4 bytes left.
    let mut b = prefix.clone();
    b.put_i32(i32::MAX);
    b.put_i32(0);
    assert!(matches!(
        Message::decode(&b).unwrap_err(),
        Error::Truncated {
            what: "OpenBlocks.blockIds",
            remaining: 4,
            ..
        }
    ));

    // FetchShuffleBlocks mapIds count i32::MAX.
    let mut b = BytesMut::new();
    b.put_u8(9);
    b.put_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 1, b'1', 0, 0, 0, 0]);
    b.put_i32(i32::MAX);
    b.put_i32(0);
    assert!(matches!(
        Message::decode(&b).unwrap_err(),
        Error::Truncated {
            what: "FetchShuffleBlocks.mapIds",
            remaining: 4,
            ..
        }
    ));

    // MergeStatuses bitmap count larger than the bytes allow (8 bytes per bitmap at least).
    let mut b = BytesMut::new();
    b.put_u8(14);
    b.put_i32(0);
    b.put_i32(0);
    b.put_i32(2);
    b.put_slice(&[0x3a, 0x30, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        Message::decode(&b).unwrap_err(),
        Error::Truncated {
            what: "MergeStatuses.bitmaps",
            needed: 16,
            remaining: 8
        }
    ));

    // String length beyond the message.
    assert!(matches!(
        Message::decode(&[5, 0x7f, 0xff, 0xff, 0xff, b'a']).unwrap_err(),
        Error::Truncated {
            what: "ShuffleServiceHeartbeat.appId",
            remaining: 1,
            ..
        }
    ));
}

#[test]
fn truncated_fixed_fields() {
    assert_eq!(
        Message::decode(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap_err(),
        Error::Truncated {
            what: "StreamHandle.numChunks",
            needed: 4,
            remaining: 2
        }
    );
    assert_eq!(
        Message::decode(&[17]).unwrap_err(),
        Error::Truncated {
            what: "CorruptionCause.cause",
            needed: 1,
            remaining: 0
        }
    );
}

#[test]
fn invalid_utf8_is_refused() {
    let bytes = [10, 0, 0, 0, 2, 0xff, 0xfe, 0, 0, 0, 0];
    assert_eq!(
        Message::decode(&bytes).unwrap_err(),
        Error::InvalidUtf8 {
            what: "GetLocalDirsForExecutors.appId"
        }
    );
}

#[test]
fn bad_bitmap_is_refused() {
    let mut b = BytesMut::new();
    b.put_u8(14);
    b.put_i32(0);
    b.put_i32(0);
    b.put_i32(1);
    b.put_slice(&[0x39, 0x30, 0, 0, 0, 0, 0, 0]);
    b.put_i32(0);
    b.put_i32(0);
    assert!(matches!(
        Message::decode(&b).unwrap_err(),
        Error::Malformed {
            what: "RoaringBitmap",
            ..
        }
    ));
}
