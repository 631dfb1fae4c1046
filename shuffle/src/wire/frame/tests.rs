//! Frame round trips, limits and decode errors (golden vectors are in `wire/tests.rs`).

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::wire::DEFAULT_MAX_FRAME_LEN_BYTES;
use crate::wire::tests::frame_bytes;

const MAX: usize = 1024;

fn s(v: &str) -> String {
    v.to_owned()
}

fn all_variants() -> Vec<Frame> {
    let id = StreamChunkId {
        stream_id: -3,
        chunk_index: i32::MAX,
    };
    vec![
        Frame::ChunkFetchRequest(id),
        Frame::ChunkFetchSuccess {
            id,
            body: Bytes::new(),
        },
        Frame::ChunkFetchSuccess {
            id,
            body: Bytes::from_static(b"some chunk"),
        },
        Frame::ChunkFetchFailure {
            id,
            error: s("Chunk was not found"),
        },
        Frame::RpcRequest {
            request_id: i64::MIN,
            body: Bytes::from_static(&[1, 2, 3]),
        },
        Frame::RpcResponse {
            request_id: 0,
            body: Bytes::new(),
        },
        Frame::RpcFailure {
            request_id: 9,
            error: s(""),
        },
        Frame::StreamRequest {
            stream_id: s("1_0"),
        },
        Frame::StreamResponse {
            stream_id: s("1_0"),
            byte_count: i64::MAX,
        },
        Frame::StreamFailure {
            stream_id: s("1_0"),
            error: s("ünknown"),
        },
        Frame::OneWayMessage {
            body: Bytes::from_static(&[0x13]),
        },
        Frame::UploadStream {
            request_id: 1,
            meta: Bytes::new(),
            body_byte_count: 0,
        },
        Frame::MergedBlockMetaRequest {
            request_id: 2,
            app_id: s("app"),
            shuffle_id: 1,
            shuffle_merge_id: -1,
            reduce_id: 7,
        },
        Frame::MergedBlockMetaSuccess {
            request_id: 3,
            num_chunks: 0,
            body: Bytes::new(),
        },
    ]
}

/// `BytesMut` holding `bytes`.
fn buf(bytes: &[u8]) -> BytesMut {
    BytesMut::from(bytes)
}

/// A frame header: length field and type byte.
fn header(len: i64, ty: u8) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i64(len);
    b.put_u8(ty);
    b
}

#[test]
fn every_variant_round_trips() {
    let mut seen = [false; 13];
    for frame in all_variants() {
        let bytes = frame_bytes(&frame);
        assert_eq!(
            bytes.len() as u64,
            frame.encoded_len(),
            "{}",
            frame.type_name()
        );
        assert_eq!(bytes[8], frame.type_id());
        let mut b = buf(&bytes);
        b.put_slice(b"next");
        assert_eq!(decode(&mut b, MAX).unwrap(), Some(frame.clone()));
        assert_eq!(b.as_ref(), b"next");
        seen[usize::from(frame.type_id())] = true;

        let mut checked = BytesMut::new();
        try_encode(&frame, &mut checked).unwrap();
        assert_eq!(checked.as_ref(), bytes.as_slice());
    }
    assert!(seen.iter().all(|&x| x));
}

#[test]
fn bodies_are_zero_copy_slices_of_the_read_buffer() {
    let frame = Frame::ChunkFetchSuccess {
        id: StreamChunkId {
            stream_id: 1,
            chunk_index: 0,
        },
        body: Bytes::from(vec![7u8; 100]),
    };
    let mut b = buf(&frame_bytes(&frame));
    let start = b.as_ptr() as usize;
    let Some(Frame::ChunkFetchSuccess { body, .. }) = decode(&mut b, MAX).unwrap() else {
        panic!("wrong frame")
    };
    assert_eq!(body.as_ptr() as usize, start + 21);
}

#[test]
fn incomplete_input_consumes_nothing() {
    let bytes = frame_bytes(&Frame::RpcFailure {
        request_id: 1,
        error: s("boom"),
    });
    for len in 0..bytes.len() {
        let mut b = buf(&bytes[..len]);
        assert_eq!(decode(&mut b, MAX), Ok(None), "{len}");
        assert_eq!(b.len(), len);
    }
}

#[test]
fn oversized_frame_is_refused_from_the_length_field_alone() {
    let mut b = BytesMut::with_capacity(8);
    b.put_i64(MAX as i64 + 1);
    let cap = b.capacity();
    assert_eq!(
        decode(&mut b, MAX),
        Err(Error::FrameTooLarge {
            len: MAX as i64 + 1,
            max: MAX
        })
    );
    assert_eq!(
        b.capacity(),
        cap,
        "nothing may be reserved for a refused frame"
    );
    assert_eq!(b.len(), 8);

    // Spark's largest legal frame is still refused by our own limit.
    let mut b = buf(&(MAX_SPARK_FRAME_LEN_BYTES as i64).to_be_bytes());
    assert!(matches!(
        decode(&mut b, DEFAULT_MAX_FRAME_LEN_BYTES),
        Err(Error::FrameTooLarge { .. })
    ));
    assert!(b.capacity() < 1024);
}

#[test]
fn incomplete_frame_within_limit_reserves_its_length() {
    let mut b = BytesMut::new();
    b.put_i64(MAX as i64);
    assert_eq!(decode(&mut b, MAX), Ok(None));
    assert!(b.capacity() >= MAX);
    assert_eq!(b.len(), 8);
}

#[test]
fn invalid_lengths_are_refused() {
    for len in [
        0,
        1,
        8,
        -1,
        -9,
        i64::MIN,
        i64::MAX,
        MAX_SPARK_FRAME_LEN_BYTES as i64 + 1,
        (1 << 31) + 7,
        1 << 40,
    ] {
        let mut b = buf(&len.to_be_bytes());
        assert_eq!(
            decode(&mut b, usize::MAX),
            Err(Error::InvalidFrameLength { len }),
            "{len}"
        );
    }
    // The boundaries themselves are valid.
    let mut b = buf(&(MAX_SPARK_FRAME_LEN_BYTES as i64).to_be_bytes());
    assert!(matches!(
        decode(&mut b, 0),
        Err(Error::FrameTooLarge { .. })
    ));
    assert_eq!(MAX_SPARK_FRAME_LEN_BYTES, 2_147_483_654);
}

#[test]
fn nine_byte_frame_has_only_a_type() {
    // Length 9 is legal for the transport, but every type has header fields, so each fails
    // on its first one.
    for ty in 0..=12u8 {
        let mut b = header(9, ty);
        let res = decode(&mut b, MAX);
        assert!(
            matches!(res, Err(Error::Truncated { .. })),
            "type {ty}: {res:?}"
        );
        assert!(b.is_empty(), "the complete frame is consumed");
    }
}

#[test]
fn unknown_frame_types_are_refused() {
    for ty in [13u8, 0x7f, 0xff] {
        let mut b = header(9, ty);
        assert_eq!(decode(&mut b, MAX), Err(Error::UnknownFrameType { ty }));
    }
}

#[test]
fn body_length_must_match_the_frame() {
    for (ty, extra_header) in [(3u8, 8usize), (4, 8), (9, 0)] {
        for (declared, actual) in [(2i32, 3usize), (4, 3), (-1, 0), (i32::MAX, 1)] {
            let mut b = header((9 + extra_header + 4 + actual) as i64, ty);
            b.put_bytes(0, extra_header);
            b.put_i32(declared);
            b.put_bytes(0xab, actual);
            let res = decode(&mut b, MAX);
            assert!(
                matches!(
                    res,
                    Err(Error::Malformed { .. } | Error::NegativeLength { .. })
                ),
                "type {ty} declared {declared} actual {actual}: {res:?}"
            );
        }
    }
}

#[test]
fn truncated_and_negative_fields() {
    // RpcFailure with a string longer than the frame.
    let mut b = header(9 + 8 + 4 + 2, 5);
    b.put_i64(1);
    b.put_i32(100);
    b.put_slice(b"ab");
    assert_eq!(
        decode(&mut b, MAX),
        Err(Error::Truncated {
            what: "RpcFailure.errorString",
            needed: 100,
            remaining: 2
        })
    );

    // StreamRequest with a negative string length.
    let mut b = header(9 + 4, 6);
    b.put_i32(-5);
    assert_eq!(
        decode(&mut b, MAX),
        Err(Error::NegativeLength {
            what: "StreamRequest.streamId",
            len: -5
        })
    );

    // StreamResponse and UploadStream with negative out-of-frame byte counts.
    let mut b = header(9 + 4 + 8, 7);
    b.put_i32(0);
    b.put_i64(-1);
    assert!(matches!(decode(&mut b, MAX), Err(Error::Malformed { .. })));
    let mut b = header(9 + 8 + 4 + 8, 10);
    b.put_i64(0);
    b.put_i32(0);
    b.put_i64(i64::MIN);
    assert!(matches!(decode(&mut b, MAX), Err(Error::Malformed { .. })));

    // Invalid UTF-8 in an error string.
    let mut b = header(9 + 4 + 4 + 1, 8);
    b.put_i32(0);
    b.put_i32(1);
    b.put_u8(0xff);
    assert_eq!(
        decode(&mut b, MAX),
        Err(Error::InvalidUtf8 {
            what: "StreamFailure.error"
        })
    );
}

#[test]
fn trailing_bytes_after_bodiless_headers_are_ignored() {
    let mut b = header(9 + 12 + 3, 0);
    b.put_i64(5);
    b.put_i32(1);
    b.put_slice(b"xyz");
    assert_eq!(
        decode(&mut b, MAX),
        Ok(Some(Frame::ChunkFetchRequest(StreamChunkId {
            stream_id: 5,
            chunk_index: 1
        })))
    );
    assert!(b.is_empty());
}

#[test]
fn chunk_success_header_limits() {
    let id = StreamChunkId {
        stream_id: 1,
        chunk_index: 2,
    };
    let largest = MAX_SPARK_FRAME_LEN_BYTES - 21;
    assert_eq!(largest, 2_147_483_633);
    let mut dst = BytesMut::new();
    encode_chunk_success_header(id, largest, &mut dst).unwrap();
    assert_eq!(dst.len(), 21);
    assert_eq!(
        i64::from_be_bytes(dst[..8].try_into().unwrap()),
        2_147_483_654
    );
    // Such a frame passes the length check when the limit allows it.
    assert_eq!(
        check_frame_len(2_147_483_654, usize::MAX),
        Ok(2_147_483_654)
    );

    let mut dst = BytesMut::new();
    for too_big in [largest + 1, u64::MAX, 1 << 31] {
        assert_eq!(
            encode_chunk_success_header(id, too_big, &mut dst),
            Err(Error::BodyTooLarge { len: too_big })
        );
        assert!(dst.is_empty());
    }

    let mut dst = BytesMut::new();
    encode_chunk_success_header(id, 0, &mut dst).unwrap();
    assert_eq!(
        decode(&mut dst, MAX),
        Ok(Some(Frame::ChunkFetchSuccess {
            id,
            body: Bytes::new()
        }))
    );
}

#[test]
fn stream_response_header_matches_encode() {
    let mut dst = BytesMut::new();
    encode_stream_response_header("123_4", 1 << 40, &mut dst);
    assert_eq!(
        dst.as_ref(),
        frame_bytes(&Frame::StreamResponse {
            stream_id: s("123_4"),
            byte_count: 1 << 40
        })
    );
    let mut dst = BytesMut::new();
    encode_stream_response_header("x", u64::MAX, &mut dst);
    let Ok(Some(Frame::StreamResponse { byte_count, .. })) = decode(&mut dst, MAX) else {
        panic!("no frame")
    };
    assert_eq!(byte_count, i64::MAX);
}

#[test]
fn stream_request_ids() {
    assert_eq!(
        StreamChunkId::parse_stream_request("72623859790382856_0"),
        Ok(StreamChunkId {
            stream_id: 72_623_859_790_382_856,
            chunk_index: 0
        })
    );
    let id = StreamChunkId {
        stream_id: 7,
        chunk_index: 12,
    };
    assert_eq!(id.to_string(), "7_12");
    assert_eq!(StreamChunkId::parse_stream_request(&id.to_string()), Ok(id));
    for bad in [
        "",
        "7",
        "7_",
        "_1",
        "7_1_2",
        "-7_1",
        "7_-1",
        "7_2147483648",
        "a_1",
        "7 _1",
    ] {
        assert!(
            matches!(
                StreamChunkId::parse_stream_request(bad),
                Err(Error::Malformed {
                    what: "StreamRequest.streamId",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn type_names_are_distinct() {
    let mut names: Vec<_> = all_variants().iter().map(Frame::type_name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 13);
}

#[test]
fn tls_and_http_openings_are_named_not_quoted_as_lengths() {
    // A TLS 1.2/1.3 ClientHello record header, as Spark 4 sends with spark.ssl.rpc.enabled.
    let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    let got = decode(&mut buf(&hello), MAX).unwrap_err();
    assert!(
        matches!(
            got,
            Error::OtherProtocol {
                protocol: "TLS",
                ..
            }
        ),
        "{got:?}"
    );
    assert!(got.to_string().contains("--tls-cert-file"), "{got}");
    for req in [
        &b"GET /metrics HTTP/1.1\r\n"[..],
        b"POST /v1/apps HTTP/1.1",
        b"PRI * HTTP/2.0",
    ] {
        let got = decode(&mut buf(req), MAX).unwrap_err();
        assert!(
            matches!(
                got,
                Error::OtherProtocol {
                    protocol: "HTTP",
                    ..
                }
            ),
            "{got:?}"
        );
    }
    // Other invalid lengths stay what they are. (A valid length starts with four zero
    // bytes, so it can never look like either.)
    let near = i64::from_be_bytes([0x16, 0x05, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        decode(&mut buf(&near.to_be_bytes()), MAX),
        Err(Error::InvalidFrameLength { len: near })
    );
}
