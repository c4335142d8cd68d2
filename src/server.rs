//! The daemon: loads everything, binds every socket, accepts calls and shuts down cleanly.
//!
//! Start-up order matters to operators: prompts and config are loaded and checked first (a bad
//! file is named before any socket is bound), then the media engine and SIP listeners start,
//! and only then is the daemon "ready". Shutdown takes the token from the caller (the binary
//! wires it to SIGTERM/SIGINT; tests cancel it directly): new INVITEs get 503, calls in progress
//! may run until the drain deadline, then get BYE.

use crate::call::{self, CallContext, CallSettings};
use crate::config::Config;
use crate::media::engine::{MediaEngine, MediaSettings};
use crate::media::prompt::PromptLibrary;
use crate::sip::core::{self, CoreConfig};
use crate::sip::sdp::Codec;
use crate::sip::transaction::Timers;
use crate::sip::transport::{self, Protocol};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

/// How long calls in progress may go on after shutdown starts, before they get BYE.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// What a running daemon tells whoever started it.
#[derive(Debug, Clone)]
pub struct Ready {
    pub sip: Vec<(Protocol, SocketAddr)>,
}

/// Runs the daemon until `shutdown` is cancelled. `ready` is told once every socket is bound.
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> anyhow::Result<()> {
    let prompts = PromptLibrary::load(&cfg.media.prompts_dir)
        .with_context(|| format!("loading prompts from {}", cfg.media.prompts_dir.display()))?;
    let lang = &cfg.media.default_language;
    let missing: Vec<&str> = crate::demo::PROMPTS
        .iter()
        .copied()
        .filter(|p| !prompts.contains(lang, p))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: language {lang:?} lacks the prompts {} (add {}/<name>.wav files)",
            cfg.media.prompts_dir.display(),
            missing.join(", "),
            cfg.media.prompts_dir.join(lang).display()
        );
    }
    info!(prompts = prompts.len(), languages = %prompts.languages().collect::<Vec<_>>().join(","), "prompts loaded");
    let prompts = Arc::new(prompts);

    let (t1, t2, t4) = cfg.timers();
    let media = MediaEngine::start(MediaSettings {
        rtp_ip: cfg.media.rtp_ip,
        port_min: cfg.media.rtp_port_min,
        port_max: cfg.media.rtp_port_max,
        symmetric_rtp: cfg.media.symmetric_rtp,
        rtp_timeout: (cfg.media.rtp_timeout_secs > 0)
            .then(|| Duration::from_secs(cfg.media.rtp_timeout_secs)),
        inband_dtmf: cfg.media.inband_dtmf,
        pacing_threads: cfg.media.pacing_threads,
    })
    .context("starting the media engine")?;

    let (incoming_tx, incoming_rx) = mpsc::channel(4096);
    let sip_shutdown = CancellationToken::new();
    let (transports, bound) = transport::bind(
        &cfg.sip.udp,
        &cfg.sip.tcp,
        incoming_tx,
        sip_shutdown.clone(),
    )
    .await
    .context("binding SIP listeners")?;
    let (calls_tx, mut calls_rx) = mpsc::channel(1024);
    let core = core::spawn(
        CoreConfig {
            timers: Timers { t1, t2, t4 },
            user_agent: cfg.sip.user_agent.clone(),
        },
        transports,
        incoming_rx,
        calls_tx,
        sip_shutdown.clone(),
    );

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
    let hangup_all = CancellationToken::new();
    let ctx = CallContext {
        core: core.clone(),
        media,
        prompts,
        settings: Arc::new(CallSettings {
            user_agent: cfg.sip.user_agent.clone(),
            ring: Duration::from_millis(cfg.sip.ring_ms),
            max_call: (cfg.media.max_call_secs > 0)
                .then(|| Duration::from_secs(cfg.media.max_call_secs)),
            codecs,
            announce_ip: cfg.media.announce_ip,
            public_host: cfg.sip.public_host.clone(),
            default_language: cfg.media.default_language.clone(),
            dtmf_dedup_window: crate::media::dtmf::DigitDedup::DEFAULT_WINDOW,
            transfer_timeout: Duration::from_secs(cfg.transfer.timeout_secs),
            auth: cfg
                .transfer
                .username
                .clone()
                .zip(cfg.transfer.password.clone()),
        }),
        hangup_all: hangup_all.clone(),
    };
    let demo = Arc::new(cfg.demo.clone());
    let calls = TaskTracker::new();
    info!(sip = %bound.iter().map(|(p, a)| format!("{}:{a}", p.via_name().to_lowercase())).collect::<Vec<_>>().join(","), "ivrd ready");
    if let Some(ready) = ready {
        let _ = ready.send(Ready { sip: bound });
    }

    loop {
        tokio::select! {
            Some(new) = calls_rx.recv() => {
                let span = info_span!("call", call_id = %new.invite.call_id);
                let ctx = ctx.clone();
                let demo = demo.clone();
                calls.spawn(
                    call::run(new, ctx, move |mut c| async move {
                        let r = crate::demo::run(&mut c, &demo).await;
                        (c, r)
                    })
                    .instrument(span),
                );
            }
            _ = shutdown.cancelled() => break,
        }
    }

    // Drain: refuse new calls, let running ones finish, then hang up what is left.
    core.drain(DRAIN_DEADLINE.as_secs() as u32);
    calls.close();
    info!(active = calls.len(), "shutting down; draining calls");
    if tokio::time::timeout(DRAIN_DEADLINE, calls.wait())
        .await
        .is_err()
    {
        warn!(
            active = calls.len(),
            "drain deadline passed; hanging up remaining calls"
        );
        hangup_all.cancel();
        // Calls send BYE and wait for its answer (at most Timer F); give them that long.
        let _ = tokio::time::timeout(t1 * 64 + Duration::from_secs(1), calls.wait()).await;
    }
    sip_shutdown.cancel();
    info!("stopped");
    Ok(())
}
