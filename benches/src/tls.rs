//! TLS for the side-by-side runner (`compare --tls`): both services serve TLS, as with Spark
//! 4's `spark.ssl.rpc.enabled`, and the load generator speaks it.
//!
//! `kshuffled` gets a certificate made here (rcgen) through `--tls-cert-file`/`--tls-key-file`;
//! Spark's Java service a PKCS12 key store made with `keytool`, through `spark.ssl.rpc.*` as
//! Spark's own executors would configure it. The client trusts exactly those two
//! certificates (both for `localhost`), so the handshake is verified as Spark's client does.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The password of the Java service's key store (a throwaway store in the work dir).
const STORE_PASSWORD: &str = "kshuffle-bench";
/// The name both certificates are for, and the client connects as.
const SERVER_NAME: &str = "localhost";

/// What each side needs to speak TLS.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Flags for `kshuffled`.
    pub kshuffled_args: Vec<String>,
    /// `-D` options for the Java service's JVM.
    pub java_opts: String,
    /// The load generator's client config, trusting both services' certificates.
    pub client: Arc<ClientConfig>,
}

/// The TLS set-up of a run with `--tls` ([`prepare`] in `work/tls`, `skipped` said on stderr),
/// or `None`; with `kshuffled`'s flags: `extra_args` followed by the TLS ones.
///
/// # Errors
/// As [`prepare`].
pub fn for_run(
    tls: bool,
    work: &Path,
    extra_args: &[String],
    skipped: &str,
) -> anyhow::Result<(Option<Setup>, Vec<String>)> {
    let setup = if tls {
        eprintln!("TLS: both services serve it, the load generator speaks it ({skipped})");
        Some(prepare(&work.join("tls"))?)
    } else {
        None
    };
    let args = extra_args
        .iter()
        .chain(setup.iter().flat_map(|t| &t.kshuffled_args))
        .cloned()
        .collect();
    Ok((setup, args))
}

/// Makes both services' keys and certificates in `dir`.
///
/// # Errors
/// When `keytool` (from `JAVA_HOME`, else the `PATH`) fails or a file cannot be written.
pub fn prepare(dir: &Path) -> anyhow::Result<Setup> {
    std::fs::create_dir_all(dir)?;
    let ours = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
    let (cert, key) = (dir.join("kshuffled.crt"), dir.join("kshuffled.key"));
    std::fs::write(&cert, ours.cert.pem())?;
    std::fs::write(&key, ours.signing_key.serialize_pem())?;

    let store = dir.join("java.p12");
    let java_cert = dir.join("java.crt");
    let _ = std::fs::remove_file(&store);
    let (store_arg, cert_arg) = (utf8(&store)?, utf8(&java_cert)?);
    keytool(&[
        "-genkeypair",
        "-alias",
        "ess",
        "-keyalg",
        "EC",
        "-groupname",
        "secp256r1",
        "-dname",
        "CN=localhost",
        "-ext",
        "SAN=dns:localhost",
        "-validity",
        "2",
        "-storetype",
        "PKCS12",
        "-storepass",
        STORE_PASSWORD,
        "-keypass",
        STORE_PASSWORD,
        "-keystore",
        store_arg,
    ])?;
    keytool(&[
        "-exportcert",
        "-rfc",
        "-alias",
        "ess",
        "-storepass",
        STORE_PASSWORD,
        "-keystore",
        store_arg,
        "-file",
        cert_arg,
    ])?;

    let java_der = CertificateDer::from_pem_file(&java_cert)
        .with_context(|| format!("reading {}", java_cert.display()))?;
    let ours_der = CertificateDer::from(ours.cert.der().to_vec());
    let client = kshuffle::tls::client_config([ours_der, java_der])?;

    let java_opts = [
        "-Dspark.ssl.rpc.enabled=true".to_owned(),
        format!("-Dspark.ssl.rpc.keyStore={}", store.display()),
        format!("-Dspark.ssl.rpc.keyStorePassword={STORE_PASSWORD}"),
        format!("-Dspark.ssl.rpc.keyPassword={STORE_PASSWORD}"),
        "-Dspark.ssl.rpc.keyStoreType=PKCS12".to_owned(),
    ]
    .join(" ");
    Ok(Setup {
        kshuffled_args: vec![
            "--tls-cert-file".to_owned(),
            cert.display().to_string(),
            "--tls-key-file".to_owned(),
            key.display().to_string(),
        ],
        java_opts,
        client: Arc::new(client),
    })
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Runs `keytool` (the JDK's, from `JAVA_HOME` if set) with `args`.
fn keytool(args: &[&str]) -> anyhow::Result<()> {
    let keytool = std::env::var_os("JAVA_HOME").map_or_else(
        || "keytool".into(),
        |home| Path::new(&home).join("bin/keytool"),
    );
    let out = Command::new(&keytool)
        .args(args)
        .output()
        .with_context(|| format!("running {}", keytool.display()))?;
    if !out.status.success() {
        bail!(
            "keytool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A client session to `localhost` with `config`.
///
/// # Errors
/// Not with a config from [`prepare`].
pub fn session(config: &Arc<ClientConfig>) -> anyhow::Result<ClientConnection> {
    let name = ServerName::try_from(SERVER_NAME)?;
    Ok(ClientConnection::new(Arc::clone(config), name)?)
}

/// Runs the handshake of `session` over `socket`, before anything else is sent.
///
/// # Errors
/// When the server refuses it, closes, or the socket fails.
pub async fn handshake(
    socket: &mut TcpStream,
    session: &mut ClientConnection,
) -> anyhow::Result<()> {
    let mut records = BytesMut::with_capacity(32 * 1024);
    let mut plain = BytesMut::new();
    loop {
        let mut out = BytesMut::new();
        seal(session, &[], &mut out)?;
        socket.write_all(&out).await?;
        if !session.is_handshaking() {
            anyhow::ensure!(plain.is_empty(), "data from the server before any request");
            return Ok(());
        }
        if socket.read_buf(&mut records).await? == 0 {
            bail!("the server closed the connection during the TLS handshake");
        }
        open(session, &mut records, &mut plain)?;
    }
}

/// Hands the records in `records` to `session` and appends their plaintext to `plain`.
///
/// # Errors
/// When a record does not verify or the server sent an alert.
pub fn open(
    session: &mut ClientConnection,
    records: &mut BytesMut,
    plain: &mut BytesMut,
) -> anyhow::Result<()> {
    kshuffle::tls::open_records(session, records, plain)
}

/// Encrypts `plain` (and whatever the session has pending) and appends the records to `out`.
///
/// # Errors
/// When rustls fails to encrypt (not expected).
pub fn seal(
    session: &mut ClientConnection,
    plain: &[u8],
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    Ok(kshuffle::tls::seal_records(session, plain, out)?)
}
