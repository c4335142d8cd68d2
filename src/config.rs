//! The TOML configuration: every setting with a documented default, unknown keys rejected.
//!
//! `ivrd run` without `--config` uses [`Config::default()`], which serves the bundled demo on
//! this machine (SIP on 127.0.0.1:5060 UDP and TCP, prompts from `./prompts`). Paths in a
//! config file are taken relative to the file's directory, so a config can travel with its
//! prompts and dialplans.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the line and key).
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of its allowed range.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    /// The certificate, key and client check of the `[sip] tls` listeners. (A section of its
    /// own: TOML cannot have `[sip] tls = [...]` and a `[sip.tls]` table at once.)
    pub tls: TlsConfig,
    pub media: MediaConfig,
    pub demo: DemoConfig,
    pub transfer: TransferConfig,
    pub store: StoreConfig,
    /// How long the call audit is kept.
    pub audit: AuditConfig,
    pub shutdown: ShutdownConfig,
    pub admin: AdminConfig,
    /// The HTTP API for verifications outside calls (off unless `listen` is set).
    pub api: ApiConfig,
    /// Calls ivrd places (codes read out by voice); off unless `proxy` is set.
    pub outbound: OutboundConfig,
    pub dialplans: DialplansConfig,
    /// The SMS provider (`provider = "log"` by default: no account needed).
    pub sms: crate::verify::sms::SmsConfig,
    /// PIN and SMS limits, lock-outs.
    pub limits: crate::verify::limits::Limits,
    /// The fraud guard: global and per-country SMS budgets, destination regions, the
    /// per-prefix breaker, the cap on wrong PINs in a row.
    pub guard: crate::verify::guard::GuardConfig,
    pub log: LogConfig,
    /// What loading found questionable but usable (a secret file its group may read), for
    /// the caller to log or print. Not a setting.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// SIP over TLS: the server's certificate and key (PEM files), and mutual TLS. Read at start
/// and on every reload, so a renewed certificate is served to the next connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to; without it no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a valid certificate (mutual TLS with the PBX).
    pub require_client_cert: bool,
    /// CA certificates (PEM) that servers ivrd connects to must chain to (a dialog's request
    /// when the PBX's connection is gone); without it, the system's roots.
    pub server_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// The files, if TLS is configured.
    pub fn files(&self) -> Option<crate::sip::tls::TlsFiles> {
        Some(crate::sip::tls::TlsFiles {
            cert: self.cert.clone()?,
            key: self.key.clone()?,
            client_ca: self.client_ca.clone(),
            require_client_cert: self.require_client_cert,
            server_ca: self.server_ca.clone(),
        })
    }
}

/// Graceful shutdown (SIGTERM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Calls in progress may run this long after SIGTERM (new INVITEs get 503 + Retry-After
    /// meanwhile); then they get BYE. Keep systemd's TimeoutStopSec above this plus 64*T1.
    pub drain_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_secs: 10 }
    }
}

/// The admin listener: Prometheus metrics, health, status and the live page for operators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// HTTP listen address (loopback by default: nothing here is for the outside world).
    /// `GET /metrics`, `/health`, `/status`, `/` (the live page), `/live.json`. Empty string
    /// disables the listener.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9060".into(),
        }
    }
}

/// The HTTP API ([`crate::api`]): verifications of phone numbers by a code, for web
/// sign-ups and other applications.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTP listen address; empty (the default) turns the API off. Put a TLS reverse proxy in
    /// front of it when it leaves the host.
    pub listen: String,
    /// Digits in a code (4 to 10).
    pub code_length: usize,
    /// Codes one API key may send in `[limits]`' SMS window (each number, or customer, has
    /// `[limits] sms_per_customer`).
    pub sends_per_key: u32,
    /// The locale of a request that names none.
    pub default_locale: String,
    /// Texts by template name, then locale, with `{pin}`, `{minutes}` and `{name}` (`{name}`
    /// is the customer's name, empty for a number that is no customer's). The template
    /// `default` has built-in English and German texts.
    pub templates: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// Concurrent connections the listener keeps; more are closed at once.
    pub max_connections: usize,
    /// HTTPS with `[tls] cert` and `key` (no client certificate asked for, whatever `[tls]`
    /// says for SIP). Read at start: a renewed certificate needs a restart.
    pub tls: bool,
    /// Where each verification's status changes are POSTed (empty: nowhere). `https://`,
    /// or `http://` on the loopback interface.
    pub webhook_url: String,
    /// The HMAC-SHA256 key that signs each callback (`X-Ivrd-Signature`); required with
    /// `webhook_url`. A secret: prefer `webhook_secret_file`.
    pub webhook_secret: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("code_length", &self.code_length)
            .field("sends_per_key", &self.sends_per_key)
            .field("default_locale", &self.default_locale)
            .field("templates", &self.templates)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls)
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "***"),
            )
            .field("webhook_secret_file", &self.webhook_secret_file)
            .finish()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: String::new(),
            code_length: 6,
            sends_per_key: 1000,
            default_locale: "en".into(),
            templates: Default::default(),
            max_connections: 256,
            tls: false,
            webhook_url: String::new(),
            webhook_secret: None,
            webhook_secret_file: None,
        }
    }
}

impl ApiConfig {
    /// The built-in texts of the `default` template.
    pub const DEFAULT_TEXTS: [(&'static str, &'static str); 2] = [
        (
            "en",
            "Your verification code is {pin}. It is valid for {minutes} minutes.",
        ),
        (
            "de",
            "Ihr Bestätigungscode lautet {pin}. Er ist {minutes} Minuten gültig.",
        ),
    ];

    /// The text of `template` in `locale`; `None` if the template or the locale is unknown.
    pub fn text(&self, template: &str, locale: &str) -> Option<String> {
        if let Some(t) = self.templates.get(template).and_then(|t| t.get(locale)) {
            return Some(t.clone());
        }
        (template == "default")
            .then(|| Self::DEFAULT_TEXTS.iter().find(|(l, _)| *l == locale))
            .flatten()
            .map(|(_, t)| t.to_string())
    }

    fn validate(&self) -> Result<(), String> {
        if !(4..=10).contains(&self.code_length) {
            return Err("[api] code_length must be 4 to 10".into());
        }
        if self.max_connections == 0 {
            return Err("[api] max_connections must be at least 1".into());
        }
        for (name, texts) in &self.templates {
            for (locale, text) in texts {
                if !text.contains("{pin}") {
                    return Err(format!(
                        "[api.templates.{name}] {locale}: the text has no {{pin}}"
                    ));
                }
            }
        }
        if !self.webhook_url.is_empty() {
            crate::verify::sms::check_url("[api] webhook_url", &self.webhook_url)?;
            if self
                .webhook_secret
                .as_deref()
                .unwrap_or_default()
                .is_empty()
                && self.webhook_secret_file.is_none()
            {
                return Err(
                    "[api] webhook_url needs webhook_secret_file (or webhook_secret): the key \
                     that signs each callback"
                        .into(),
                );
            }
        }
        if self.text("default", &self.default_locale).is_none() {
            return Err(format!(
                "[api] default_locale = {:?}: the default template has no text in it; add [api.templates.default] {} = \"...\"",
                self.default_locale, self.default_locale
            ));
        }
        Ok(())
    }
}

/// Calls ivrd places through a trunk or PBX, to read a verification code out
/// ([`crate::call::outbound`]).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// The trunk or PBX every call goes to, `IP:port` (an address: no DNS on this path); empty
    /// (the default) turns calls out off.
    pub proxy: String,
    /// `udp`, `tcp` or `tls`; a `[sip]` listener of that transport sends the INVITE.
    pub transport: String,
    /// The Request-URI, with `{number}` for the callee in E.164 (`+4930...`). Default
    /// `sip:{number}@PROXY`.
    pub request_uri: String,
    /// The From URI (the caller ID a trunk may pass on). Default `sip:ivrd@` and the address
    /// the INVITE leaves from.
    pub from: String,
    /// Digest credentials for a trunk that challenges the INVITE (401/407).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The password read from a file instead (see [`crate::secrets`]).
    pub password_file: Option<PathBuf>,
    /// How long the callee's phone rings before the call is cancelled (5 to 300).
    pub ring_timeout_secs: u64,
    /// Calls out at once (1 to 1000); a start beyond them is refused with 429.
    pub max_calls: usize,
    /// Wait for a key before reading the code (an answering machine presses none).
    pub key_first: bool,
    /// Times the code is read unasked (1 to 5), and further readings on request (0 to 9).
    pub readings: u32,
    pub max_repeats: u32,
    /// What one reading plays: prompt names, with `{code}` where the digits go (once).
    pub readout: Vec<String>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            proxy: String::new(),
            transport: "udp".into(),
            request_uri: String::new(),
            from: String::new(),
            username: None,
            password: None,
            password_file: None,
            ring_timeout_secs: 30,
            max_calls: 10,
            key_first: false,
            readings: 2,
            max_repeats: 3,
            readout: crate::verify::voice::default_template(),
        }
    }
}

/// The password prints as `***`, so a config can be logged.
impl std::fmt::Debug for OutboundConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundConfig")
            .field("proxy", &self.proxy)
            .field("transport", &self.transport)
            .field("request_uri", &self.request_uri)
            .field("from", &self.from)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("ring_timeout_secs", &self.ring_timeout_secs)
            .field("max_calls", &self.max_calls)
            .field("key_first", &self.key_first)
            .field("readings", &self.readings)
            .field("max_repeats", &self.max_repeats)
            .field("readout", &self.readout)
            .finish()
    }
}

impl OutboundConfig {
    /// Whether calls out are configured.
    pub fn enabled(&self) -> bool {
        !self.proxy.is_empty()
    }

    /// The proxy's address (checked by `validate`).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.parse().ok()
    }

    /// The transport (checked by `validate`).
    pub fn protocol(&self) -> crate::sip::transport::Protocol {
        use crate::sip::transport::Protocol;
        match self.transport.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            _ => Protocol::Udp,
        }
    }

    fn validate(&self, sip: &SipConfig) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.proxy_addr().is_none() {
            return Err(format!(
                "[outbound] proxy = {:?}: write the trunk as IP:port (e.g. \"192.0.2.10:5060\")",
                self.proxy
            ));
        }
        let listeners = match self.transport.to_ascii_lowercase().as_str() {
            "udp" => &sip.udp,
            "tcp" => &sip.tcp,
            "tls" => &sip.tls,
            other => {
                return Err(format!(
                    "[outbound] transport = {other:?}: use udp, tcp or tls"
                ));
            }
        };
        if listeners.is_empty() {
            return Err(format!(
                "[outbound] transport = {:?}, but [sip] has no {} listener to send from",
                self.transport, self.transport
            ));
        }
        if !self.request_uri.is_empty() {
            let lower = self.request_uri.to_ascii_lowercase();
            if !(lower.starts_with("sip:") || lower.starts_with("sips:"))
                || !self.request_uri.contains("{number}")
                || self.request_uri.contains(['<', '>', '"', ' ', '\r', '\n'])
            {
                return Err(format!(
                    "[outbound] request_uri = {:?}: a sip: or sips: URI with {{number}} for the \
                     callee (e.g. \"sip:{{number}}@trunk.example.com\")",
                    self.request_uri
                ));
            }
        }
        if !self.from.is_empty() {
            let lower = self.from.to_ascii_lowercase();
            if !(lower.starts_with("sip:")
                || lower.starts_with("sips:")
                || lower.starts_with("tel:"))
                || self.from.contains(['<', '>', '"', ' ', '\r', '\n'])
            {
                return Err(format!(
                    "[outbound] from = {:?}: a sip:, sips: or tel: URI",
                    self.from
                ));
            }
        }
        if !(5..=300).contains(&self.ring_timeout_secs) {
            return Err("[outbound] ring_timeout_secs must be 5 to 300".into());
        }
        if !(1..=1000).contains(&self.max_calls) {
            return Err("[outbound] max_calls must be 1 to 1000".into());
        }
        if !(1..=5).contains(&self.readings) {
            return Err("[outbound] readings must be 1 to 5".into());
        }
        if self.max_repeats > 9 {
            return Err("[outbound] max_repeats must be 0 to 9".into());
        }
        let codes = self
            .readout
            .iter()
            .filter(|p| *p == crate::verify::voice::CODE)
            .count();
        if codes != 1 || self.readout.len() > 16 {
            return Err(format!(
                "[outbound] readout = {:?}: prompt names with \"{{code}}\" once where the \
                 digits go (at most 16 entries), e.g. [\"voice-code-is\", \"{{code}}\"]",
                self.readout
            ));
        }
        Ok(())
    }
}

/// Which dialplans answer calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialplansConfig {
    /// Directory of `*.toml` dialplans; all are loaded and checked at start and on reload.
    pub dir: PathBuf,
    /// The plan (by its `name`) that answers dialed numbers no plan lists.
    pub default: Option<String>,
    /// Site values that override the plans' `[vars]` (e.g. the queue and fallback URIs), so
    /// the same plan file can serve several PBXes.
    pub vars: std::collections::BTreeMap<String, String>,
    /// The time zone of `hours` steps, an IANA name such as "Europe/Berlin" (default: the
    /// host's).
    pub timezone: Option<String>,
    /// A file of holidays for `hours` steps: one `YYYY-MM-DD` per line, `#` comments.
    pub holidays: Option<PathBuf>,
}

impl Default for DialplansConfig {
    fn default() -> Self {
        DialplansConfig {
            dir: default_dir("dialplans"),
            default: Some("verify".into()),
            vars: Default::default(),
            timezone: None,
            holidays: None,
        }
    }
}

impl DialplansConfig {
    /// The calendar of `timezone` and `holidays`; an error names the setting.
    pub fn calendar(&self) -> Result<crate::dialplan::calendar::Calendar, String> {
        crate::dialplan::calendar::Calendar::load(
            self.timezone.as_deref(),
            self.holidays.as_deref(),
        )
    }
}

/// The database (customers, lock-outs, SMS sends, verifications, audit): a SQLite file for
/// one node, or PostgreSQL (`url`) shared by several.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Database file; created with its schema on first use. Under systemd the unit's
    /// `StateDirectory=` makes `/var/lib/ivrd` writable for it. Unused when `url` is set.
    pub path: PathBuf,
    /// A PostgreSQL database instead of the file: `postgres://user@host:port/dbname`, with
    /// `?sslmode=require` for TLS (certificate checked against `ca` or the system's roots).
    pub url: Option<String>,
    /// The database password (better: `password_file`, or a systemd credential of that name).
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signs the PostgreSQL server's certificate.
    pub ca: Option<PathBuf>,
    /// A secret every node shares (32 characters at least, `openssl rand -hex 32`): outstanding
    /// PINs then live in the database, digested and sealed under keys derived from it, so any
    /// node checks or resends a code another sent. Unset: PINs stay in each process's memory.
    pub pin_key_file: Option<PathBuf>,
    pub pin_key: Option<String>,
    /// PostgreSQL connections this node keeps at most.
    pub pool_size: u32,
    /// How long a store call waits for a connection before the database counts as away
    /// (the call's step fails, OPTIONS says 503).
    pub connect_timeout_ms: u64,
    /// The server cancels a statement or a lock wait that takes longer.
    pub statement_timeout_ms: u64,
    /// New calls while the database does not answer: `refuse` (503 with Retry-After, so a
    /// dispatcher or PBX tries elsewhere) or `answer` (the plan runs and its `on_error`
    /// branches route the caller, usually to the fallback extension).
    pub when_away: WhenAway,
    /// Customers imported when the database is created (a demo needs someone to verify).
    pub seed_csv: Option<PathBuf>,
    /// Region for phone numbers written without a country code (CSV imports, caller lookups).
    pub default_region: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        // systemd tells us our state directory; a checkout keeps the file beside the user.
        let dir = std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let pg = crate::store::PgOptions::default();
        StoreConfig {
            path: dir.join("ivrd.db"),
            url: None,
            password: None,
            password_file: None,
            ca: None,
            pin_key_file: None,
            pin_key: None,
            pool_size: pg.pool_size,
            connect_timeout_ms: pg.connect_timeout.as_millis() as u64,
            statement_timeout_ms: pg.statement_timeout.as_millis() as u64,
            when_away: WhenAway::Refuse,
            seed_csv: None,
            default_region: "DE".into(),
        }
    }
}

/// `[store] when_away`: what a new call gets while the database does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenAway {
    Refuse,
    Answer,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("path", &self.path)
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("password_file", &self.password_file)
            .field("ca", &self.ca)
            .field("pin_key", &self.pin_key.as_ref().map(|_| "<hidden>"))
            .field("pin_key_file", &self.pin_key_file)
            .field("pool_size", &self.pool_size)
            .field("when_away", &self.when_away)
            .field("seed_csv", &self.seed_csv)
            .field("default_region", &self.default_region)
            .finish_non_exhaustive()
    }
}

impl StoreConfig {
    /// The database these settings name.
    pub fn database(&self) -> crate::store::Database {
        match &self.url {
            Some(url) => crate::store::Database::Postgres {
                url: url.clone(),
                opts: self.pg_options(),
            },
            None => crate::store::Database::Sqlite(self.path.clone()),
        }
    }

    /// The database `--db` names (a file, or a `postgres://` URL with these settings'
    /// password and pool), else these settings' own.
    pub fn database_or(&self, db: Option<&str>) -> crate::store::Database {
        match db {
            Some(url) if crate::store::Database::is_url(url) => crate::store::Database::Postgres {
                url: url.to_owned(),
                opts: self.pg_options(),
            },
            Some(path) => crate::store::Database::Sqlite(PathBuf::from(path)),
            None => self.database(),
        }
    }

    fn pg_options(&self) -> crate::store::PgOptions {
        crate::store::PgOptions {
            pool_size: self.pool_size,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            ca_file: self.ca.clone(),
            password: self.password.clone(),
            ..crate::store::PgOptions::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            if !crate::store::Database::is_url(url) {
                return Err(format!(
                    "[store] url = {url:?}: expected postgres://user@host:port/dbname"
                ));
            }
            if !(1..=1000).contains(&self.pool_size) {
                return Err("[store] pool_size must be 1 to 1000".into());
            }
            if !(100..=60_000).contains(&self.connect_timeout_ms)
                || !(100..=600_000).contains(&self.statement_timeout_ms)
            {
                return Err(
                    "[store] connect_timeout_ms must be 100 to 60000 and statement_timeout_ms \
                     100 to 600000"
                        .into(),
                );
            }
        } else if self.password.is_some() || self.password_file.is_some() || self.ca.is_some() {
            return Err(
                "[store] password, password_file and ca are for a PostgreSQL url; the SQLite \
                 file needs none"
                    .into(),
            );
        }
        Ok(())
    }

    /// Reads `password_file` into `password` and `pin_key_file` into `pin_key`.
    pub fn resolve_secret(
        &mut self,
        files: &crate::secrets::SecretFiles,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        files.resolve_option(
            "[store]",
            "password",
            &mut self.password,
            self.password_file.as_deref(),
            warnings,
        )?;
        files.resolve_option(
            "[store]",
            "pin_key",
            &mut self.pin_key,
            self.pin_key_file.as_deref(),
            warnings,
        )?;
        if let Some(key) = &self.pin_key
            && key.trim().len() < crate::verify::shared_pins::MIN_SECRET_LEN
        {
            return Err(format!(
                "[store] pin_key has {} characters; it needs {} at least (`openssl rand -hex 32`)",
                key.trim().len(),
                crate::verify::shared_pins::MIN_SECRET_LEN
            ));
        }
        Ok(())
    }
}

/// The call audit (one row per call in the database's `audit` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Rows of calls that started more than this many days ago are deleted, at start and then
    /// every hour. 0 (the default) keeps every row: how long call records may or must be kept
    /// is the operator's policy, not ours. Takes effect on restart.
    pub keep_days: u32,
    /// Where audit rows wait while the database does not answer (JSON lines, flushed to the
    /// database in order once it answers again). Default `audit-spool.jsonl` beside the
    /// SQLite file's default place (`$STATE_DIRECTORY`). Takes effect on restart.
    pub spool_path: PathBuf,
    /// Rows the spool holds at most (0: no spool; a row that cannot be written is an error
    /// for its call). Rows beyond it are refused, never the file grown without bound.
    pub spool_max_rows: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        let dir = std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        AuditConfig {
            keep_days: 0,
            spool_path: dir.join("audit-spool.jsonl"),
            spool_max_rows: 100_000,
        }
    }
}

impl AuditConfig {
    /// The audit writer's spool, unless turned off.
    pub fn spool(&self) -> Option<crate::audit::Spool> {
        (self.spool_max_rows > 0).then(|| crate::audit::Spool {
            path: self.spool_path.clone(),
            max_rows: self.spool_max_rows,
        })
    }

    /// How long rows are kept, or `None` to keep them forever.
    pub fn keep(&self) -> Option<Duration> {
        (self.keep_days > 0).then(|| Duration::from_secs(u64::from(self.keep_days) * 86_400))
    }
}

/// Transfers (REFER) to the queue and fallback extensions.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// How long to wait for the transfer's final NOTIFY before it counts as failed.
    pub timeout_secs: u64,
    /// Digest credentials for a PBX that challenges the REFER (401/407).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The password read from a file instead (see [`crate::secrets`]).
    pub password_file: Option<PathBuf>,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            timeout_secs: 30,
            username: None,
            password: None,
            password_file: None,
        }
    }
}

/// The password prints as `***`, so a config can be logged.
impl std::fmt::Debug for TransferConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferConfig")
            .field("timeout_secs", &self.timeout_secs)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP listen addresses, IPv4 or IPv6 (`"[::1]:5060"`).
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// TLS listen addresses (SIP over TLS, RFC 3261 26.2; usually port 5061). The certificate
    /// and key are in `[tls]`.
    pub tls: Vec<SocketAddr>,
    /// Host (IP or name) we put in Contact and Via when the listen address is a wildcard.
    pub public_host: Option<String>,
    /// RFC 3261 T1 in milliseconds (default 500). Everything else scales from T1/T2/T4.
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    /// User-Agent / Server header value.
    pub user_agent: String,
    /// Ring (180) this long before answering; 0 answers at once. Lets callers CANCEL.
    pub ring_ms: u64,
    /// Overload control: a new INVITE that waited longer than this since the kernel received
    /// it is answered 503 with Retry-After instead of becoming a call (0 = never). Calls in
    /// progress are always served.
    pub overload_reject_ms: u64,
    /// The PBXes and SBCs allowed to reach ivrd: IP addresses and CIDR ranges, IPv4 and IPv6
    /// (`["192.0.2.10", "10.1.0.0/16", "2001:db8::/32"]`). Requests from anywhere else are
    /// dropped (or answered 403, see `untrusted`), and only these peers' P-Asserted-Identity
    /// and Via maddr are believed. Empty (the default): open, anyone may call, as an
    /// untrusted source within the per-source limits below; a warning says so at start.
    pub trusted: Vec<String>,
    /// What requests from sources outside a non-empty `trusted` list get: "drop" (nothing),
    /// "reject" (403, statelessly) or "allow" (served as untrusted, within the per-source
    /// limits, as with an empty list).
    pub untrusted: crate::sip::peers::UntrustedAction,
    /// New calls per second one untrusted source may place (bursts of twice that).
    pub source_calls_per_sec: f64,
    /// INVITEs of one untrusted source that may wait for their ACK at once (each holds an RTP
    /// port until the ACK comes or `ack_timeout_ms` passes).
    pub source_unconfirmed: u32,
    /// Live SIP transactions one untrusted source may hold.
    pub source_transactions: u32,
    /// Calls one untrusted source may have up at once (each holds an RTP port).
    pub source_calls: u32,
    /// The shortest session timer interval accepted (RFC 4028 `Min-SE`): a request asking for
    /// less gets 422. RFC 4028 says at least 90; lower values are for tests.
    pub session_min_se_secs: u32,
    /// How long an answered INVITE waits for its ACK before the call is dropped (no BYE: the
    /// dialog was never confirmed) and its RTP port freed. Default 16*T1 (8 s), during which
    /// the 200 is sent five times; at most 64*T1.
    pub ack_timeout_ms: Option<u64>,
    /// Live server transactions in total, and the bytes of messages they hold; beyond either,
    /// new requests get a stateless 503. The defaults hold the published 2,000 calls/s.
    pub max_transactions: usize,
    pub max_transaction_kib: usize,
    /// TCP connections in total, and from one untrusted source. Trusted peers are accepted
    /// beyond the total (their connections are few and they carry every call).
    pub tcp_max_connections: usize,
    pub tcp_max_per_source: usize,
    /// A TCP connection that carries no dialog and had no traffic for this long is closed.
    pub tcp_idle_secs: u64,
    /// A TCP message must be complete within this long of its first byte (and a new
    /// connection must send its first message within it), else the connection is closed:
    /// one byte a second keeps nothing open.
    pub tcp_message_timeout_ms: u64,
    /// Bytes queued for a TCP peer that does not read; beyond this the connection is closed.
    pub tcp_write_queue_kib: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Address our RTP sockets bind to and that we announce in SDP.
    pub rtp_ip: IpAddr,
    /// Address announced in SDP when it differs from `rtp_ip` (e.g. behind 1:1 NAT).
    pub announce_ip: Option<IpAddr>,
    /// A media address of the other family (IPv6 when `rtp_ip` is IPv4), for callers whose SDP
    /// offers that family; without it such an offer gets 488.
    pub rtp_ip6: Option<IpAddr>,
    /// Announced instead of `rtp_ip6`, as `announce_ip` is for `rtp_ip`.
    pub announce_ip6: Option<IpAddr>,
    /// RTP port range (even ports are used for RTP; RTCP would be port+1, which we do not open).
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Send RTP to where the caller's RTP comes from (NAT latching) instead of the SDP address.
    pub symmetric_rtp: bool,
    /// Strict RTP: learn once where the caller's RTP comes from (at once from the SDP's
    /// address, else after `rtp_probation` packets in sequence from one address) and drop RTP
    /// from every other address until a re-INVITE moves the media. `false` latches to any
    /// source at any time, as ivrd did before: UNSAFE, since anyone who can reach the RTP port
    /// can then take over the call's audio and type digits (customer numbers, PINs) into it.
    pub strict_rtp: bool,
    /// Packets in sequence (one SSRC, sequence numbers +1) from one address before strict RTP
    /// learns it as the caller's, when it is not the SDP's address (NAT). 1..=32; 4 is
    /// Asterisk's default, 80 ms of audio.
    pub rtp_probation: u32,
    /// Hang up when no RTP arrived for this long (0 disables). Paused while the caller holds.
    pub rtp_timeout_secs: u64,
    /// Hang up any call after this long (0 disables).
    pub max_call_secs: u64,
    /// Directory with `<language>/<name>.wav` prompts. With `bundled_prompts`, it needs only
    /// the prompts the site changes or adds: the bundled set supplies the rest.
    pub prompts_dir: PathBuf,
    /// Layer `prompts_dir` over the bundled prompts (default true); false: `prompts_dir`
    /// must hold every prompt itself.
    pub bundled_prompts: bool,
    /// Language used when nothing else chose one.
    pub default_language: String,
    /// Codecs we accept, in our preference order when we make the offer: "PCMU", "PCMA".
    pub codecs: Vec<String>,
    /// Detect DTMF tones in the received audio as well as RFC 4733 and SIP INFO.
    pub inband_dtmf: bool,
    /// Pacing threads for RTP; each paces a share of the calls from one 20 ms clock.
    pub pacing_threads: usize,
    /// Nice value for the pacing threads (-20..=19; 0 leaves them at the daemon's). Below 0
    /// needs `LimitNICE=` under systemd; without it ivrd warns and carries on.
    pub pacer_nice: i32,
    /// SRTP with SDES keys: "off", "optional" (the default: SRTP when the peer offers it over
    /// TLS, plain RTP when it offers that) or "required" (plain offers get 488). SDES keys are
    /// only accepted or offered over TLS signalling, whatever this says. Unset means optional
    /// (and no warning about a missing TLS listener); see [`MediaConfig::srtp`].
    #[serde(rename = "srtp")]
    pub srtp_mode: Option<crate::sip::sdp::SrtpMode>,
}

impl MediaConfig {
    /// What `[media] srtp` allows; unset is optional.
    pub fn srtp(&self) -> crate::sip::sdp::SrtpMode {
        self.srtp_mode.unwrap_or_default()
    }
}

/// The built-in demo flow (until dialplans exist): welcome, collect digits, read them back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Answer every call with the built-in demo instead of the dialplans.
    pub enabled: bool,
    pub max_digits: usize,
    pub terminator: char,
    pub first_digit_timeout_ms: u64,
    pub inter_digit_timeout_ms: u64,
    /// Collect-and-read-back rounds before saying goodbye and hanging up.
    pub rounds: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "ivrd=debug"; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for SipConfig {
    /// The edge's limits default to what the SIP layer itself starts from.
    fn default() -> Self {
        use crate::sip::core::CoreConfig;
        let budgets = crate::sip::peers::Budgets::default();
        let tcp = crate::sip::transport::TcpLimits::default();
        let addr: SocketAddr = "127.0.0.1:5060".parse().expect("static address");
        SipConfig {
            udp: vec![addr],
            tcp: vec![addr],
            tls: Vec::new(),
            public_host: None,
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            user_agent: concat!("ivrd/", env!("CARGO_PKG_VERSION")).to_string(),
            ring_ms: 0,
            // Half of T1: the 503 must reach the caller before its first retransmission (at
            // T1), or every shed INVITE arrives twice. Measured at 3,500 calls/s signalling
            // only: 250 ms served 29,511-34,568 of 70,000 calls with INVITE->200 p99 under
            // 1.8 s; 500 ms served 10,533-19,861 with p99 8-16 s; none served 6,718-63,683
            // with p99 41-42 s.
            overload_reject_ms: 250,
            trusted: Vec::new(),
            untrusted: Default::default(),
            source_calls_per_sec: budgets.calls_per_sec,
            source_unconfirmed: budgets.unconfirmed,
            source_transactions: budgets.transactions,
            source_calls: budgets.calls,
            ack_timeout_ms: None,
            session_min_se_secs: 90,
            max_transactions: CoreConfig::MAX_TRANSACTIONS,
            max_transaction_kib: CoreConfig::MAX_TRANSACTION_BYTES / 1024,
            tcp_max_connections: tcp.max_connections,
            tcp_max_per_source: tcp.max_per_source,
            tcp_idle_secs: tcp.idle.as_secs(),
            tcp_message_timeout_ms: tcp.message_timeout.as_millis() as u64,
            tcp_write_queue_kib: tcp.write_queue / 1024,
        }
    }
}

/// The most INVITEs all untrusted sources together may have waiting for their ACK.
pub const UNTRUSTED_UNCONFIRMED_MAX: u32 = 256;

/// The most calls all untrusted sources together may have up (confirmed or not). A site
/// without a PBX in front (an empty `trusted` list) is limited to this many calls at once.
pub const UNTRUSTED_CALLS_MAX: u32 = 512;

impl SipConfig {
    /// How long an answered INVITE waits for its ACK.
    pub fn ack_timeout(&self) -> Duration {
        let sixty_four_t1 = Duration::from_millis(self.t1_ms.saturating_mul(64));
        match self.ack_timeout_ms {
            Some(ms) => Duration::from_millis(ms).min(sixty_four_t1),
            None => Duration::from_millis(self.t1_ms.saturating_mul(16)),
        }
    }

    /// The trusted-peer list, parsed.
    pub fn peer_policy(&self) -> Result<crate::sip::peers::PeerPolicy, String> {
        crate::sip::peers::PeerPolicy::new(&self.trusted, self.untrusted).map_err(|e| e.to_string())
    }

    /// What one untrusted source may ask of us, for a daemon with `rtp_slots` RTP ports.
    pub fn budgets(&self, rtp_slots: u32) -> crate::sip::peers::Budgets {
        crate::sip::peers::Budgets {
            calls_per_sec: self.source_calls_per_sec,
            unconfirmed: self.source_unconfirmed,
            transactions: self.source_transactions,
            calls: self.source_calls,
            // Half the RTP ports, and at most 256: whatever many untrusted sources do, the
            // other half is there for trusted callers, and memory stays bounded (an
            // unconfirmed call holds 46-67 KiB; 3,000 of them, half of 6,000 ports, took
            // RSS up by 200 MiB in the flood benchmark). An honest caller's INVITE is
            // unconfirmed for one round trip, so 256 at once still admit thousands a second.
            unconfirmed_total: (rtp_slots / 2).clamp(1, UNTRUSTED_UNCONFIRMED_MAX),
            // The same for calls up (2,700 of them from 200 sources held 110 MiB): half the
            // ports when a PBX is trusted (the rest are its), all of them in open mode.
            calls_total: if self.trusted.is_empty() {
                rtp_slots
            } else {
                rtp_slots / 2
            }
            .clamp(1, UNTRUSTED_CALLS_MAX),
            ..crate::sip::peers::Budgets::default()
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            rtp_ip: IpAddr::from([127, 0, 0, 1]),
            announce_ip: None,
            rtp_ip6: None,
            announce_ip6: None,
            rtp_port_min: 20000,
            rtp_port_max: 29999,
            symmetric_rtp: true,
            strict_rtp: true,
            rtp_probation: 4,
            rtp_timeout_secs: 30,
            max_call_secs: 3600,
            prompts_dir: default_prompts_dir(),
            bundled_prompts: true,
            default_language: "en".into(),
            codecs: vec!["PCMU".into(), "PCMA".into()],
            inband_dtmf: true,
            pacing_threads: 1,
            pacer_nice: -10,
            srtp_mode: None,
        }
    }
}

/// Where the bundled prompts are when no config says: `./prompts` (running from a checkout),
/// the installed package's copy, or the source tree this binary was built from.
fn default_prompts_dir() -> PathBuf {
    default_dir("prompts")
}

/// A bundled directory (`prompts`, `dialplans`, `examples`): `./<name>`, the installed
/// package's copy, or the source tree this binary was built from.
pub fn default_dir(name: &str) -> PathBuf {
    let mut candidates = vec![PathBuf::from(name), Path::new("/usr/share/ivrd").join(name)];
    // The source tree this binary was built from, for `cargo run` and tests only: a release
    // binary installed by hand must not read dialplans from a build path (often under /tmp,
    // where anyone could create it).
    if cfg!(debug_assertions) {
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(name));
    }
    candidates
        .iter()
        .find(|p| p.is_dir())
        .cloned()
        .unwrap_or_else(|| PathBuf::from(name))
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: false,
            max_digits: 10,
            terminator: '#',
            first_digit_timeout_ms: 10_000,
            inter_digit_timeout_ms: 5_000,
            rounds: 3,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl MediaConfig {
    /// The prompt directories in the order they are searched: `prompts_dir`, then (unless
    /// `bundled_prompts = false` or it is the same directory) the bundled prompts.
    pub fn prompt_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.prompts_dir.clone()];
        if self.bundled_prompts {
            let bundled = default_prompts_dir();
            let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            };
            if bundled.is_dir() && !same(&bundled, &self.prompts_dir) {
                dirs.push(bundled);
            }
        }
        dirs
    }
}

impl Config {
    /// The embedded default that `ivrd run` uses without `--config`: everything local and
    /// self-contained for a demo. The database is seeded with the example customers when it
    /// is created, and the `log` SMS provider writes each message (PIN included) to
    /// `ivrd-sms.log` beside it, so whoever tries the demo can read the PIN they must type.
    /// A config file never gets these two: production databases are not seeded and SMS
    /// texts are not written to files unless the admin asks for it.
    pub fn embedded() -> Config {
        let mut cfg = Config::default();
        let seed = default_dir("examples").join("customers.csv");
        cfg.store.seed_csv = seed.is_file().then_some(seed);
        let sms_log = cfg.store.path.with_file_name("ivrd-sms.log");
        cfg.sms = crate::verify::sms::SmsConfig::Log {
            path: Some(sms_log),
        };
        cfg
    }

    /// Reads, parses and validates a config file, and reads every secret it names
    /// ([`Config::resolve_secrets`], with `$CREDENTIALS_DIRECTORY` from the environment);
    /// relative paths are resolved against its folder. What the daemon and `ivrd check` use.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut cfg = Self::load_without_secrets(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_secrets(&crate::secrets::SecretFiles::from_env(base))
            .map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })?;
        Ok(cfg)
    }

    /// [`Config::load`] without reading secret files: for the commands that use no secret
    /// (`customers`, `status`, `simulate`, `graph`), so they work for an admin who may not
    /// read the credentials.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.media.prompts_dir.is_relative() {
            cfg.media.prompts_dir = base.join(&cfg.media.prompts_dir);
        }
        for p in [
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.tls.client_ca,
            &mut cfg.tls.server_ca,
            &mut cfg.dialplans.holidays,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if cfg.store.path.is_relative() {
            cfg.store.path = base.join(&cfg.store.path);
        }
        if cfg.audit.spool_path.is_relative() {
            cfg.audit.spool_path = base.join(&cfg.audit.spool_path);
        }
        if let Some(ca) = &cfg.store.ca
            && ca.is_relative()
        {
            cfg.store.ca = Some(base.join(ca));
        }
        if let Some(seed) = &cfg.store.seed_csv
            && seed.is_relative()
        {
            cfg.store.seed_csv = Some(base.join(seed));
        }
        if cfg.dialplans.dir.is_relative() {
            cfg.dialplans.dir = base.join(&cfg.dialplans.dir);
        }
        cfg.sms.resolve_relative_paths(base);
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        cfg.warnings.extend(cfg.srtp_warning());
        Ok(cfg)
    }

    /// TLS listeners for SIP: the only signalling over which SDES keys are taken.
    pub fn tls_listeners(&self) -> usize {
        self.sip.tls.len()
    }

    /// A warning when `[media] srtp` was set to allow SRTP but no TLS listener exists: SDES keys
    /// are only taken over TLS, so SRTP would never happen (and under "required", no call would).
    pub fn srtp_warning(&self) -> Option<String> {
        use crate::sip::sdp::SrtpMode;
        if self.tls_listeners() > 0 {
            return None;
        }
        match self.media.srtp_mode? {
            SrtpMode::Off => None,
            SrtpMode::Optional => Some(
                "[media] srtp = \"optional\" but [sip] has no TLS listener: SDES keys are only \
                 accepted over TLS, so every call will be plain RTP"
                    .into(),
            ),
            SrtpMode::Required => Some(
                "[media] srtp = \"required\" but [sip] has no TLS listener: SDES keys are only \
                 accepted over TLS, so every call will be refused with 488"
                    .into(),
            ),
        }
    }

    /// Reads every `*_file` secret into its key (SMS provider tokens, webhook headers, the
    /// transfer password); see [`crate::secrets`]. Warnings go to [`Config::warnings`].
    pub fn resolve_secrets(&mut self, files: &crate::secrets::SecretFiles) -> Result<(), String> {
        self.sms.resolve_secrets(files, &mut self.warnings)?;
        self.store.resolve_secret(files, &mut self.warnings)?;
        let api = &mut self.api;
        files.resolve_option(
            "[api]",
            "webhook_secret",
            &mut api.webhook_secret,
            api.webhook_secret_file.as_deref(),
            &mut self.warnings,
        )?;
        let o = &mut self.outbound;
        files.resolve_option(
            "[outbound]",
            "password",
            &mut o.password,
            o.password_file.as_deref(),
            &mut self.warnings,
        )?;
        if o.username.is_some() != o.password.is_some() {
            return Err(
                "[outbound] username and password (or password_file) go together: set both \
                 or neither"
                    .into(),
            );
        }
        let t = &mut self.transfer;
        files.resolve_option(
            "[transfer]",
            "password",
            &mut t.password,
            t.password_file.as_deref(),
            &mut self.warnings,
        )?;
        if t.username.is_some() != t.password.is_some() {
            // Either alone would silently answer no challenge at all.
            return Err(
                "[transfer] username and password (or password_file) go together: set both \
                 or neither"
                    .into(),
            );
        }
        Ok(())
    }

    /// Range and consistency checks that TOML types alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        self.api.validate()?;
        self.store.validate()?;
        self.outbound.validate(&self.sip)?;
        if self.api.tls && self.tls.files().is_none() {
            return Err(
                "[api] tls = true, but [tls] cert and key are not both set: name the PEM files"
                    .into(),
            );
        }
        if self.sip.udp.is_empty() && self.sip.tcp.is_empty() && self.sip.tls.is_empty() {
            return Err("[sip] needs at least one udp, tcp or tls listen address".into());
        }
        if !self.sip.tls.is_empty() && self.tls.files().is_none() {
            return Err(
                "[sip] tls listens, but [tls] cert and key are not both set: name the PEM files"
                    .into(),
            );
        }
        if self.tls.require_client_cert && self.tls.client_ca.is_none() {
            return Err(
                "[tls] require_client_cert needs client_ca: the CA file client certificates must chain to"
                    .into(),
            );
        }
        let wildcard = self
            .sip
            .udp
            .iter()
            .chain(&self.sip.tcp)
            .chain(&self.sip.tls)
            .find(|a| a.ip().is_unspecified());
        if let (Some(addr), None) = (wildcard, &self.sip.public_host) {
            // Our Contact would say sip:ivrd@0.0.0.0 and no peer could send us a BYE.
            return Err(format!(
                "[sip] listens on {addr}: set public_host to the address or name peers reach this host by"
            ));
        }
        if self.sip.t1_ms == 0 || self.sip.t2_ms < self.sip.t1_ms {
            return Err("[sip] t1_ms must be > 0 and t2_ms >= t1_ms".into());
        }
        self.sip.peer_policy()?;
        let sip = &self.sip;
        if !(sip.source_calls_per_sec > 0.0 && sip.source_calls_per_sec.is_finite()) {
            return Err("[sip] source_calls_per_sec must be a positive number".into());
        }
        for (name, v) in [
            ("source_unconfirmed", sip.source_unconfirmed as usize),
            ("source_transactions", sip.source_transactions as usize),
            ("source_calls", sip.source_calls as usize),
            ("max_transactions", sip.max_transactions),
            ("max_transaction_kib", sip.max_transaction_kib),
            ("tcp_max_connections", sip.tcp_max_connections),
            ("tcp_max_per_source", sip.tcp_max_per_source),
            ("tcp_idle_secs", sip.tcp_idle_secs as usize),
            (
                "tcp_message_timeout_ms",
                sip.tcp_message_timeout_ms as usize,
            ),
            ("tcp_write_queue_kib", sip.tcp_write_queue_kib),
        ] {
            if v == 0 {
                return Err(format!("[sip] {name} must be at least 1"));
            }
        }
        if sip.session_min_se_secs == 0 {
            return Err("[sip] session_min_se_secs must be at least 1 (RFC 4028 says 90)".into());
        }
        if sip.ack_timeout_ms.is_some_and(|ms| ms < sip.t1_ms) {
            return Err(format!(
                "[sip] ack_timeout_ms must be at least T1 ({} ms): the 200 must have a chance to be resent",
                sip.t1_ms
            ));
        }
        let m = &self.media;
        if m.rtp_port_min == 0 || m.rtp_port_max < m.rtp_port_min.saturating_add(1) {
            return Err(format!(
                "[media] rtp_port_min..rtp_port_max ({}..{}) must hold at least two ports",
                m.rtp_port_min, m.rtp_port_max
            ));
        }
        if m.rtp_ip.is_unspecified() && m.announce_ip.is_none() {
            // 0.0.0.0 in SDP means "on hold": callers would hear nothing.
            return Err(format!(
                "[media] rtp_ip = {} would be announced in SDP (meaning \"on hold\"): set this host's address, or set announce_ip",
                m.rtp_ip
            ));
        }
        if let Some(ip6) = m.rtp_ip6 {
            if ip6.is_ipv4() == m.rtp_ip.is_ipv4() {
                return Err(format!(
                    "[media] rtp_ip6 = {ip6} is of the same family as rtp_ip = {}: it is the \
                     media address for the other family",
                    m.rtp_ip
                ));
            }
            if ip6.is_unspecified() && m.announce_ip6.is_none() {
                return Err(format!(
                    "[media] rtp_ip6 = {ip6} would be announced in SDP: set this host's address, or set announce_ip6"
                ));
            }
        }
        if m.codecs.is_empty() {
            return Err("[media] codecs must name at least one of PCMU, PCMA".into());
        }
        for c in &m.codecs {
            if !matches!(c.to_ascii_uppercase().as_str(), "PCMU" | "PCMA") {
                return Err(format!(
                    "[media] codecs: unknown codec {c:?} (use PCMU or PCMA)"
                ));
            }
        }
        if !(1..=32).contains(&m.rtp_probation) {
            return Err("[media] rtp_probation must be 1..=32".into());
        }
        if m.pacing_threads == 0 || m.pacing_threads > 64 {
            return Err("[media] pacing_threads must be 1..=64".into());
        }
        if !(-20..=19).contains(&m.pacer_nice) {
            return Err("[media] pacer_nice must be -20..=19".into());
        }
        if self.demo.max_digits == 0 {
            return Err("[demo] max_digits must be at least 1".into());
        }
        self.limits
            .validate()
            .map_err(|e| format!("[limits] {e}"))?;
        self.guard.validate().map_err(|e| format!("[guard] {e}"))?;
        Ok(())
    }

    /// `[admin] listen` of the config file at `path`, read without checking the rest (for
    /// `ivrd reload`, which must reach the daemon even with a config it will refuse); the
    /// default when the file cannot be read.
    pub fn admin_listen_in(path: &Path) -> String {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .and_then(|t| t.get("admin")?.get("listen")?.as_str().map(str::to_string))
            .unwrap_or_else(|| AdminConfig::default().listen)
    }

    /// RTP ports (calls) the range holds: one even port each.
    pub fn rtp_slots(&self) -> u32 {
        u32::from(
            self.media
                .rtp_port_max
                .saturating_sub(self.media.rtp_port_min),
        ) / 2
            + 1
    }

    pub fn timers(&self) -> (Duration, Duration, Duration) {
        (
            Duration::from_millis(self.sip.t1_ms),
            Duration::from_millis(self.sip.t2_ms),
            Duration::from_millis(self.sip.t4_ms),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn srtp_mode_defaults_to_optional_and_warns_only_when_set_without_tls() {
        use crate::sip::sdp::SrtpMode;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load_without_secrets(&path)
        };
        let cfg = load("").unwrap();
        assert_eq!(cfg.media.srtp(), SrtpMode::Optional);
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let cfg = load("[media]\nsrtp = \"off\"\n").unwrap();
        assert_eq!((cfg.media.srtp(), cfg.warnings.len()), (SrtpMode::Off, 0));
        // No [sip] tls listener: SDES would never be taken, which the admin should hear.
        let cfg = load("[media]\nsrtp = \"optional\"\n").unwrap();
        assert!(
            cfg.warnings[0].contains("no TLS listener"),
            "{:?}",
            cfg.warnings
        );
        let cfg = load("[media]\nsrtp = \"required\"\n").unwrap();
        assert_eq!(cfg.media.srtp(), SrtpMode::Required);
        assert!(
            cfg.warnings[0].contains("refused with 488"),
            "{:?}",
            cfg.warnings
        );
        // With a TLS listener, SRTP can happen: nothing to warn about.
        let cfg = load(
            "[sip]\ntls = [\"127.0.0.1:5061\"]\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             [media]\nsrtp = \"required\"\n",
        )
        .unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let err = load("[media]\nsrtp = \"yes\"\n").unwrap_err().to_string();
        assert!(err.contains("srtp") || err.contains("yes"), "{err}");
    }

    #[test]
    fn audit_keep_days_defaults_to_forever_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load_without_secrets(&path)
        };
        let cfg = load("").unwrap();
        assert_eq!((cfg.audit.keep_days, cfg.audit.keep()), (0, None));
        let cfg = load("[audit]\nkeep_days = 0\n").unwrap();
        assert_eq!(cfg.audit.keep(), None);
        let cfg = load("[audit]\nkeep_days = 90\n").unwrap();
        assert_eq!(cfg.audit.keep(), Some(Duration::from_secs(90 * 86_400)));
        let err = load("[audit]\nkeep_days = -1\n").unwrap_err().to_string();
        assert!(err.contains("keep_days"), "{err}");
        let err = load("[audit]\nkeep = 90\n").unwrap_err().to_string();
        assert!(err.contains("keep"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.toml");
        std::fs::write(&path, "[sip]\nudpp = [\"127.0.0.1:5060\"]\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("udpp"), "{err}");
    }

    #[test]
    fn relative_prompt_dir_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.toml");
        std::fs::write(
            &path,
            "[media]\nprompts_dir = \"p\"\nrtp_port_min = 30000\nrtp_port_max = 30010\n",
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.media.prompts_dir, dir.path().join("p"));
        assert_eq!(cfg.media.rtp_port_max, 30010);
    }

    #[test]
    fn wildcard_sip_listener_needs_a_public_host() {
        let mut cfg = Config::default();
        cfg.sip.udp = vec!["0.0.0.0:5060".parse().unwrap()];
        assert!(cfg.validate().unwrap_err().contains("public_host"));
        cfg.sip.public_host = Some("pbx-ivr.example.com".into());
        cfg.validate().unwrap();
    }

    #[test]
    fn wildcard_rtp_address_needs_an_announced_one() {
        let mut cfg = Config::default();
        cfg.media.rtp_ip = "0.0.0.0".parse().unwrap();
        assert!(cfg.validate().unwrap_err().contains("announce_ip"));
        cfg.media.announce_ip = Some("192.0.2.10".parse().unwrap());
        cfg.validate().unwrap();
    }

    /// A config with `body` in `dir`, loaded without secrets, then resolved against `dir`
    /// and the credentials directory `creds`.
    fn with_secrets(dir: &Path, creds: Option<&Path>, body: &str) -> Result<Config, String> {
        let path = dir.join("ivrd.toml");
        std::fs::write(&path, body).unwrap();
        let mut cfg = Config::load_without_secrets(&path).map_err(|e| e.to_string())?;
        let files = crate::secrets::SecretFiles::new(dir, creds.map(Path::to_path_buf));
        cfg.resolve_secrets(&files)?;
        Ok(cfg)
    }

    fn secret_file(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    const TWILIO: &str = "[sms]\nprovider = \"twilio\"\n\
        account_sid = \"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\nfrom = \"+15005550006\"\n";

    #[test]
    fn every_secret_can_come_from_a_file_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, value) in [
            ("twilio", "tw-secret-1"),
            ("tyntec", "ty-secret-2"),
            ("azure", "aXZyZC1zZWNyZXQ="),
            ("vonage", "vo-secret-3"),
            ("auth", "Bearer wh-secret-4"),
            ("pbx", "pbx-secret-5"),
        ] {
            secret_file(&d.join("credentials").join(name), &format!("{value}\n"));
        }
        let cases = [
            (
                format!("{TWILIO}auth_token_file = \"credentials/twilio\"\n"),
                "tw-secret-1",
            ),
            (
                "[sms]\nprovider = \"tyntec\"\nfrom = \"ivrd\"\n\
                 api_key_file = \"credentials/tyntec\"\n"
                    .into(),
                "ty-secret-2",
            ),
            (
                "[sms]\nprovider = \"azure\"\nendpoint = \"https://x.communication.azure.com\"\n\
                 from = \"+18005550100\"\naccess_key_file = \"credentials/azure\"\n"
                    .into(),
                "aXZyZC1zZWNyZXQ=",
            ),
            (
                "[sms]\nprovider = \"vonage\"\napi_key = \"k\"\nfrom = \"ivrd\"\n\
                 api_secret_file = \"credentials/vonage\"\n"
                    .into(),
                "vo-secret-3",
            ),
            (
                "[sms]\nprovider = \"webhook\"\nurl = \"https://gw.example/sms\"\n\
                 headers = { X-Tenant = \"acme\" }\n\
                 headers_file = { Authorization = \"credentials/auth\" }\n"
                    .into(),
                "Bearer wh-secret-4",
            ),
        ];
        for (body, secret) in cases {
            let body = format!(
                "{body}[transfer]\nusername = \"ivrd\"\npassword_file = \"credentials/pbx\"\n"
            );
            let cfg = with_secrets(d, None, &body).unwrap_or_else(|e| panic!("{e}\n{body}"));
            // The provider gets the secret from the file...
            crate::verify::sms::build(&cfg.sms).unwrap_or_else(|e| panic!("{e}\n{body}"));
            let shown = format!("{:?}", cfg.sms);
            assert!(!shown.contains(secret), "{shown}");
            assert_eq!(cfg.transfer.password.as_deref(), Some("pbx-secret-5"));
            // ...and no Debug output carries it.
            let all = format!("{cfg:?}");
            for leak in [secret, "pbx-secret-5"] {
                assert!(!all.contains(leak), "{leak} in {all}");
            }
            assert!(all.contains("password: Some(\"***\")"), "{all}");
            assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        }
        let cfg = with_secrets(
            d,
            None,
            "[sms]\nprovider = \"webhook\"\nurl = \"https://gw.example/sms\"\n\
             headers_file = { Authorization = \"credentials/auth\" }\n",
        )
        .unwrap();
        let crate::verify::sms::SmsConfig::Webhook { headers, .. } = &cfg.sms else {
            panic!("not webhook");
        };
        assert_eq!(headers["Authorization"], "Bearer wh-secret-4");
    }

    #[test]
    fn secret_files_come_from_the_credentials_directory_under_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let creds = tempfile::tempdir().unwrap();
        // What LoadCredential=credentials:/etc/ivrd/credentials makes of credentials/twilio.
        secret_file(&creds.path().join("credentials_twilio"), "from-systemd");
        secret_file(&dir.path().join("credentials/twilio"), "from-etc");
        let body = format!("{TWILIO}auth_token_file = \"credentials/twilio\"\n");
        let cfg = with_secrets(dir.path(), Some(creds.path()), &body).unwrap();
        let crate::verify::sms::SmsConfig::Twilio { auth_token, .. } = &cfg.sms else {
            panic!("not twilio");
        };
        assert_eq!(auth_token, "from-systemd");
        let cfg = with_secrets(dir.path(), None, &body).unwrap();
        let crate::verify::sms::SmsConfig::Twilio { auth_token, .. } = &cfg.sms else {
            panic!("not twilio");
        };
        assert_eq!(auth_token, "from-etc");
    }

    #[test]
    fn secret_settings_that_cannot_work_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        secret_file(&d.join("tok"), "t");
        let cases = [
            (
                format!("{TWILIO}auth_token = \"inline\"\nauth_token_file = \"tok\"\n"),
                "[sms] auth_token and auth_token_file are both set",
            ),
            (TWILIO.to_string(), "[sms] twilio needs auth_token_file"),
            (
                format!("{TWILIO}auth_token_file = \"missing\"\n"),
                "[sms] auth_token_file = \"missing\": ",
            ),
            (
                "[sms]\nprovider = \"webhook\"\nurl = \"https://gw.example/sms\"\n\
                 headers = { authorization = \"Bearer inline\" }\n\
                 headers_file = { Authorization = \"tok\" }\n"
                    .into(),
                "headers.Authorization and headers_file.Authorization are both set",
            ),
            (
                "[transfer]\nusername = \"u\"\npassword = \"p\"\npassword_file = \"tok\"\n".into(),
                "[transfer] password and password_file are both set",
            ),
            (
                "[transfer]\nusername = \"u\"\n".into(),
                "[transfer] username and password (or password_file) go together",
            ),
            (
                "[transfer]\npassword_file = \"tok\"\n".into(),
                "go together",
            ),
        ];
        for (body, needle) in cases {
            let e = with_secrets(d, None, &body).unwrap_err();
            assert!(e.contains(needle), "{needle:?} not in {e}\n{body}");
        }
        // Through Config::load the error names the config file too.
        let path = d.join("ivrd.toml");
        std::fs::write(&path, format!("{TWILIO}auth_token_file = \"missing\"\n")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: [sms] auth_token_file", path.display())),
            "{e}"
        );
        // Commands that use no secret still load it.
        Config::load_without_secrets(&path).unwrap();
    }

    #[test]
    fn bad_ranges_are_explained() {
        let mut cfg = Config::default();
        cfg.media.rtp_port_max = cfg.media.rtp_port_min;
        assert!(cfg.validate().unwrap_err().contains("rtp_port_min"));
        let mut cfg = Config::default();
        cfg.media.rtp_probation = 0;
        assert!(cfg.validate().unwrap_err().contains("rtp_probation"));
        cfg.media.rtp_probation = 33;
        assert!(cfg.validate().unwrap_err().contains("rtp_probation"));
        cfg.media.rtp_probation = 32;
        cfg.validate().unwrap();
    }

    #[test]
    fn outbound_settings_are_checked() {
        let base = "[outbound]\nproxy = \"127.0.0.1:5070\"\n";
        let parse = |extra: &str| -> Result<Config, String> {
            let body = if extra.starts_with("proxy") {
                format!("[outbound]\n{extra}")
            } else {
                format!("{base}{extra}")
            };
            let cfg: Config = toml::from_str(&body).map_err(|e| e.to_string())?;
            cfg.validate().map(|()| cfg)
        };
        let cfg = parse("").unwrap();
        assert!(cfg.outbound.enabled());
        assert_eq!(
            cfg.outbound.proxy_addr(),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert!(!Config::default().outbound.enabled());
        for (extra, says) in [
            (
                "proxy = \"trunk.example.com\"\n",
                "write the trunk as IP:port",
            ),
            ("transport = \"sctp\"\n", "use udp, tcp or tls"),
            ("transport = \"tls\"\n", "no tls listener"),
            ("request_uri = \"sip:trunk.example.com\"\n", "with {number}"),
            ("request_uri = \"http://{number}\"\n", "a sip: or sips: URI"),
            ("from = \"<sip:x@y>\"\n", "a sip:, sips: or tel: URI"),
            ("ring_timeout_secs = 1\n", "ring_timeout_secs"),
            ("max_calls = 0\n", "max_calls"),
            ("readings = 0\n", "readings"),
            ("max_repeats = 10\n", "max_repeats"),
            ("readout = [\"voice-code-is\"]\n", "{code}"),
            ("readout = [\"{code}\", \"{code}\"]\n", "{code}"),
        ] {
            let e = parse(extra).map(|_| ()).unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
        let proxy =
            "[outbound]\nproxy = \"127.0.0.1:5070\"\nusername = \"u\"\npassword = \"secret-7\"\n";
        let cfg: Config = toml::from_str(proxy).unwrap();
        assert!(!format!("{cfg:?}").contains("secret-7"));
    }
}
