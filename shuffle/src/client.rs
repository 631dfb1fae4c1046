//! A minimal client of Spark's shuffle protocol, for tests, benchmarks and tooling: one
//! connection, requests answered in order. It is not Spark's client (no retries, no
//! pipelining beyond what the caller does) and the daemon never uses it.

use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, ExecutorShuffleInfo, Frame, Message, StreamChunkId};

/// Largest frame the client accepts (chunk replies carry whole blocks).
const MAX_REPLY_FRAME_BYTES: usize = i32::MAX as usize;

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket I/O.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that do not decode.
    #[error("bad reply: {0}")]
    Wire(#[from] wire::Error),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// The server answered with a failure frame.
    #[error("server failure: {0}")]
    Failure(String),
    /// The server answered with a frame of the wrong kind.
    #[error("unexpected reply: {0:?}")]
    Unexpected(Box<Frame>),
}

/// A stream opened by `OpenBlocks`/`FetchShuffleBlocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHandle {
    /// Stream id.
    pub stream_id: i64,
    /// Number of chunks.
    pub num_chunks: i32,
}

/// One protocol connection.
#[derive(Debug)]
pub struct Client {
    socket: TcpStream,
    rbuf: BytesMut,
    next_request_id: i64,
}

impl Client {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn connect(addr: SocketAddr) -> Result<Self, Error> {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        Ok(Self {
            socket,
            rbuf: BytesMut::with_capacity(64 * 1024),
            next_request_id: 1,
        })
    }

    /// Writes raw bytes (for tests of malformed input).
    ///
    /// # Errors
    /// On socket errors.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.socket.write_all(bytes).await?;
        Ok(())
    }

    /// Writes one frame.
    ///
    /// # Errors
    /// On socket errors.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), Error> {
        let mut buf = BytesMut::new();
        wire::encode(frame, &mut buf);
        self.send_raw(&buf).await
    }

    /// Reads the next frame. For a `StreamResponse`, the out-of-frame body is read too and
    /// returned as the second value.
    ///
    /// # Errors
    /// `Closed` at end of stream, `Wire` for undecodable bytes, `Io`.
    pub async fn recv(&mut self) -> Result<(Frame, Option<Bytes>), Error> {
        loop {
            if let Some(frame) = wire::decode(&mut self.rbuf, MAX_REPLY_FRAME_BYTES)? {
                if let Frame::StreamResponse { byte_count, .. } = &frame {
                    let len = usize::try_from(*byte_count).map_err(|_| {
                        Error::Failure(format!("negative StreamResponse length {byte_count}"))
                    })?;
                    while self.rbuf.len() < len {
                        self.fill().await?;
                    }
                    let body = self.rbuf.split_to(len).freeze();
                    return Ok((frame, Some(body)));
                }
                return Ok((frame, None));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), Error> {
        self.rbuf.reserve(64 * 1024);
        if self.socket.read_buf(&mut self.rbuf).await? == 0 {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Sends an RPC with `message` and returns the reply payload.
    ///
    /// # Errors
    /// `Failure` for an `RpcFailure`, and transport errors.
    pub async fn rpc(&mut self, message: &Message) -> Result<Bytes, Error> {
        self.rpc_raw(message.to_bytes()).await
    }

    /// Sends an RPC with a raw payload and returns the reply payload.
    ///
    /// # Errors
    /// `Failure` for an `RpcFailure`, and transport errors.
    pub async fn rpc_raw(&mut self, body: Bytes) -> Result<Bytes, Error> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.send(&Frame::RpcRequest { request_id, body }).await?;
        match self.recv().await?.0 {
            Frame::RpcResponse {
                request_id: id,
                body,
            } if id == request_id => Ok(body),
            Frame::RpcFailure {
                request_id: id,
                error,
            } if id == request_id => Err(Error::Failure(error)),
            other => Err(Error::Unexpected(Box::new(other))),
        }
    }

    /// `RegisterExecutor`.
    ///
    /// # Errors
    /// As [`Client::rpc`].
    pub async fn register(
        &mut self,
        app_id: &str,
        exec_id: &str,
        local_dirs: Vec<String>,
        sub_dirs_per_local_dir: i32,
    ) -> Result<(), Error> {
        let info = ExecutorShuffleInfo {
            local_dirs,
            sub_dirs_per_local_dir,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        };
        let message = Message::RegisterExecutor {
            app_id: app_id.into(),
            exec_id: exec_id.into(),
            info,
        };
        let reply = self.rpc(&message).await?;
        if reply.is_empty() {
            Ok(())
        } else {
            Err(Error::Failure(format!(
                "non-empty RegisterExecutor reply: {reply:?}"
            )))
        }
    }

    /// Sends a request that opens a stream and returns its handle.
    ///
    /// # Errors
    /// As [`Client::rpc`], or a reply that is not a `StreamHandle`.
    pub async fn open(&mut self, message: &Message) -> Result<StreamHandle, Error> {
        let reply = self.rpc(message).await?;
        match Message::decode(&reply)? {
            Message::StreamHandle {
                stream_id,
                num_chunks,
            } => Ok(StreamHandle {
                stream_id,
                num_chunks,
            }),
            other => Err(Error::Failure(format!(
                "expected StreamHandle, got {}",
                other.type_name()
            ))),
        }
    }

    /// Fetches one chunk with `ChunkFetchRequest`.
    ///
    /// # Errors
    /// `Failure` for a `ChunkFetchFailure`, and transport errors.
    pub async fn chunk(&mut self, stream_id: i64, chunk_index: i32) -> Result<Bytes, Error> {
        let id = StreamChunkId {
            stream_id,
            chunk_index,
        };
        self.send(&Frame::ChunkFetchRequest(id)).await?;
        match self.recv().await?.0 {
            Frame::ChunkFetchSuccess { id: got, body } if got == id => Ok(body),
            Frame::ChunkFetchFailure { id: got, error } if got == id => Err(Error::Failure(error)),
            other => Err(Error::Unexpected(Box::new(other))),
        }
    }

    /// Fetches one chunk with `StreamRequest` (Spark's fetch-to-disk path).
    ///
    /// # Errors
    /// `Failure` for a `StreamFailure`, and transport errors.
    pub async fn stream(&mut self, stream_id: i64, chunk_index: i32) -> Result<Bytes, Error> {
        let name = format!("{stream_id}_{chunk_index}");
        self.send(&Frame::StreamRequest {
            stream_id: name.clone(),
        })
        .await?;
        match self.recv().await? {
            (Frame::StreamResponse { stream_id, .. }, Some(body)) if stream_id == name => Ok(body),
            (Frame::StreamFailure { stream_id, error }, _) if stream_id == name => {
                Err(Error::Failure(error))
            }
            (other, _) => Err(Error::Unexpected(Box::new(other))),
        }
    }
}
