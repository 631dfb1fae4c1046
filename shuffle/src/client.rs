//! A minimal client of Spark's shuffle protocol, for tests, benchmarks and tooling: one
//! connection, requests answered in order. It is not Spark's client (no retries, no
//! pipelining beyond what the caller does) and the daemon never uses it.
//!
//! With `spark.authenticate` on the server, [`Client::connect_authenticated`] (or
//! [`Client::authenticate`] on a connected client) runs Spark's AuthEngine handshake
//! ([`crate::auth::ClientAuth`], protocol §6.2) as Spark's executors do, and from then on
//! every byte goes through the negotiated [`TransportCipher`] (AES-CTR or AES-GCM, §6.3/§6.4).
//! The SASL fallback (§6.5) is not offered: the server's side of it is tested with
//! [`crate::auth::SaslClient`] directly.
//!
//! [`Client::connect_tls`] speaks TLS first (Spark 4's `spark.ssl.rpc.*`), layered as Spark's
//! Netty pipeline layers it: the auth handshake inside TLS, and the transport cipher it sets
//! up outside TLS, next to the socket (AES of TLS records of frames).
//!
//! Every read waits at most [`DEFAULT_READ_TIMEOUT`] (see [`Client::set_read_timeout`]), so a
//! server that never answers fails the caller instead of hanging it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{self, AuthEngineVersion, CipherMode, ClientAuth, Secret, TransportCipher};
use crate::wire::{self, ExecutorShuffleInfo, Frame, Message, StreamChunkId};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

/// Largest frame the client accepts (chunk replies carry whole blocks).
const MAX_REPLY_FRAME_BYTES: usize = i32::MAX as usize;

/// How long one socket read may wait unless [`Client::set_read_timeout`] says otherwise.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Authentication failed on this side: the server's handshake reply does not verify with
    /// our secret (the server has another one), or its encrypted bytes do not open. A
    /// refusal by the server comes as [`Error::Failure`] with its text.
    #[error("authentication: {0}")]
    Auth(#[from] auth::Error),
    /// Nothing arrived within the read timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (an untrusted certificate, say) or a record did not verify.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// What a client authenticates with (`spark.authenticate`). Both sides must agree on
/// `version` and `cipher`, which the handshake does not carry (as in Spark).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The application the connection acts for (Spark's `spark.app.id`).
    pub app_id: String,
    /// The application's shared secret.
    pub secret: Secret,
    /// `spark.network.crypto.authEngineVersion` (default 1, as Spark's).
    pub version: AuthEngineVersion,
    /// `spark.network.crypto.cipher` (default AES-CTR, as Spark's).
    pub cipher: CipherMode,
}

// === impl Credentials ===

impl Credentials {
    /// Credentials of `app_id` with Spark's default engine version and cipher.
    pub fn new(app_id: impl Into<String>, secret: Secret) -> Self {
        Credentials {
            app_id: app_id.into(),
            secret,
            version: AuthEngineVersion::default(),
            cipher: CipherMode::default(),
        }
    }

    /// The same credentials with another `spark.network.crypto.cipher`.
    pub fn with_cipher(mut self, cipher: CipherMode) -> Self {
        self.cipher = cipher;
        self
    }

    /// The same credentials with another `spark.network.crypto.authEngineVersion`.
    pub fn with_version(mut self, version: AuthEngineVersion) -> Self {
        self.version = version;
        self
    }
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
    /// Received bytes in clear, not yet decoded.
    rbuf: BytesMut,
    /// After authentication: the transport cipher, and received bytes not yet opened.
    cipher: Option<(TransportCipher, BytesMut)>,
    /// With TLS: the session, and received records not yet handed to it.
    tls: Option<(rustls::ClientConnection, BytesMut)>,
    read_timeout: Duration,
    next_request_id: i64,
}

// === impl Client ===

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
            cipher: None,
            tls: None,
            read_timeout: DEFAULT_READ_TIMEOUT,
            next_request_id: 1,
        })
    }

    /// Connects to `addr` and runs a TLS handshake as `server_name` with `config` (whose root
    /// certificates decide whether the server is trusted); everything after goes through it.
    ///
    /// # Errors
    /// As [`Client::connect`]; [`Error::Tls`] when the handshake fails.
    pub async fn connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<Self, Error> {
        let mut client = Self::connect(addr).await?;
        let session = rustls::ClientConnection::new(config, server_name)?;
        client.tls = Some((session, BytesMut::new()));
        loop {
            client.send_raw(&[]).await?;
            if !client.tls.as_ref().is_some_and(|(s, _)| s.is_handshaking()) {
                return Ok(client);
            }
            client.fill().await?;
        }
    }

    /// Connects to `addr` and authenticates with `credentials` (see [`Client::authenticate`]).
    ///
    /// # Errors
    /// As [`Client::connect`] and [`Client::authenticate`].
    pub async fn connect_authenticated(
        addr: SocketAddr,
        credentials: &Credentials,
    ) -> Result<Self, Error> {
        let mut client = Self::connect(addr).await?;
        client.authenticate(credentials).await?;
        Ok(client)
    }

    /// Runs Spark's AuthEngine handshake as `credentials.app_id`: the challenge goes in an
    /// `RpcRequest`, the server's response comes back in clear, and from then on every byte
    /// either way goes through the negotiated transport cipher. Call it first, before any
    /// other request (a server with auth on refuses and closes anything else).
    ///
    /// # Errors
    /// [`Error::Failure`] with the server's text when it refuses (unknown app, wrong secret);
    /// [`Error::Auth`] when its response does not verify with our secret; transport errors.
    pub async fn authenticate(&mut self, credentials: &Credentials) -> Result<(), Error> {
        let (state, challenge) = ClientAuth::challenge(
            &credentials.app_id,
            credentials.secret.clone(),
            credentials.version,
            &mut auth::fill_random,
        )?;
        let response = self.rpc_raw(Bytes::from(challenge)).await?;
        let cipher = state.with_cipher(credentials.cipher).finish(&response)?;
        // Whatever arrived after the response is already ciphertext (of records, with TLS).
        let pending = match &mut self.tls {
            Some((_, records)) => records.split(),
            None => self.rbuf.split(),
        };
        self.cipher = Some((cipher, pending));
        self.open_pending()
    }

    /// Whether [`Client::authenticate`] succeeded on this connection.
    pub fn is_authenticated(&self) -> bool {
        self.cipher.is_some()
    }

    /// How long each socket read may wait ([`DEFAULT_READ_TIMEOUT`] until set).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.read_timeout = timeout;
    }

    /// Writes raw bytes (for tests of malformed input); with TLS, and after authentication,
    /// they are encrypted like everything else. With TLS, anything the session has pending
    /// (handshake messages) goes out too, also when `bytes` is empty.
    ///
    /// # Errors
    /// On socket errors.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let records;
        let bytes = match &mut self.tls {
            None => bytes,
            Some((session, _)) => {
                let mut out = BytesMut::new();
                crate::tls::seal_records(session, bytes, &mut out)?;
                records = out;
                &records[..]
            }
        };
        if bytes.is_empty() {
            return Ok(());
        }
        match &mut self.cipher {
            None => self.socket.write_all(bytes).await?,
            Some((cipher, _)) => {
                let mut sealed = BytesMut::with_capacity(bytes.len() + 64);
                cipher.seal(bytes, &mut auth::fill_random, &mut sealed)?;
                self.socket.write_all(&sealed).await?;
            }
        }
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

    /// Reads more bytes from the socket into `rbuf` (through the cipher once authenticated,
    /// then TLS).
    async fn fill(&mut self) -> Result<(), Error> {
        let into = match (&mut self.cipher, &mut self.tls) {
            (Some((_, sealed)), _) => sealed,
            (None, Some((_, records))) => records,
            (None, None) => &mut self.rbuf,
        };
        into.reserve(64 * 1024);
        let read = tokio::time::timeout(self.read_timeout, self.socket.read_buf(into))
            .await
            .map_err(|_| Error::Timeout(self.read_timeout))??;
        if read == 0 {
            return Err(Error::Closed);
        }
        self.open_pending()
    }

    /// Moves what the cipher and TLS can open of the received bytes to `rbuf`.
    fn open_pending(&mut self) -> Result<(), Error> {
        if let Some((cipher, sealed)) = &mut self.cipher {
            let into = match &mut self.tls {
                Some((_, records)) => records,
                None => &mut self.rbuf,
            };
            cipher.open(sealed, into)?;
        }
        if let Some((session, records)) = &mut self.tls {
            crate::tls::open_records::<_, Error>(session, records, &mut self.rbuf)?;
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
