//! Transport frames (§1.2–§1.4): `i64 frameLength` (the 8 length bytes included), `u8 type`,
//! the type's header fields, then an in-frame body for some types.
//!
//! Invariants:
//! - [`decode`] checks the length field as soon as its 8 bytes are buffered, refusing lengths
//!   outside Spark's rule ([`Error::InvalidFrameLength`]) or above the caller's limit
//!   ([`Error::FrameTooLarge`]) before buffering or reserving anything for the rest.
//! - In-frame bodies are zero-copy slices of the read buffer (`split_to().freeze()`).
//! - `StreamResponse` and `UploadStream` bodies follow their frame *out of frame*: [`decode`]
//!   leaves them in the buffer and [`encode`] does not write them; the caller moves exactly
//!   `byte_count` / `body_byte_count` bytes itself.
//! - Like Spark's decoders, [`decode`] ignores bytes left after the header fields of a type
//!   without an in-frame body. The `bodyLength` field of `RpcRequest`, `RpcResponse` and
//!   `OneWayMessage` must equal the rest of the frame (Spark ignores it; we are strict).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::Error;
use super::block_id::parse_decimal;
use super::reader::Reader;
use super::writer::{prefixed_len, put_bytes, put_string};

/// Bytes before a frame's type-specific header: the `i64` length and the `u8` type.
pub const FRAME_HEADER_LEN_BYTES: usize = 9;

/// Bytes of the frame length field.
const LENGTH_FIELD_BYTES: usize = 8;

/// Bytes of an encoded [`StreamChunkId`].
const STREAM_CHUNK_ID_BYTES: usize = 12;

/// Largest valid `frameLength`: Spark requires `frameLength - 8 < i32::MAX` (§1.2).
pub const MAX_SPARK_FRAME_LEN_BYTES: u64 = i32::MAX as u64 - 1 + LENGTH_FIELD_BYTES as u64;

/// The chunk a `ChunkFetch*` frame is about: `i64 streamId` + `i32 chunkIndex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamChunkId {
    /// Stream id chosen by the server when the stream was registered (§3.2).
    pub stream_id: i64,
    /// Index of the chunk inside the stream, from 0.
    pub chunk_index: i32,
}

/// One transport frame. Type ids are in the comments and [`Frame::type_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// 0, C→S: fetch one chunk of a stream.
    ChunkFetchRequest(StreamChunkId),
    /// 1, S→C: the chunk's bytes, in frame.
    ChunkFetchSuccess {
        /// The chunk.
        id: StreamChunkId,
        /// The chunk's bytes (the rest of the frame).
        body: Bytes,
    },
    /// 2, S→C: the chunk could not be served.
    ChunkFetchFailure {
        /// The chunk.
        id: StreamChunkId,
        /// Free-text reason.
        error: String,
    },
    /// 3, C→S: an RPC whose payload is a block-transfer message (or an auth message).
    RpcRequest {
        /// Id chosen by the client, echoed in the reply.
        request_id: i64,
        /// The payload.
        body: Bytes,
    },
    /// 4, S→C: successful RPC reply.
    RpcResponse {
        /// The request's id.
        request_id: i64,
        /// The reply payload (may be empty).
        body: Bytes,
    },
    /// 5, S→C: failed RPC.
    RpcFailure {
        /// The request's id.
        request_id: i64,
        /// Free-text reason.
        error: String,
    },
    /// 6, C→S: fetch a chunk as a stream; `stream_id` is `"<streamId>_<chunkIndex>"` (§3.6).
    StreamRequest {
        /// The requested stream chunk, see [`StreamChunkId::parse_stream_request`].
        stream_id: String,
    },
    /// 7, S→C. The `byte_count` body bytes follow the frame OUT OF FRAME; decode does not
    /// consume them, encode does not write them.
    StreamResponse {
        /// The requested stream id, echoed.
        stream_id: String,
        /// Number of raw bytes after the frame.
        byte_count: i64,
    },
    /// 8, S→C: the stream chunk could not be served.
    StreamFailure {
        /// The requested stream id, echoed.
        stream_id: String,
        /// Free-text reason.
        error: String,
    },
    /// 9, C→S: an RPC without reply.
    OneWayMessage {
        /// The payload.
        body: Bytes,
    },
    /// 10, C→S. Body follows out of frame, as [`Frame::StreamResponse`].
    UploadStream {
        /// Id chosen by the client, echoed in the reply.
        request_id: i64,
        /// An encoded block-transfer message describing the body.
        meta: Bytes,
        /// Number of raw bytes after the frame.
        body_byte_count: i64,
    },
    /// 11, C→S: meta of a push-merged block (push-based shuffle only).
    MergedBlockMetaRequest {
        /// Id chosen by the client, echoed in the reply.
        request_id: i64,
        /// Application id.
        app_id: String,
        /// Shuffle id.
        shuffle_id: i32,
        /// Merge id of the shuffle.
        shuffle_merge_id: i32,
        /// Reduce partition.
        reduce_id: i32,
    },
    /// 12, S→C: reply to [`Frame::MergedBlockMetaRequest`].
    MergedBlockMetaSuccess {
        /// The request's id.
        request_id: i64,
        /// Number of chunks of the merged block.
        num_chunks: i32,
        /// Concatenated roaring bitmaps (the rest of the frame).
        body: Bytes,
    },
}

// === impl StreamChunkId ===

impl StreamChunkId {
    /// Parses a `StreamRequest` stream id, `"<streamId>_<chunkIndex>"` in decimal (§3.6).
    /// Both numbers must be non-negative, without sign or leading zeros.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the string has another shape.
    pub fn parse_stream_request(s: &str) -> Result<StreamChunkId, Error> {
        let malformed = |detail: &str| Error::Malformed {
            what: "StreamRequest.streamId",
            detail: detail.to_owned(),
        };
        let (stream, chunk) = s
            .split_once('_')
            .ok_or_else(|| malformed("expected \"<streamId>_<chunkIndex>\""))?;
        let stream_id = parse_decimal::<i64>(stream).map_err(malformed)?;
        let chunk_index = parse_decimal::<i32>(chunk).map_err(malformed)?;
        Ok(StreamChunkId {
            stream_id,
            chunk_index,
        })
    }
}

/// Formats as a `StreamRequest` stream id, `"<streamId>_<chunkIndex>"`.
impl fmt::Display for StreamChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.stream_id, self.chunk_index)
    }
}

// === impl Frame ===

impl Frame {
    /// Spark's name of the frame type, e.g. `"RpcRequest"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Frame::ChunkFetchRequest(_) => "ChunkFetchRequest",
            Frame::ChunkFetchSuccess { .. } => "ChunkFetchSuccess",
            Frame::ChunkFetchFailure { .. } => "ChunkFetchFailure",
            Frame::RpcRequest { .. } => "RpcRequest",
            Frame::RpcResponse { .. } => "RpcResponse",
            Frame::RpcFailure { .. } => "RpcFailure",
            Frame::StreamRequest { .. } => "StreamRequest",
            Frame::StreamResponse { .. } => "StreamResponse",
            Frame::StreamFailure { .. } => "StreamFailure",
            Frame::OneWayMessage { .. } => "OneWayMessage",
            Frame::UploadStream { .. } => "UploadStream",
            Frame::MergedBlockMetaRequest { .. } => "MergedBlockMetaRequest",
            Frame::MergedBlockMetaSuccess { .. } => "MergedBlockMetaSuccess",
        }
    }

    /// The frame's type byte (§1.4).
    pub fn type_id(&self) -> u8 {
        match self {
            Frame::ChunkFetchRequest(_) => 0,
            Frame::ChunkFetchSuccess { .. } => 1,
            Frame::ChunkFetchFailure { .. } => 2,
            Frame::RpcRequest { .. } => 3,
            Frame::RpcResponse { .. } => 4,
            Frame::RpcFailure { .. } => 5,
            Frame::StreamRequest { .. } => 6,
            Frame::StreamResponse { .. } => 7,
            Frame::StreamFailure { .. } => 8,
            Frame::OneWayMessage { .. } => 9,
            Frame::UploadStream { .. } => 10,
            Frame::MergedBlockMetaRequest { .. } => 11,
            Frame::MergedBlockMetaSuccess { .. } => 12,
        }
    }

    /// Bytes [`encode`] appends for this frame: its `frameLength`, the 8 length bytes
    /// included and any out-of-frame body excluded.
    pub fn encoded_len(&self) -> u64 {
        let fields = match self {
            Frame::ChunkFetchRequest(_) => STREAM_CHUNK_ID_BYTES,
            Frame::ChunkFetchSuccess { body, .. } => STREAM_CHUNK_ID_BYTES + body.len(),
            Frame::ChunkFetchFailure { error, .. } => {
                STREAM_CHUNK_ID_BYTES + prefixed_len(error.len())
            }
            Frame::RpcRequest { body, .. } | Frame::RpcResponse { body, .. } => {
                8 + prefixed_len(body.len())
            }
            Frame::RpcFailure { error, .. } => 8 + prefixed_len(error.len()),
            Frame::StreamRequest { stream_id } => prefixed_len(stream_id.len()),
            Frame::StreamResponse { stream_id, .. } => prefixed_len(stream_id.len()) + 8,
            Frame::StreamFailure { stream_id, error } => {
                prefixed_len(stream_id.len()) + prefixed_len(error.len())
            }
            Frame::OneWayMessage { body } => prefixed_len(body.len()),
            Frame::UploadStream { meta, .. } => 8 + prefixed_len(meta.len()) + 8,
            Frame::MergedBlockMetaRequest { app_id, .. } => 8 + prefixed_len(app_id.len()) + 12,
            Frame::MergedBlockMetaSuccess { body, .. } => 8 + 4 + body.len(),
        };
        (FRAME_HEADER_LEN_BYTES as u64).saturating_add(fields as u64)
    }
}

/// Checks a `frameLength` field against Spark's rule and the caller's limit, returning it as a
/// buffer length.
fn check_frame_len(len: i64, max_frame_len: usize) -> Result<usize, Error> {
    let valid = u64::try_from(len)
        .is_ok_and(|l| l >= FRAME_HEADER_LEN_BYTES as u64 && l <= MAX_SPARK_FRAME_LEN_BYTES);
    let frame_len = usize::try_from(len).ok().filter(|_| valid).ok_or_else(|| {
        other_protocol(len.to_be_bytes()).unwrap_or(Error::InvalidFrameLength { len })
    })?;
    if frame_len > max_frame_len {
        return Err(Error::FrameTooLarge {
            len,
            max: max_frame_len,
        });
    }
    Ok(frame_len)
}

/// [`Error::OtherProtocol`] if the 8 bytes of an invalid length field open a TLS handshake
/// record (content type 22, version 3.x) or an HTTP request.
fn other_protocol(head: [u8; LENGTH_FIELD_BYTES]) -> Option<Error> {
    const HTTP_STARTS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"PRI * ",
    ];
    if head[0] == 0x16 && head[1] == 0x03 && head[2] <= 0x04 {
        return Some(Error::OtherProtocol {
            protocol: "TLS",
            hint: "this daemon was started without TLS; to serve Spark's spark.ssl.rpc.enabled, \
                   start it with --tls-cert-file and --tls-key-file",
        });
    }
    if HTTP_STARTS.iter().any(|m| head.starts_with(m)) {
        return Some(Error::OtherProtocol {
            protocol: "HTTP",
            hint: "this is the shuffle port; /metrics and the admin endpoints are on the admin \
                   port (--admin-port)",
        });
    }
    None
}

/// Decode one frame from the front of `buf`.
///
/// `Ok(None)` means incomplete: nothing was consumed, and once the length field is there the
/// buffer has been reserved for the rest of the frame (only after the limit check). On
/// `Ok(Some)` exactly the frame's bytes are consumed; in-frame bodies are zero-copy slices of
/// them. Out-of-frame bodies (`StreamResponse`, `UploadStream`) stay in `buf`.
///
/// # Errors
///
/// [`Error::InvalidFrameLength`] (or [`Error::OtherProtocol`] when it names the protocol the
/// bytes are) or [`Error::FrameTooLarge`] as soon as the 8 length bytes are there (nothing
/// consumed); for a complete frame, [`Error::UnknownFrameType`] or a field
/// error. After an error the stream cannot be resynchronised: close the connection. A
/// complete frame that fails to decode has been consumed.
pub fn decode(buf: &mut BytesMut, max_frame_len: usize) -> Result<Option<Frame>, Error> {
    let Some(len_bytes) = buf.first_chunk::<LENGTH_FIELD_BYTES>() else {
        return Ok(None);
    };
    let frame_len = check_frame_len(i64::from_be_bytes(*len_bytes), max_frame_len)?;
    if buf.len() < frame_len {
        buf.reserve(frame_len - buf.len());
        return Ok(None);
    }
    let frame = buf.split_to(frame_len).freeze();
    parse(&frame).map(Some)
}

/// Parses one complete frame (length field included).
fn parse(frame: &Bytes) -> Result<Frame, Error> {
    let mut r = Reader::new(frame);
    r.take(LENGTH_FIELD_BYTES, "frame length")?;
    let ty = r.get_u8("frame type")?;
    let frame = match ty {
        0 => Frame::ChunkFetchRequest(get_chunk_id(&mut r, "ChunkFetchRequest")?),
        1 => Frame::ChunkFetchSuccess {
            id: get_chunk_id(&mut r, "ChunkFetchSuccess")?,
            body: rest(frame, &r),
        },
        2 => Frame::ChunkFetchFailure {
            id: get_chunk_id(&mut r, "ChunkFetchFailure")?,
            error: r.get_string("ChunkFetchFailure.errorString")?,
        },
        3 => Frame::RpcRequest {
            request_id: r.get_i64("RpcRequest.requestId")?,
            body: get_sized_body(frame, &mut r, "RpcRequest.bodyLength")?,
        },
        4 => Frame::RpcResponse {
            request_id: r.get_i64("RpcResponse.requestId")?,
            body: get_sized_body(frame, &mut r, "RpcResponse.bodyLength")?,
        },
        5 => Frame::RpcFailure {
            request_id: r.get_i64("RpcFailure.requestId")?,
            error: r.get_string("RpcFailure.errorString")?,
        },
        6 => Frame::StreamRequest {
            stream_id: r.get_string("StreamRequest.streamId")?,
        },
        7 => Frame::StreamResponse {
            stream_id: r.get_string("StreamResponse.streamId")?,
            byte_count: get_byte_count(&mut r, "StreamResponse.byteCount")?,
        },
        8 => Frame::StreamFailure {
            stream_id: r.get_string("StreamFailure.streamId")?,
            error: r.get_string("StreamFailure.error")?,
        },
        9 => Frame::OneWayMessage {
            body: get_sized_body(frame, &mut r, "OneWayMessage.bodyLength")?,
        },
        10 => Frame::UploadStream {
            request_id: r.get_i64("UploadStream.requestId")?,
            meta: frame.slice_ref(r.get_bytes("UploadStream.meta")?),
            body_byte_count: get_byte_count(&mut r, "UploadStream.bodyByteCount")?,
        },
        11 => Frame::MergedBlockMetaRequest {
            request_id: r.get_i64("MergedBlockMetaRequest.requestId")?,
            app_id: r.get_string("MergedBlockMetaRequest.appId")?,
            shuffle_id: r.get_i32("MergedBlockMetaRequest.shuffleId")?,
            shuffle_merge_id: r.get_i32("MergedBlockMetaRequest.shuffleMergeId")?,
            reduce_id: r.get_i32("MergedBlockMetaRequest.reduceId")?,
        },
        12 => Frame::MergedBlockMetaSuccess {
            request_id: r.get_i64("MergedBlockMetaSuccess.requestId")?,
            num_chunks: r.get_i32("MergedBlockMetaSuccess.numChunks")?,
            body: rest(frame, &r),
        },
        ty => return Err(Error::UnknownFrameType { ty }),
    };
    Ok(frame)
}

/// The unread rest of `frame` as a zero-copy slice. `r` reads `frame`.
fn rest(frame: &Bytes, r: &Reader<'_>) -> Bytes {
    frame.slice_ref(r.rest())
}

/// A [`StreamChunkId`].
fn get_chunk_id(r: &mut Reader<'_>, what: &'static str) -> Result<StreamChunkId, Error> {
    Ok(StreamChunkId {
        stream_id: r.get_i64(what)?,
        chunk_index: r.get_i32(what)?,
    })
}

/// An `i32 bodyLength` followed by the body, which must be exactly the rest of the frame.
fn get_sized_body(frame: &Bytes, r: &mut Reader<'_>, what: &'static str) -> Result<Bytes, Error> {
    let len = r.get_len(what)?;
    if len != r.remaining() {
        return Err(Error::Malformed {
            what,
            detail: format!(
                "bodyLength is {len} but the frame carries {} body bytes",
                r.remaining()
            ),
        });
    }
    Ok(rest(frame, r))
}

/// A non-negative `i64` count of out-of-frame bytes.
fn get_byte_count(r: &mut Reader<'_>, what: &'static str) -> Result<i64, Error> {
    let n = r.get_i64(what)?;
    if n < 0 {
        return Err(Error::Malformed {
            what,
            detail: format!("negative byte count {n}"),
        });
    }
    Ok(n)
}

/// Append the complete frame (8-byte length included) to `dst`. Bodies for Rpc*/OneWay
/// bodyLength fields written correctly. Out-of-frame bodies are not written.
///
/// A frame too large for Spark (in-frame parts of 2 GiB or more) is written with its `i32`
/// length fields saturated and is refused by the peer; use [`try_encode`] where that size is
/// possible.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    let len = frame.encoded_len();
    if let Ok(len) = usize::try_from(len) {
        dst.reserve(len);
    }
    dst.put_i64(i64::try_from(len).unwrap_or(i64::MAX));
    dst.put_u8(frame.type_id());
    match frame {
        Frame::ChunkFetchRequest(id) => put_chunk_id(dst, *id),
        Frame::ChunkFetchSuccess { id, body } => {
            put_chunk_id(dst, *id);
            dst.put_slice(body);
        }
        Frame::ChunkFetchFailure { id, error } => {
            put_chunk_id(dst, *id);
            put_string(dst, error);
        }
        Frame::RpcRequest { request_id, body } | Frame::RpcResponse { request_id, body } => {
            dst.put_i64(*request_id);
            put_bytes(dst, body);
        }
        Frame::RpcFailure { request_id, error } => {
            dst.put_i64(*request_id);
            put_string(dst, error);
        }
        Frame::StreamRequest { stream_id } => put_string(dst, stream_id),
        Frame::StreamResponse {
            stream_id,
            byte_count,
        } => {
            put_string(dst, stream_id);
            dst.put_i64(*byte_count);
        }
        Frame::StreamFailure { stream_id, error } => {
            put_string(dst, stream_id);
            put_string(dst, error);
        }
        Frame::OneWayMessage { body } => put_bytes(dst, body),
        Frame::UploadStream {
            request_id,
            meta,
            body_byte_count,
        } => {
            dst.put_i64(*request_id);
            put_bytes(dst, meta);
            dst.put_i64(*body_byte_count);
        }
        Frame::MergedBlockMetaRequest {
            request_id,
            app_id,
            shuffle_id,
            shuffle_merge_id,
            reduce_id,
        } => {
            dst.put_i64(*request_id);
            put_string(dst, app_id);
            dst.put_i32(*shuffle_id);
            dst.put_i32(*shuffle_merge_id);
            dst.put_i32(*reduce_id);
        }
        Frame::MergedBlockMetaSuccess {
            request_id,
            num_chunks,
            body,
        } => {
            dst.put_i64(*request_id);
            dst.put_i32(*num_chunks);
            dst.put_slice(body);
        }
    }
}

/// [`encode`], refusing a frame that breaks Spark's size rule (§1.2).
///
/// # Errors
///
/// [`Error::BodyTooLarge`] (carrying the whole frame's length) if `frameLength - 8` would not be below
/// `i32::MAX`; nothing is written then.
pub fn try_encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), Error> {
    let len = frame.encoded_len();
    if len > MAX_SPARK_FRAME_LEN_BYTES {
        return Err(Error::BodyTooLarge { len });
    }
    encode(frame, dst);
    Ok(())
}

/// Writes a [`StreamChunkId`].
fn put_chunk_id(dst: &mut BytesMut, id: StreamChunkId) {
    dst.put_i64(id.stream_id);
    dst.put_i32(id.chunk_index);
}

/// Header (length, type 1, stream chunk id) of a ChunkFetchSuccess whose `body_len` body bytes
/// the caller writes itself (zero-copy sendfile).
///
/// # Errors
///
/// [`Error::BodyTooLarge`] if the frame would not fit Spark's i32 frame rule
/// (`frameLength - 8` must be < 2^31-1, so `body_len` ≤ 2147483633); nothing is written then.
pub fn encode_chunk_success_header(
    id: StreamChunkId,
    body_len: u64,
    dst: &mut BytesMut,
) -> Result<(), Error> {
    let header_len = (FRAME_HEADER_LEN_BYTES + STREAM_CHUNK_ID_BYTES) as u64;
    let frame_len = header_len.saturating_add(body_len);
    if frame_len > MAX_SPARK_FRAME_LEN_BYTES {
        return Err(Error::BodyTooLarge { len: body_len });
    }
    dst.reserve(FRAME_HEADER_LEN_BYTES + STREAM_CHUNK_ID_BYTES);
    // Cannot saturate: frame_len <= MAX_SPARK_FRAME_LEN_BYTES.
    dst.put_i64(i64::try_from(frame_len).unwrap_or(i64::MAX));
    dst.put_u8(1);
    put_chunk_id(dst, id);
    Ok(())
}

/// StreamResponse frame (`byte_count = body_len`); the caller writes the body after it.
/// A `body_len` above `i64::MAX` (impossible for a file) is written saturated.
pub fn encode_stream_response_header(stream_id: &str, body_len: u64, dst: &mut BytesMut) {
    let byte_count = i64::try_from(body_len).unwrap_or(i64::MAX);
    // Encoding a borrowed id without building a Frame (and cloning the string).
    let frame_len = FRAME_HEADER_LEN_BYTES + prefixed_len(stream_id.len()) + 8;
    dst.reserve(frame_len);
    dst.put_i64(i64::try_from(frame_len).unwrap_or(i64::MAX));
    dst.put_u8(7);
    put_string(dst, stream_id);
    dst.put_i64(byte_count);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
