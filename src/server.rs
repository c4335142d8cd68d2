//! The daemon: loads everything, binds every socket, accepts calls, reloads and shuts down.
//!
//! Start-up order matters to operators: config, prompts and dialplans are loaded and checked
//! first (a bad file is named before any socket is bound), then the store, media engine and
//! SIP listeners start, and only then is the daemon "ready".
//!
//! What a reload may change (prompts, dialplans, SMS provider, limits, dialplan vars) lives in
//! a [`Snapshot`]. A reload builds a whole new snapshot and swaps it in at once; a call takes
//! the snapshot current when it starts and keeps it to the end, so calls in progress finish on
//! the version they started with. If anything in the new files is wrong, the running snapshot
//! stays and the log says why. Listen addresses, RTP ports and the database path need a restart.

use crate::admin_http::{AdminState, ReloadRecord, ReloadRequest};
use crate::audit::AuditWriter;
use crate::call::{self, CallContext, CallEnd, CallSettings, CallSummary};
use crate::config::Config;
use crate::dialplan::{self, CheckEnv, Dialplan, FlowResult};
use crate::media::engine::{MediaEngine, MediaSettings};
use crate::media::prompt::PromptLibrary;
use crate::metrics::Metrics;
use crate::services::{CallServices, SentHook, Shared};
use crate::sip::core::{self, CoreConfig, NewCall};
use crate::sip::message::{ResponseBuilder, uri_user};
use crate::sip::sdp::Codec;
use crate::sip::transaction::Timers;
use crate::sip::transport::{self, Protocol};
use crate::store::{AuditRow, Store};
use crate::verify::limits::Verifier;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

/// What a running daemon tells whoever started it.
#[derive(Debug, Clone)]
pub struct Ready {
    pub sip: Vec<(Protocol, SocketAddr)>,
}

/// Everything a reload can replace, validated as a whole.
pub struct Snapshot {
    pub prompts: Arc<PromptLibrary>,
    pub plans: Vec<Arc<Dialplan>>,
    pub default_plan: Option<Arc<Dialplan>>,
    pub services: Arc<Shared>,
    pub demo: Option<crate::config::DemoConfig>,
    /// What calls started from now on use: codecs, ring time, transfer credentials and
    /// timeout, ... (the transfer password is a secret, so a reload re-reads its file).
    pub settings: Arc<CallSettings>,
    /// The HTTP API's texts and limits.
    pub api: Arc<crate::config::ApiConfig>,
}

/// The configured prompts: `[media] prompts_dir` over the bundled set (see
/// [`crate::config::MediaConfig::prompt_dirs`]), and a line saying where they came from.
pub fn load_prompts(cfg: &Config) -> anyhow::Result<(PromptLibrary, String)> {
    let dirs = cfg.media.prompt_dirs();
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let (prompts, supplied) = PromptLibrary::load_layers(&dirs)
        .with_context(|| format!("loading prompts from {}", shown.join(" over ")))?;
    let from: Vec<String> = shown
        .iter()
        .zip(&supplied)
        .map(|(d, n)| format!("{n} from {d}"))
        .collect();
    Ok((prompts, from.join(", ")))
}

/// What [`load_flows`] loaded, and what deserves a warning without stopping anything.
pub struct Flows {
    pub prompts: PromptLibrary,
    pub plans: Vec<Dialplan>,
    pub warnings: Vec<String>,
}

/// Loads and checks prompts and dialplans (no database, no network): what `ivrd check` runs.
pub fn load_flows(cfg: &Config) -> anyhow::Result<Flows> {
    let (prompts, _) = load_prompts(cfg)?;
    if cfg.outbound.enabled() {
        check_readout_prompts(cfg, &prompts)?;
    }
    if cfg.demo.enabled {
        let lang = &cfg.media.default_language;
        let missing = missing_prompts(&prompts, lang, crate::demo::PROMPTS.iter().copied());
        if !missing.is_empty() {
            bail!(
                "{}: language {lang:?} lacks the demo prompts {} (add {}/<name>.wav files)",
                cfg.media.prompts_dir.display(),
                missing.join(", "),
                cfg.media.prompts_dir.join(lang).display()
            );
        }
        return Ok(Flows {
            prompts,
            plans: Vec::new(),
            warnings: Vec::new(),
        });
    }
    let languages: Vec<String> = prompts.languages().map(str::to_string).collect();
    let exists = |lang: &str, name: &str| prompts.contains(lang, name);
    let env = CheckEnv {
        prompt_exists: &exists,
        languages: &languages,
    };
    let mut plans = dialplan::load_dir(&cfg.dialplans.dir, &env)?;
    if plans.is_empty() {
        bail!(
            "{}: no dialplans (*.toml) found",
            cfg.dialplans.dir.display()
        );
    }
    let warnings = crate::dialplan::apply_site_vars(&mut plans, &cfg.dialplans.vars, true)
        .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
    let calendar = Arc::new(cfg.dialplans.calendar().map_err(anyhow::Error::msg)?);
    for plan in &mut plans {
        plan.calendar = calendar.clone();
    }
    dialplan::check::link(&mut plans);
    if let Some(name) = &cfg.dialplans.default
        && !plans.iter().any(|p| &p.name == name)
    {
        let known: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "[dialplans] default = {name:?}, but {} has no plan of that name (it has: {})",
            cfg.dialplans.dir.display(),
            known.join(", ")
        );
    }
    Ok(Flows {
        prompts,
        plans,
        warnings,
    })
}

/// The prompts of `names` that `lang` lacks.
fn missing_prompts<'a>(
    prompts: &PromptLibrary,
    lang: &str,
    names: impl Iterator<Item = &'a str>,
) -> Vec<&'a str> {
    names.filter(|p| !prompts.contains(lang, p)).collect()
}

/// A code call speaks every language the prompts have (the verification's locale picks one):
/// each must have the read-out's prompts and the ten digits.
fn check_readout_prompts(cfg: &Config, prompts: &PromptLibrary) -> anyhow::Result<()> {
    let digits: Vec<String> = (0..10).map(|d| format!("digit-{d}")).collect();
    let needed: Vec<&str> = cfg
        .outbound
        .readout
        .iter()
        .filter(|p| *p != crate::verify::voice::CODE)
        .map(String::as_str)
        .chain(crate::verify::voice::PROMPTS)
        .chain(digits.iter().map(String::as_str))
        .collect();
    for lang in prompts.languages() {
        let missing = missing_prompts(prompts, lang, needed.iter().copied());
        if !missing.is_empty() {
            bail!(
                "[outbound]: language {lang:?} lacks the prompts a code call plays: {} (add {}/<name>.wav files, or fix [outbound] readout)",
                missing.join(", "),
                cfg.media.prompts_dir.join(lang).display()
            );
        }
    }
    Ok(())
}

/// Builds a snapshot over an open store.
pub fn build_snapshot(
    cfg: &Config,
    store: Arc<Store>,
    on_sent: Option<SentHook>,
    metrics: Arc<Metrics>,
    previous: Option<&Shared>,
) -> anyhow::Result<Snapshot> {
    let Flows {
        prompts,
        plans,
        warnings,
    } = load_flows(cfg)?;
    for w in &warnings {
        warn!("{w}");
    }
    let sms = crate::verify::sms::build(&cfg.sms).context("[sms]")?;
    let mut verifier = Verifier::new(store.clone(), cfg.limits.clone())
        .context("[limits]")?
        .with_guard(cfg.guard.clone());
    if let Some(secret) = &cfg.store.pin_key {
        verifier = verifier
            .with_shared_pins(secret.trim().as_bytes())
            .context("[store] pin_key")?;
    }
    if let Some(old) = previous {
        verifier = verifier.keeping_pins_of(&old.verifier);
    }
    let plans: Vec<Arc<Dialplan>> = plans.into_iter().map(Arc::new).collect();
    let default_plan = cfg
        .dialplans
        .default
        .as_ref()
        .and_then(|name| plans.iter().find(|p| &p.name == name).cloned());
    Ok(Snapshot {
        prompts: Arc::new(prompts),
        plans,
        default_plan,
        services: Arc::new(Shared {
            store,
            verifier: Arc::new(verifier),
            sms,
            default_region: cfg.store.default_region.clone(),
            on_sent,
            metrics,
            send_times: Default::default(),
            http: crate::services::HttpBackend::Client(crate::http_lookup::HttpClient::new()),
            voice: previous.map(|p| p.voice.clone()).unwrap_or_default(),
        }),
        demo: cfg.demo.enabled.then(|| cfg.demo.clone()),
        settings: Arc::new(call_settings(cfg)),
        api: Arc::new(cfg.api.clone()),
    })
}

/// The call settings `cfg` gives: what a reload changes for calls that start afterwards.
pub fn call_settings(cfg: &Config) -> CallSettings {
    let codecs = cfg
        .media
        .codecs
        .iter()
        .map(|c| {
            if c.eq_ignore_ascii_case("PCMA") {
                Codec::Pcma
            } else {
                Codec::Pcmu
            }
        })
        .collect();
    CallSettings {
        user_agent: cfg.sip.user_agent.clone(),
        ring: Duration::from_millis(cfg.sip.ring_ms),
        max_call: (cfg.media.max_call_secs > 0)
            .then(|| Duration::from_secs(cfg.media.max_call_secs)),
        codecs,
        media_addrs: media_addrs(&cfg.media),
        public_host: cfg.sip.public_host.clone(),
        default_language: cfg.media.default_language.clone(),
        dtmf_dedup_window: crate::media::dtmf::DigitDedup::DEFAULT_WINDOW,
        transfer_timeout: Duration::from_secs(cfg.transfer.timeout_secs),
        auth: cfg
            .transfer
            .username
            .clone()
            .zip(cfg.transfer.password.clone())
            .map(|(username, password)| crate::call::Credentials { username, password }),
        session_min_se: cfg.sip.session_min_se_secs,
        srtp: cfg.media.srtp(),
    }
}

/// The settings that changed between `running` and `new` but take effect only on a restart:
/// the sockets, the SIP core's timers and limits, the media engine, the database and how long
/// its audit is kept, the admin listener and the log filter. Everything else a reload applies.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! check {
        ($($section:ident . $key:ident),* $(,)?) => {
            $(
                if format!("{:?}", running.$section.$key) != format!("{:?}", new.$section.$key) {
                    changed.push(concat!("[", stringify!($section), "] ", stringify!($key)));
                }
            )*
        };
    }
    check!(
        sip.udp,
        sip.tcp,
        sip.tls,
        sip.t1_ms,
        sip.t2_ms,
        sip.t4_ms,
        sip.ack_timeout_ms,
        sip.user_agent,
        sip.overload_reject_ms,
        sip.trusted,
        sip.untrusted,
        sip.source_calls_per_sec,
        sip.source_unconfirmed,
        sip.source_transactions,
        sip.source_calls,
        sip.max_transactions,
        sip.max_transaction_kib,
        sip.tcp_max_connections,
        sip.tcp_max_per_source,
        sip.tcp_idle_secs,
        sip.tcp_message_timeout_ms,
        sip.tcp_write_queue_kib,
        media.rtp_ip,
        media.rtp_ip6,
        media.rtp_port_min,
        media.rtp_port_max,
        media.symmetric_rtp,
        media.strict_rtp,
        media.rtp_probation,
        media.rtp_timeout_secs,
        media.inband_dtmf,
        media.pacing_threads,
        media.pacer_nice,
        store.path,
        audit.keep_days,
        admin.listen,
        api.listen,
        api.max_connections,
        api.tls,
        outbound.proxy,
        outbound.transport,
        outbound.request_uri,
        outbound.from,
        outbound.username,
        outbound.password,
        outbound.ring_timeout_secs,
        outbound.max_calls,
        outbound.key_first,
        outbound.readings,
        outbound.max_repeats,
        outbound.readout,
        log.level,
    );
    changed
}

/// Opens the database; a new one gets the seed customers, if configured (on PostgreSQL only
/// the node whose migration created the schema seeds it). Blocking: call it off the async
/// runtime (the PostgreSQL client runs one of its own).
pub fn open_store(cfg: &Config) -> anyhow::Result<Arc<Store>> {
    let database = cfg.store.database();
    let store = database
        .open()
        .with_context(|| format!("opening {}", database.describe()))?;
    if store.was_created()
        && let Some(seed) = &cfg.store.seed_csv
    {
        let file = std::fs::File::open(seed)
            .with_context(|| format!("seed customers {}", seed.display()))?;
        let report = store.import_csv(file, &cfg.store.default_region)?;
        info!(created = report.created, rejected = report.rejected.len(), file = %seed.display(), "seed customers imported");
    }
    Ok(Arc::new(store))
}

impl Snapshot {
    /// The plan answering `dialed`, or the default.
    pub fn plan_for(&self, dialed: &str) -> Option<Arc<Dialplan>> {
        dialplan::select(&self.plans, dialed)
            .cloned()
            .or_else(|| self.default_plan.clone())
    }
}

/// Runs the daemon until `shutdown` is cancelled. `ready` is told once every socket is bound;
/// each message on `reload` re-reads `config_path` (or the defaults), prompts and dialplans.
pub async fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
    mut reload: mpsc::Receiver<()>,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> anyhow::Result<()> {
    let store = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || open_store(&cfg))
            .await
            .context("opening the database")??
    };
    let metrics = Arc::new(Metrics::default());
    crate::services::declare_metric_labels(&metrics);
    let snapshot = build_snapshot(&cfg, store.clone(), None, metrics.clone(), None)?;
    let plan_names: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(
        snapshot.plans.iter().map(|p| p.name.clone()).collect(),
    ));
    let loaded_plans: Arc<RwLock<Vec<Arc<Dialplan>>>> =
        Arc::new(RwLock::new(snapshot.plans.clone()));
    let live = Arc::new(crate::live::Live::default());
    info!(
        prompts = snapshot.prompts.len(),
        languages = %snapshot.prompts.languages().collect::<Vec<_>>().join(","),
        dialplans = %snapshot.plans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","),
        "loaded"
    );
    let current = Arc::new(RwLock::new(Arc::new(snapshot)));
    let last_reload: Arc<RwLock<Option<ReloadRecord>>> = Arc::default();
    let (admin_reload_tx, mut admin_reload) = mpsc::channel::<ReloadRequest>(4);
    // Settings a reload may change that are read after the loop ends (the drain).
    let mut latest = cfg.clone();
    // The database path changes only on restart, so one audit writer serves every snapshot.
    let audit =
        AuditWriter::start_with_spool(store.clone(), cfg.audit.spool()).with_context(|| {
            format!(
                "starting the audit writer (spool {})",
                cfg.audit.spool_path.display()
            )
        })?;
    if let Some(keep) = cfg.audit.keep() {
        spawn_audit_pruning(store.clone(), keep, shutdown.clone());
    }
    // Counts every limit has stopped looking at, under the limits in force at each run (a
    // reload may widen a window).
    spawn_limits_purge(store.clone(), current.clone(), shutdown.clone());

    let (t1, t2, t4) = cfg.timers();
    // A media address not on this host would let the daemon say "ready" and fail every call.
    for (setting, ip) in [
        ("[media] rtp_ip", Some(cfg.media.rtp_ip)),
        ("[media] rtp_ip6", cfg.media.rtp_ip6),
    ] {
        if let Some(ip) = ip
            && let Err(e) = crate::preflight::media_ip_usable(ip)
        {
            anyhow::bail!("{setting} = {ip}: {}", crate::preflight::explain(&e).0);
        }
    }
    let media = MediaEngine::start(MediaSettings {
        rtp_ip: cfg.media.rtp_ip,
        port_min: cfg.media.rtp_port_min,
        port_max: cfg.media.rtp_port_max,
        symmetric_rtp: cfg.media.symmetric_rtp,
        strict_rtp: cfg.media.strict_rtp,
        rtp_probation: cfg.media.rtp_probation,
        rtp_timeout: (cfg.media.rtp_timeout_secs > 0)
            .then(|| Duration::from_secs(cfg.media.rtp_timeout_secs)),
        inband_dtmf: cfg.media.inband_dtmf,
        pacing_threads: cfg.media.pacing_threads,
        pacer_nice: cfg.media.pacer_nice,
    })
    .context("starting the media engine")?;

    let (incoming_tx, incoming_rx) = mpsc::channel(4096);
    let sip_shutdown = CancellationToken::new();
    let policy = cfg.sip.peer_policy().map_err(anyhow::Error::msg)?;
    if policy.is_open() {
        warn!(
            "[sip] trusted is empty: any host that reaches the SIP port can place calls and \
             make ivrd send SMS (as an untrusted source, within the per-source limits); \
             list your PBX in [sip] trusted"
        );
    }
    check_descriptors(&cfg);
    let transports = transport::Transports::new(
        policy,
        transport::TcpLimits {
            max_connections: cfg.sip.tcp_max_connections,
            max_per_source: cfg.sip.tcp_max_per_source,
            idle: Duration::from_secs(cfg.sip.tcp_idle_secs),
            message_timeout: Duration::from_millis(cfg.sip.tcp_message_timeout_ms),
            write_queue: cfg.sip.tcp_write_queue_kib * 1024,
        },
    );
    transports.set_tls(tls_config(&cfg)?);
    let bound = transport::bind(
        &transports,
        &cfg.sip.udp,
        &cfg.sip.tcp,
        &cfg.sip.tls,
        incoming_tx,
        sip_shutdown.clone(),
    )
    .await
    .context("binding SIP listeners")?;
    let (calls_tx, mut calls_rx) = mpsc::channel(1024);
    let core = core::spawn(
        CoreConfig {
            timers: Timers {
                t1,
                t2,
                t4,
                ack_wait: cfg.sip.ack_timeout(),
            },
            user_agent: cfg.sip.user_agent.clone(),
            overload_after: (cfg.sip.overload_reject_ms > 0)
                .then(|| Duration::from_millis(cfg.sip.overload_reject_ms)),
            budgets: cfg.sip.budgets(cfg.rtp_slots()),
            max_transactions: cfg.sip.max_transactions,
            max_transaction_bytes: cfg.sip.max_transaction_kib.saturating_mul(1024),
            refuse_without_database: cfg.store.when_away == crate::config::WhenAway::Refuse,
        },
        transports,
        incoming_rx,
        calls_tx,
        sip_shutdown.clone(),
    );

    let hangup_all = CancellationToken::new();
    let calls = TaskTracker::new();
    let admin_shutdown = CancellationToken::new();
    if !cfg.admin.listen.is_empty() {
        let state = AdminState {
            metrics: metrics.clone(),
            core: core.stats.clone(),
            transport: core.transports.stats_handle(),
            media: media.stats().clone(),
            started: SystemTime::now(),
            dialplans: plan_names.clone(),
            last_reload: last_reload.clone(),
            reload: Some(admin_reload_tx.clone()),
            plans: loaded_plans.clone(),
            live: live.clone(),
            store: Some(store.clone()),
            drain: Some(crate::admin_http::DrainControl {
                core: core.clone(),
                retry_after_secs: cfg.shutdown.drain_secs.clamp(1, u64::from(u32::MAX)) as u32,
                stopping: shutdown.clone(),
            }),
        };
        crate::admin_http::serve(&cfg.admin.listen, state, admin_shutdown.clone())
            .await
            .with_context(|| {
                format!(
                    "binding the admin listener [admin] listen = {:?}",
                    cfg.admin.listen
                )
            })?;
    }
    let voice = match outbound_settings(&cfg, &bound)? {
        Some(out) => {
            info!(
                proxy = %out.proxy,
                transport = out.protocol.via_name(),
                from = %out.local,
                "calls out (codes by voice) go through the trunk"
            );
            let snapshots = current.clone();
            let (core, media, hangup_all, metrics) = (
                core.clone(),
                media.clone(),
                hangup_all.clone(),
                metrics.clone(),
            );
            Some(crate::verify::voice::VoiceChannel::new(
                out,
                crate::verify::voice::ReadOutStyle {
                    key_first: cfg.outbound.key_first,
                    readings: cfg.outbound.readings,
                    max_repeats: cfg.outbound.max_repeats,
                    template: cfg.outbound.readout.clone(),
                },
                cfg.outbound.max_calls,
                calls.clone(),
                move || {
                    let snap = snapshots.read().expect("snapshot lock").clone();
                    CallContext {
                        core: core.clone(),
                        media: media.clone(),
                        prompts: snap.prompts.clone(),
                        settings: snap.settings.clone(),
                        hangup_all: hangup_all.clone(),
                        metrics: metrics.clone(),
                        status_id: None,
                    }
                },
            ))
        }
        None => None,
    };
    if let Some(channel) = &voice {
        // Every snapshot shares the slot: reloads keep the channel.
        let _ = current
            .read()
            .expect("snapshot lock")
            .services
            .voice
            .set(channel.clone());
    }
    let mut webhooks = None;
    if !cfg.api.listen.is_empty() {
        let snapshots = current.clone();
        let voice = voice.clone();
        let context: crate::api::ContextSource = Arc::new(move || {
            let snap = snapshots.read().expect("snapshot lock").clone();
            crate::api::service::ApiContext {
                shared: snap.services.clone(),
                cfg: snap.api.clone(),
                voice: voice.clone(),
            }
        });
        // Status callbacks go out from the outbox, to the URL the current config names.
        let snapshots = current.clone();
        webhooks = Some(tokio::spawn(crate::api::webhooks::run(
            store.clone(),
            move || {
                let snap = snapshots.read().expect("snapshot lock").clone();
                let api = &snap.api;
                (!api.webhook_url.is_empty()).then(|| crate::api::webhooks::Target {
                    url: api.webhook_url.clone(),
                    secret: api.webhook_secret.clone().unwrap_or_default(),
                })
            },
            // Stops when the node starts to stop, so its last try overlaps the drain and
            // its untried claims go to the other nodes at once (waited for below).
            shutdown.clone(),
        )));
        let api_tls = match cfg.tls.files().filter(|_| cfg.api.tls) {
            Some(files) => Some(crate::api::tls_config(files).context("[api] tls")?),
            None => None,
        };
        crate::api::serve(
            &cfg.api.listen,
            cfg.api.max_connections,
            api_tls,
            context,
            admin_shutdown.clone(),
        )
        .await
        .with_context(|| {
            format!(
                "binding the API listener [api] listen = {:?}",
                cfg.api.listen
            )
        })?;
    }
    info!(sip = %bound.iter().map(|(p, a)| format!("{}:{a}", p.via_name().to_lowercase())).collect::<Vec<_>>().join(","), "ivrd ready");
    // systemd: READY only now that every socket is bound and every file loaded; WATCHDOG only
    // while the accept loop, the SIP core and the RTP pacer are all turning (a stalled loop
    // must let the watchdog fire, so liveness is measured, not assumed).
    let notifier = Arc::new(crate::notify::Notifier::from_env());
    let hb = crate::notify::Heartbeats::new(&["accept", "sip-core", "rtp-pacer"]);
    let status = {
        let calls = calls.clone();
        move || format!("{} active calls", calls.len())
    };
    let _watchdog = crate::notify::spawn_watchdog(notifier.clone(), hb.clone(), status);
    notifier.ready("0 active calls");
    if let Some(ready) = ready {
        let _ = ready.send(Ready { sip: bound });
    }
    let mut beat = tokio::time::interval(Duration::from_millis(100));
    let (mut core_turns, mut pacer_ticks) = (0u64, 0u64);
    // Readiness for OPTIONS: the database answers (probed every 2 s off the runtime), and a
    // call would find an RTP port.
    let database_ok = spawn_store_probe(store.clone(), shutdown.clone());
    let rtp_slots = cfg.rtp_slots() as usize;

    loop {
        tokio::select! {
            _ = beat.tick() => {
                hb.beat(0);
                let turns = core.stats.loop_turns.load(std::sync::atomic::Ordering::Relaxed);
                if turns != core_turns {
                    core_turns = turns;
                    hb.beat(1);
                }
                let ticks = media.stats().ticks.load(std::sync::atomic::Ordering::Relaxed);
                if ticks != pacer_ticks {
                    pacer_ticks = ticks;
                    hb.beat(2);
                }
                let streams = media
                    .stats()
                    .active_streams
                    .load(std::sync::atomic::Ordering::Relaxed);
                core.stats.set_unready(if !database_ok.load(std::sync::atomic::Ordering::Relaxed) {
                    Some(core::Unready::Database)
                } else if streams >= rtp_slots {
                    Some(core::Unready::NoRtpPort)
                } else {
                    None
                });
            }
            Some(new) = calls_rx.recv() => {
                let snap = current.read().expect("snapshot lock").clone();
                let ctx = CallContext {
                    core: core.clone(),
                    media: media.clone(),
                    prompts: snap.prompts.clone(),
                    settings: snap.settings.clone(),
                    hangup_all: hangup_all.clone(),
                    metrics: metrics.clone(),
                    status_id: None,
                };
                let span = info_span!("call", call_id = %new.invite.call_id);
                calls.spawn(handle_call(new, ctx, snap, audit.clone(), live.clone()).instrument(span));
            }
            Some(()) = reload.recv() => {
                let record = apply_reload(&ReloadContext {
                    config_path: config_path.as_deref(),
                    transports: &core.transports,
                    running: &cfg,
                    store: &store,
                    metrics: &metrics,
                    current: &current,
                    plan_names: &plan_names,
                    plans: &loaded_plans,
                    notifier: &notifier,
                    active: calls.len(),
                }, &mut latest);
                *last_reload.write().expect("reload lock") = Some(record);
            }
            Some(request) = admin_reload.recv() => {
                let record = apply_reload(&ReloadContext {
                    config_path: config_path.as_deref(),
                    transports: &core.transports,
                    running: &cfg,
                    store: &store,
                    metrics: &metrics,
                    current: &current,
                    plan_names: &plan_names,
                    plans: &loaded_plans,
                    notifier: &notifier,
                    active: calls.len(),
                }, &mut latest);
                *last_reload.write().expect("reload lock") = Some(record.clone());
                let _ = request.reply.send(record);
            }
            _ = shutdown.cancelled() => break,
        }
    }

    notifier.stopping();
    metrics
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // Drain: refuse new calls, let running ones finish, then hang up what is left.
    let drain = Duration::from_secs(latest.shutdown.drain_secs);
    core.drain(latest.shutdown.drain_secs.clamp(1, u64::from(u32::MAX)) as u32);
    calls.close();
    info!(active = calls.len(), "shutting down; draining calls");
    if tokio::time::timeout(drain, calls.wait()).await.is_err() {
        warn!(
            active = calls.len(),
            "drain deadline passed; hanging up remaining calls"
        );
        hangup_all.cancel();
        // Calls send BYE and wait for its answer (at most Timer F), then write their audit row.
        let _ = tokio::time::timeout(t1 * 64 + Duration::from_secs(1), calls.wait()).await;
    }
    sip_shutdown.cancel();
    admin_shutdown.cancel();
    if let Some(task) = webhooks {
        // Stopped since the drain began: its try in flight (bounded by TRY_TIMEOUT, which
        // the drain usually outlasts) ended and its untried claims went back to the outbox.
        let bound = crate::api::webhooks::TRY_TIMEOUT + Duration::from_secs(1);
        let _ = tokio::time::timeout(bound, task).await;
    }
    info!("stopped");
    Ok(())
}

/// `[outbound]` as calls need it, with the addresses the listeners really got; `None` when
/// calls out are off.
pub fn outbound_settings(
    cfg: &Config,
    bound: &[(Protocol, SocketAddr)],
) -> anyhow::Result<Option<crate::call::outbound::OutboundSettings>> {
    let o = &cfg.outbound;
    let Some(proxy) = o.proxy_addr().filter(|_| o.enabled()) else {
        return Ok(None);
    };
    let protocol = o.protocol();
    let local = bound
        .iter()
        .find(|(p, a)| *p == protocol && a.is_ipv4() == proxy.is_ipv4())
        .or_else(|| bound.iter().find(|(p, _)| *p == protocol))
        .map(|(_, a)| *a)
        .with_context(|| {
            format!(
                "[outbound] transport = {:?}: no such [sip] listener",
                o.transport
            )
        })?;
    // A wildcard listener cannot be written in Via and Contact: the public host if it is an
    // address, else the address this host uses towards the trunk.
    let advertised_ip = if local.ip().is_unspecified() {
        match cfg
            .sip
            .public_host
            .as_deref()
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        {
            Some(ip) => ip,
            None => {
                let probe = std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0))
                    .and_then(|s| s.connect(proxy).map(|_| s))
                    .and_then(|s| s.local_addr())
                    .context("[outbound] proxy: no route to the trunk")?;
                probe.ip()
            }
        }
    } else {
        local.ip()
    };
    let advertised = SocketAddr::new(advertised_ip, local.port());
    let transport_param = match protocol {
        Protocol::Udp => "",
        Protocol::Tcp => ";transport=tcp",
        Protocol::Tls => ";transport=tls",
    };
    let host = crate::sip::dialog::fmt_host_port(proxy);
    Ok(Some(crate::call::outbound::OutboundSettings {
        proxy,
        protocol,
        local,
        advertised,
        request_uri: if o.request_uri.is_empty() {
            format!("sip:{{number}}@{host}{transport_param}")
        } else {
            o.request_uri.clone()
        },
        from: if o.from.is_empty() {
            format!("sip:ivrd@{}", crate::sip::dialog::fmt_host_port(advertised))
        } else {
            o.from.clone()
        },
        credentials: o
            .username
            .clone()
            .zip(o.password.clone())
            .map(|(username, password)| crate::call::Credentials { username, password }),
        ring_timeout: Duration::from_secs(o.ring_timeout_secs),
    }))
}

/// Asks the database every 2 s whether it answers (2 s at most per probe); the flag says
/// whether the last probe did. A failed or late probe is logged once per outage.
fn spawn_store_probe(
    store: Arc<Store>,
    stop: CancellationToken,
) -> Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ok = Arc::new(AtomicBool::new(true));
    let flag = ok.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.cancelled() => return,
            }
            let store = store.clone();
            let probe = tokio::task::spawn_blocking(move || store.ping());
            let answered = match tokio::time::timeout(Duration::from_secs(2), probe).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 2 s".to_string()),
            };
            let was = flag.swap(answered.is_ok(), Ordering::Relaxed);
            match (was, answered) {
                (true, Err(e)) => {
                    warn!(error = %e, "the database does not answer: OPTIONS say 503")
                }
                (false, Ok(())) => info!("the database answers again"),
                _ => {}
            }
        }
    });
    ok
}

/// How often the daemon's housekeeping runs after the run at start: audit rows then live at
/// most an hour past `[audit] keep_days`, and each run finds an hour's rows at most.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);

/// Runs `job` now and every [`HOUSEKEEPING_EVERY`] on a blocking thread until `stop` (a first
/// run over a deep table must not delay start-up); logs how many rows it removed.
fn spawn_hourly<F>(what: &'static str, stop: CancellationToken, job: F)
where
    F: Fn(&CancellationToken) -> Result<usize, crate::store::StoreError> + Send + Sync + 'static,
{
    let job = Arc::new(job);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HOUSEKEEPING_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let (job, token) = (job.clone(), stop.clone());
            match tokio::task::spawn_blocking(move || job(&token)).await {
                Ok(Ok(0)) => tracing::debug!("{what}: nothing to remove"),
                Ok(Ok(rows)) => info!(rows, "{what}: removed"),
                Ok(Err(e)) => warn!(error = %e, "{what} failed; trying again in an hour"),
                Err(e) => warn!(error = %e, "the {what} task failed"),
            }
        }
    });
}

/// `[audit] keep_days`: deletes the rows older than `keep`, in short batches
/// ([`Store::prune_audit_batches`]) that stop at shutdown.
fn spawn_audit_pruning(store: Arc<Store>, keep: Duration, stop: CancellationToken) {
    spawn_hourly("audit rows older than keep_days", stop, move |stop| {
        let cutoff = SystemTime::now()
            .checked_sub(keep)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        store.prune_audit_batches(cutoff, crate::store::AUDIT_PRUNE_BATCH, || {
            !stop.is_cancelled()
        })
    });
}

/// Wrong PINs, SMS sends and the guard's counts older than any limit looks back
/// ([`crate::verify::limits::purge_horizon`]): without this the tables only grow.
fn spawn_limits_purge(
    store: Arc<Store>,
    current: Arc<RwLock<Arc<Snapshot>>>,
    stop: CancellationToken,
) {
    spawn_hourly("limit counts older than every window", stop, move |_| {
        let verifier = current
            .read()
            .expect("snapshot lock")
            .services
            .verifier
            .clone();
        let horizon = crate::verify::limits::purge_horizon(verifier.limits(), verifier.guard());
        let cutoff = SystemTime::now()
            .checked_sub(horizon)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        store
            .purge(cutoff)
            .map(|r| r.failures + r.sms_sends + r.guard_rows)
    });
}

/// The TLS configurations `[tls]` names, when TLS listeners are configured.
pub fn tls_config(cfg: &Config) -> anyhow::Result<Option<crate::sip::tls::TlsConfigs>> {
    if cfg.sip.tls.is_empty() {
        return Ok(None);
    }
    let files = cfg
        .tls
        .files()
        .context("[sip] tls listens, but [tls] cert and key are not both set")?;
    Ok(Some(crate::sip::tls::configs(&files).context("[tls]")?))
}

/// The media addresses of `[media]`: `rtp_ip` and, for the other family, `rtp_ip6`.
fn media_addrs(m: &crate::config::MediaConfig) -> Vec<crate::call::MediaAddr> {
    let mut out = vec![crate::call::MediaAddr {
        bind: m.rtp_ip,
        announce: m.announce_ip.unwrap_or(m.rtp_ip),
    }];
    if let Some(ip6) = m.rtp_ip6 {
        out.push(crate::call::MediaAddr {
            bind: ip6,
            announce: m.announce_ip6.unwrap_or(ip6),
        });
    }
    out
}

/// Raises the soft descriptor limit to the hard one (the unit's `LimitNOFILE=`) and says so
/// when even that cannot hold what the config asks for: every call holds two descriptors
/// (its RTP socket and the receive task's copy), every TCP connection one. Running out turns
/// into failed accepts and calls refused with "cannot open an RTP socket", which is harder to
/// read than this line at start.
fn check_descriptors(cfg: &Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill and read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    let need = u64::from(cfg.rtp_slots()) * 2 + cfg.sip.tcp_max_connections as u64 + 256;
    if lim.rlim_cur < need {
        warn!(
            limit = lim.rlim_cur,
            need,
            "the descriptor limit is below 2 per RTP port + [sip] tcp_max_connections + 256: \
             raise LimitNOFILE= (or ulimit -n), or narrow the RTP port range"
        );
    }
}

/// What a reload needs from the running daemon.
struct ReloadContext<'a> {
    config_path: Option<&'a Path>,
    transports: &'a transport::Transports,
    /// The config the daemon started with: what the sockets, the core and the engine run on.
    running: &'a Config,
    store: &'a Arc<Store>,
    metrics: &'a Arc<Metrics>,
    current: &'a RwLock<Arc<Snapshot>>,
    plan_names: &'a RwLock<Vec<String>>,
    plans: &'a RwLock<Vec<Arc<Dialplan>>>,
    notifier: &'a crate::notify::Notifier,
    active: usize,
}

/// Re-reads the config (secrets included), prompts and dialplans, and swaps them in as a whole,
/// or keeps everything running as it is and says why. Settings that changed but need a restart
/// are named, in one warning, and only when they did change.
fn apply_reload(r: &ReloadContext, latest: &mut Config) -> ReloadRecord {
    let started = std::time::Instant::now();
    r.notifier.reloading();
    let loaded = match r.config_path {
        Some(p) => Config::load(p).map_err(anyhow::Error::from),
        // Without a file the daemon runs on the embedded default; reload that, not the bare
        // defaults (which would drop the demo's SMS file and seed).
        None => Ok(Config::embedded()),
    }
    .and_then(|cfg| {
        let previous = r.current.read().expect("snapshot lock").services.clone();
        let snap = build_snapshot(
            &cfg,
            r.store.clone(),
            None,
            r.metrics.clone(),
            Some(&previous),
        )?;
        // A renewed certificate takes effect here; a bad one fails the reload as a whole.
        let tls = if r.running.sip.tls.is_empty() {
            None
        } else {
            tls_config(&cfg)?
        };
        Ok((cfg, snap, tls))
    });
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let record = match loaded {
        Ok((cfg, snap, tls)) => {
            if tls.is_some() {
                r.transports.set_tls(tls);
            }
            for warning in &cfg.warnings {
                warn!("{warning}");
            }
            let restart = restart_only_changes(r.running, &cfg);
            if !restart.is_empty() {
                warn!(
                    settings = %restart.join(", "),
                    "reloaded, but these changed settings take effect only on restart"
                );
            }
            let names: Vec<String> = snap.plans.iter().map(|p| p.name.clone()).collect();
            *r.plans.write().expect("plans lock") = snap.plans.clone();
            // Calls in progress keep the snapshot (settings included) they started with.
            *r.current.write().expect("snapshot lock") = Arc::new(snap);
            *r.plan_names.write().expect("dialplans lock") = names.clone();
            *latest = cfg;
            r.metrics.reload(true);
            info!(dialplans = %names.join(","), ms = started.elapsed().as_millis() as u64, "reloaded");
            let mut message = "reloaded".to_string();
            if !restart.is_empty() {
                message.push_str(&format!(
                    "; these changed settings take effect only on restart: {}",
                    restart.join(", ")
                ));
            }
            ReloadRecord {
                at,
                ok: true,
                message,
            }
        }
        Err(e) => {
            r.metrics.reload(false);
            let why = format!("{e:#}");
            error!(error = %why, "reload failed; keeping the running configuration");
            ReloadRecord {
                at,
                ok: false,
                message: format!("reload failed, the running configuration stays: {why}"),
            }
        }
    };
    r.notifier.reloaded(&format!("{} active calls", r.active));
    record
}

/// One call: pick its dialplan, run it, write its audit row.
async fn handle_call(
    new: NewCall,
    mut ctx: CallContext,
    snap: Arc<Snapshot>,
    audit: AuditWriter,
    live: Arc<crate::live::Live>,
) {
    let dialed = new
        .invite
        .request_uri()
        .and_then(uri_user)
        .unwrap_or_default()
        .to_string();
    let metrics = ctx.metrics.clone();
    let caller =
        crate::call::CallFacts::from_invite(&new.invite, new.flow.remote, new.trust).caller;
    let plan_name = match &snap.demo {
        Some(_) => "demo".to_string(),
        None => snap
            .plan_for(&dialed)
            .map(|p| p.name.clone())
            .unwrap_or_default(),
    };
    let transport = new.flow.protocol.via_name();
    let active = metrics.call_started(&new.invite.call_id, &caller, &dialed, &plan_name, transport);
    ctx.status_id = Some(active.id());
    let summary: CallSummary<Option<FlowResult>> = if let Some(demo) = snap.demo.clone() {
        call::run(new, ctx, move |mut c| async move {
            let r = crate::demo::run(&mut c, &demo).await;
            (c, r, None)
        })
        .await
    } else {
        let Some(plan) = snap.plan_for(&dialed) else {
            // Nobody answers this number: say so instead of letting it ring.
            info!(%dialed, "no dialplan for the dialed number");
            let resp = ResponseBuilder::new(&new.invite, 404, "Not Found")
                .received_from(new.flow.remote)
                .to_tag(&new.local_tag)
                .build();
            ctx.core.respond(new.tx, 404, resp);
            return;
        };
        let services = CallServices {
            shared: snap.services.clone(),
        };
        // The live page's observer: the step the call is in, the transitions it takes.
        let mut observer = live.call(active.id(), &plan.name);
        call::run(new, ctx, move |mut c| async move {
            let r = dialplan::run_observed(&plan, &mut c, &services, &mut observer).await;
            if r.transferred_to.is_some()
                && let Some(last) = r.trail.last()
            {
                observer.transferred(&last.step);
            }
            info!(outcome = r.outcome.as_str(), plan = %plan.name, "flow finished");
            let result = r.call_result();
            (c, result, Some(r))
        })
        .await
    };
    let row = audit_row(&summary, &dialed, transport);
    metrics.call_ended(&row.outcome);
    live.call_ended(&plan_name, &row.outcome);
    if let Err(e) = audit.write(row).await {
        error!(error = %e, "audit row not written");
    }
}

/// The audit outcome: the flow's verification outcome when it ran, else how the call ended.
fn audit_row(s: &CallSummary<Option<FlowResult>>, dialed: &str, transport: &str) -> AuditRow {
    let flow = s.flow.as_ref().and_then(|f| f.as_ref());
    let outcome = match (flow, &s.end) {
        (Some(f), _) => f.outcome.as_str().to_string(),
        (None, CallEnd::Cancelled | CallEnd::CallerHangup) => "caller-hangup".into(),
        (None, end) => end.as_str().to_string(),
    };
    AuditRow {
        call_id: s.facts.call_id.clone(),
        caller: s.facts.caller.clone(),
        dialed: dialed.to_string(),
        customer_id: flow.and_then(|f| f.customer_id.clone()),
        outcome,
        started_at: s.facts.started,
        ended_at: s.ended,
        dtmf_methods: s
            .dtmf_methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
        detail: Some(format!("end={}", s.end.as_str())),
        transfer: s.transfer.as_ref().map(|t| crate::store::AuditTransfer {
            target: t.target.clone(),
            status: t.status,
            ms: t.ms,
        }),
        transport: Some(transport.to_string()),
        srtp: s.srtp.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[audit] keep_days`: the prune at start removes what is older than the setting, keeps
    /// the rest, and the task ends with the daemon.
    #[tokio::test]
    async fn audit_pruning_runs_at_start_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("ivrd.db")).unwrap());
        let now = SystemTime::now();
        let row = |id: &str, days_ago: u64| AuditRow {
            call_id: id.into(),
            caller: "+491709999999".into(),
            dialed: "100".into(),
            customer_id: None,
            outcome: "verified".into(),
            started_at: now - Duration::from_secs(days_ago * 86_400),
            ended_at: now - Duration::from_secs(days_ago * 86_400 - 60),
            dtmf_methods: String::new(),
            detail: None,
            transfer: None,
            transport: None,
            srtp: None,
        };
        store
            .write_audit_batch(&[row("old", 91), row("older", 400), row("recent", 89)])
            .unwrap();
        let stop = CancellationToken::new();
        let keep = crate::config::AuditConfig {
            keep_days: 90,
            ..Default::default()
        }
        .keep()
        .unwrap();
        spawn_audit_pruning(store.clone(), keep, stop.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = store.recent_audit(10).unwrap();
            if left.len() == 1 {
                assert_eq!(left[0].call_id, "recent");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not pruned: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }
}
