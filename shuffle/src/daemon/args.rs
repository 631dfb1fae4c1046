//! The daemon's flags (`kshuffled`'s, and those of every binary embedding the daemon),
//! validated into the library's configuration.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use std::sync::Arc;

use crate::Config;
use crate::auth::{AuthEngineVersion, CipherMode, Layered, SecretSource};
use crate::config::AuthSettings;
use crate::secrets::{FileSecrets, SecretFormat};
use crate::store::SweepOptions;
use crate::tls::CertStore;

/// The daemon's flags, for `#[command(flatten)]` into a binary's parser.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Address to listen on.
    #[arg(long, env = "KSHUFFLE_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Port to listen on (Spark's `spark.shuffle.service.port`; 0 picks a free port).
    #[arg(long, env = "KSHUFFLE_PORT", default_value_t = 7337)]
    pub port: u16,
    /// Directory executors' local dirs must be inside (repeat or comma-separate for several).
    /// Created if missing.
    #[arg(
        long = "allowed-root",
        env = "KSHUFFLE_ALLOWED_ROOTS",
        value_delimiter = ',',
        required = true
    )]
    pub allowed_roots: Vec<PathBuf>,
    /// Where registrations are persisted (default: $XDG_STATE_HOME/kshuffle or
    /// ~/.local/state/kshuffle). Must not be inside an allowed root.
    #[arg(long, env = "KSHUFFLE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the admin HTTP port (health, metrics, lifecycle API).
    #[arg(long, env = "KSHUFFLE_ADMIN_BIND", default_value = "0.0.0.0")]
    pub admin_bind: IpAddr,
    /// Admin HTTP port (0 picks a free port).
    #[arg(long, env = "KSHUFFLE_ADMIN_PORT", default_value_t = 7338)]
    pub admin_port: u16,
    /// File holding the bearer token of the admin lifecycle API (`/v1/...`); without it
    /// those endpoints answer 403.
    #[arg(long, env = "KSHUFFLE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Log filter (`info`, `debug`, `kshuffle=debug,warn`, …); `RUST_LOG` overrides it.
    #[arg(long, env = "KSHUFFLE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "KSHUFFLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Largest incoming frame in bytes.
    #[arg(long, env = "KSHUFFLE_MAX_FRAME_BYTES", default_value_t = crate::wire::DEFAULT_MAX_FRAME_LEN_BYTES)]
    pub max_frame_bytes: usize,
    /// Most concurrent connections.
    #[arg(long, env = "KSHUFFLE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most open streams per connection.
    #[arg(
        long,
        env = "KSHUFFLE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 4096
    )]
    pub max_streams_per_connection: usize,
    /// Close connections idle this long (e.g. `120s`, `2m`, `500ms`).
    #[arg(long, env = "KSHUFFLE_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Close connections that started sending a frame (or auth message) and did not finish
    /// it within this long, however slowly bytes keep arriving.
    #[arg(long, env = "KSHUFFLE_FRAME_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub frame_timeout: Duration,
    /// Bytes all connections together may hold in read buffers for large incoming frames
    /// (above 64 KiB each); a connection that needs more while it is spent is closed.
    #[arg(long, env = "KSHUFFLE_READ_BUFFER_BUDGET_BYTES", default_value_t = crate::config::DEFAULT_READ_BUFFER_BUDGET_BYTES)]
    pub read_buffer_budget_bytes: usize,
    /// Bytes all open streams together may keep (the block lists of fetches not yet read);
    /// a fetch that would go beyond gets a failure reply.
    #[arg(long, env = "KSHUFFLE_STREAM_BUDGET_BYTES", default_value_t = crate::config::DEFAULT_STREAM_BUDGET_BYTES)]
    pub stream_budget_bytes: usize,
    /// Close connections whose replies make no progress this long.
    #[arg(long, env = "KSHUFFLE_WRITE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// On shutdown, how long open streams may still be served.
    #[arg(long, env = "KSHUFFLE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Bound of the index-file cache, in bytes.
    #[arg(long, env = "KSHUFFLE_INDEX_CACHE_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub index_cache_bytes: usize,
    /// Shuffle data files kept open between requests (0: open them for each request).
    /// Each is one file descriptor; one unused for 10 s is closed.
    #[arg(long, env = "KSHUFFLE_OPEN_DATA_FILES", default_value_t = 1024)]
    pub open_data_files: usize,
    /// TCP congestion control of the shuffle connections: an algorithm of the kernel
    /// (`cubic`, `reno`, `bbr`, ...), or `system` for the node's default
    /// (`net.ipv4.tcp_congestion_control`). Default: the first of cubic and reno this
    /// process may use, else the node's default with a warning.
    #[arg(long, env = "KSHUFFLE_TCP_CONGESTION_CONTROL")]
    pub tcp_congestion_control: Option<String>,
    /// How often the orphan sweep runs (0 disables it).
    #[arg(long, env = "KSHUFFLE_SWEEP_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// An unregistered `blockmgr-*` dir is reclaimed after this long without changes.
    #[arg(long, env = "KSHUFFLE_ORPHAN_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub orphan_grace: Duration,
    /// A registered app whose files did not change for this long is removed (0: never).
    #[arg(long, env = "KSHUFFLE_APP_IDLE_TIMEOUT", default_value = "24h", value_parser = parse_duration)]
    pub app_idle_timeout: Duration,
    /// Most dirs and apps one sweep removes.
    #[arg(long, env = "KSHUFFLE_SWEEP_MAX_REMOVALS", default_value_t = 100)]
    pub sweep_max_removals: usize,
    /// Sweep only reports what it would remove.
    #[arg(long, env = "KSHUFFLE_SWEEP_DRY_RUN")]
    pub sweep_dry_run: bool,
    /// Chunk bodies up to this many bytes are copied into the reply batch instead of sent
    /// with `sendfile` (fewer syscalls for small blocks; 0 = always zero-copy).
    #[arg(long, env = "KSHUFFLE_INLINE_BODY_MAX_BYTES", default_value_t = crate::config::DEFAULT_INLINE_BODY_MAX_BYTES)]
    pub inline_body_max_bytes: u64,
    /// Require `spark.authenticate`: the secret shared by every application (the file holds
    /// the `spark.authenticate.secret` string).
    #[arg(long, env = "KSHUFFLE_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,
    /// Require `spark.authenticate`: a directory of per-application secret files named by app
    /// id (a mounted Kubernetes Secret); checked before --auth-secret-file.
    #[arg(long, env = "KSHUFFLE_AUTH_SECRETS_DIR")]
    pub auth_secrets_dir: Option<PathBuf>,
    /// How secret files become secrets: `text` (the file is the secret string) or
    /// `spark-secret-file` (base64 of the file's bytes, as Spark reads
    /// `spark.authenticate.secret.{driver,executor}.file` on Kubernetes).
    #[arg(long, env = "KSHUFFLE_AUTH_SECRET_FORMAT", value_enum, default_value_t = SecretFormatArg::Text)]
    pub auth_secret_format: SecretFormatArg,
    /// The clients' `spark.network.crypto.authEngineVersion` (1 or 2).
    #[arg(long, env = "KSHUFFLE_AUTH_ENGINE_VERSION", default_value_t = 1)]
    pub auth_engine_version: u32,
    /// The clients' `spark.network.crypto.cipher`.
    #[arg(
        long,
        env = "KSHUFFLE_AUTH_CIPHER",
        default_value = "AES/CTR/NoPadding"
    )]
    pub auth_cipher: String,
    /// Accept SASL DIGEST-MD5 clients too (Spark's `spark.network.crypto.saslFallback`; what
    /// Spark uses unless `spark.network.crypto.enabled=true`).
    #[arg(long, env = "KSHUFFLE_AUTH_SASL_FALLBACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub auth_sasl_fallback: bool,
    /// Serve TLS (Spark 4's `spark.ssl.rpc.enabled`, which covers the shuffle client): the
    /// certificate chain, PEM (leaf first). Every connection must then speak TLS. Needs
    /// --tls-key-file; both files are re-read every --tls-reload-interval.
    #[arg(long, env = "KSHUFFLE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KSHUFFLE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How often the TLS files are checked for a renewed certificate.
    #[arg(long, env = "KSHUFFLE_TLS_RELOAD_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// Keep `rdd_*` files when an executor is gone (Spark's
    /// `spark.shuffle.service.fetch.rdd.enabled`: they are served to other executors).
    #[arg(long, env = "KSHUFFLE_RDD_FETCH_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub rdd_fetch_enabled: bool,
}

/// `--auth-secret-format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SecretFormatArg {
    /// The file is the secret string.
    Text,
    /// Base64 of the file's bytes.
    SparkSecretFile,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses a duration flag: `500ms`, `30s` (or a bare number of seconds), `2m`, `1h`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 30s, 2m, 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    }
}

/// Everything the daemon runs with, validated.
#[derive(Debug)]
pub struct Settings {
    /// The server's configuration.
    pub config: Config,
    /// Where the registry journal lives (canonical, outside every allowed root).
    pub state_dir: PathBuf,
    /// The admin API's bearer token, if one was configured.
    pub admin_token: Option<String>,
    /// What the orphan sweep removes.
    pub sweep: SweepOptions,
    /// How often the sweep runs (zero: never).
    pub sweep_interval: Duration,
    /// The TLS certificate, when TLS is served (`config.tls` serves from it), to reload.
    pub tls_certs: Option<Arc<CertStore>>,
}

impl DaemonArgs {
    /// Validates the flags (creating the allowed roots if missing).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.settings_with_secrets(None)
    }

    /// The state dir the flags name: `--state-dir`, else the default under `$XDG_STATE_HOME`
    /// or `$HOME` (not created nor resolved here).
    pub fn state_dir_or_default(&self) -> Option<PathBuf> {
        self.state_dir.clone().or_else(default_state_dir)
    }

    /// As [`DaemonArgs::settings`], with `extra` secrets consulted before the secret files:
    /// given, they turn authentication on even without `--auth-secret-file` /
    /// `--auth-secrets-dir` (with the `--auth-engine-version`, `--auth-cipher` and
    /// `--auth-sasl-fallback` flags).
    pub fn settings_with_secrets(
        &self,
        extra: Option<Arc<dyn SecretSource>>,
    ) -> anyhow::Result<Settings> {
        let DaemonArgs {
            bind: _,
            port: _,
            allowed_roots,
            state_dir,
            admin_bind: _,
            admin_port: _,
            admin_token_file,
            log_level: _,
            log_format: _,
            max_frame_bytes,
            max_connections,
            max_streams_per_connection,
            idle_timeout,
            write_timeout,
            frame_timeout,
            read_buffer_budget_bytes,
            stream_budget_bytes,
            shutdown_grace,
            index_cache_bytes,
            open_data_files,
            tcp_congestion_control: _,
            sweep_interval,
            orphan_grace,
            app_idle_timeout,
            sweep_max_removals,
            sweep_dry_run,
            rdd_fetch_enabled: _,
            inline_body_max_bytes,
            auth_secret_file,
            auth_secrets_dir,
            auth_secret_format,
            auth_engine_version,
            auth_cipher,
            auth_sasl_fallback,
            tls_cert_file,
            tls_key_file,
            tls_reload_interval: _,
        } = self;
        anyhow::ensure!(
            *max_frame_bytes >= 1024,
            "--max-frame-bytes must be at least 1024"
        );
        anyhow::ensure!(*max_connections > 0, "--max-connections must be positive");
        anyhow::ensure!(
            *max_streams_per_connection > 0,
            "--max-streams-per-connection must be positive"
        );
        anyhow::ensure!(!idle_timeout.is_zero(), "--idle-timeout must be positive");
        anyhow::ensure!(!write_timeout.is_zero(), "--write-timeout must be positive");
        anyhow::ensure!(!frame_timeout.is_zero(), "--frame-timeout must be positive");
        anyhow::ensure!(
            *read_buffer_budget_bytes >= *max_frame_bytes,
            "--read-buffer-budget-bytes must be at least --max-frame-bytes, so that one \
             largest frame can always be received"
        );
        let mut roots = Vec::new();
        for root in allowed_roots {
            std::fs::create_dir_all(root)
                .with_context(|| format!("--allowed-root: cannot create {}", root.display()))?;
            roots.push(
                std::fs::canonicalize(root).with_context(|| {
                    format!("--allowed-root: cannot resolve {}", root.display())
                })?,
            );
        }
        let state_dir = match state_dir {
            Some(dir) => dir.clone(),
            None => {
                default_state_dir().context("--state-dir: no default (set HOME or the flag)")?
            }
        };
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("--state-dir: cannot create {}", state_dir.display()))?;
        let canonical_state = std::fs::canonicalize(&state_dir)
            .with_context(|| format!("--state-dir: cannot resolve {}", state_dir.display()))?;
        if let Some(root) = roots
            .iter()
            .find(|r| canonical_state.starts_with(r) || r.starts_with(&canonical_state))
        {
            anyhow::bail!(
                "--state-dir {} overlaps the allowed root {}: cleanup could delete it",
                canonical_state.display(),
                root.display()
            );
        }
        let admin_token = match admin_token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path).with_context(|| {
                    format!("--admin-token-file: cannot read {}", path.display())
                })?;
                let token = token.trim().to_owned();
                anyhow::ensure!(
                    !token.is_empty(),
                    "--admin-token-file: {} is empty",
                    path.display()
                );
                Some(token)
            }
            None => None,
        };
        let files: Option<Arc<dyn SecretSource>> =
            if auth_secret_file.is_some() || auth_secrets_dir.is_some() {
                Some(Arc::new(
                    FileSecrets::new(
                        auth_secret_file.as_deref(),
                        auth_secrets_dir.as_deref(),
                        match auth_secret_format {
                            SecretFormatArg::Text => SecretFormat::Text,
                            SecretFormatArg::SparkSecretFile => SecretFormat::SparkSecretFile,
                        },
                    )
                    .context("--auth-secret-file / --auth-secrets-dir")?,
                ))
            } else {
                None
            };
        let secrets = match (extra, files) {
            (Some(extra), Some(files)) => Some(Arc::new(Layered::new(extra, files)) as Arc<_>),
            (Some(one), None) | (None, Some(one)) => Some(one),
            (None, None) => None,
        };
        let auth = if let Some(secrets) = secrets {
            Some(AuthSettings {
                secrets,
                version: AuthEngineVersion::from_number(*auth_engine_version)
                    .context("--auth-engine-version must be 1 or 2")?,
                cipher: CipherMode::from_spark_name(auth_cipher)
                    .context("--auth-cipher must be AES/CTR/NoPadding or AES/GCM/NoPadding")?,
                sasl_fallback: *auth_sasl_fallback,
            })
        } else {
            None
        };
        let tls_certs = match (tls_cert_file, tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(
                CertStore::load(cert, key).context("--tls-cert-file / --tls-key-file")?,
            )),
            _ => None,
        };
        let tls = match &tls_certs {
            Some(certs) => Some(Arc::new(
                certs
                    .server_config()
                    .context("cannot set up TLS with the certificate")?,
            )),
            None => None,
        };
        Ok(Settings {
            config: Config {
                allowed_roots: roots,
                max_frame_len_bytes: *max_frame_bytes,
                max_connections: *max_connections,
                max_streams_per_connection: *max_streams_per_connection,
                idle_timeout: *idle_timeout,
                write_timeout: *write_timeout,
                frame_timeout: *frame_timeout,
                read_buffer_budget_bytes: *read_buffer_budget_bytes,
                stream_budget_bytes: *stream_budget_bytes,
                shutdown_grace_period: *shutdown_grace,
                index_cache_bytes: *index_cache_bytes,
                open_data_files: *open_data_files,
                // Resolved when the daemon starts (it tries the algorithm on a socket).
                tcp_congestion_control: None,
                inline_body_max_bytes: *inline_body_max_bytes,
                auth,
                tls,
            },
            state_dir: canonical_state,
            admin_token,
            sweep: SweepOptions {
                orphan_grace: *orphan_grace,
                app_idle: (!app_idle_timeout.is_zero()).then_some(*app_idle_timeout),
                max_removals: *sweep_max_removals,
                dry_run: *sweep_dry_run,
                max_depth: 4,
            },
            sweep_interval: *sweep_interval,
            tls_certs,
        })
    }
}

fn default_state_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir).join("kshuffle")),
        _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state/kshuffle")),
    }
}
