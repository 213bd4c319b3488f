//! relayd: the relay daemon. Loads the configuration, starts the data plane
//! (XDP plus userspace forwarder, or the forwarder alone), serves the control
//! socket, logs latch events, and on SIGTERM/SIGINT detaches cleanly.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result};
use clap::Parser;
use relay_common::LatchEvent;
use relay_user::{
    config::{Config, DataplaneMode},
    control,
    dataplane::{Dataplane, LatchNotice},
    metrics,
    ng::NgServer,
    relay::Relay,
    sip,
};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::mpsc};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(version, about = "relay daemon: XDP-accelerated SIP/RTP media relay")]
struct Args {
    /// Configuration file (TOML).
    #[arg(short, long, default_value = "/etc/relay/relay.toml")]
    config: PathBuf,
    /// Override the configured data-plane mode.
    #[arg(long, value_enum)]
    dataplane: Option<DataplaneMode>,
    /// Override the configured control socket path.
    #[arg(long)]
    control_socket: Option<PathBuf>,
}

/// Call setup allocates and frees many small objects (SDP, bencode, rule
/// views); glibc's malloc fragmented and spent a large share of the CPU on
/// consolidating free lists under load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration the daemon cannot use.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let (mut config, interfaces) = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relayd: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(mode) = args.dataplane {
        config.dataplane.mode = mode;
    }
    if let Some(path) = args.control_socket {
        config.control.socket = path;
    }
    // One thread: the relay's userspace work stays on one core, where an
    // operator can pin it; the fast path is in the kernel anyway.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relayd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, interfaces)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("relayd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, interfaces: Vec<relay_user::config::Interface>) -> Result<()> {
    let started = Instant::now();
    raise_fd_limit(&interfaces);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut dp = Dataplane::start(&config, interfaces, events_tx.clone())?;
    info!(
        mode = ?dp.mode(),
        interfaces = ?dp.interfaces().iter().map(|i| (&i.name, &i.device, i.address)).collect::<Vec<_>>(),
        rules = dp.rules().count(),
        "data plane up"
    );
    if let Some(ring) = dp.take_kernel_events() {
        // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd,
        // so the fd stays open exactly as long as it is registered.
        let fd = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("watching the latch event ring buffer: {e}"))?;
        tokio::spawn(kernel_events(fd, events_tx));
    }
    let relay = Arc::new(Mutex::new(Relay::new(dp, config.media.clone())?));
    let latches = relay.clone();
    tokio::spawn(async move {
        while let Some(n) = events_rx.recv().await {
            info!(rule = n.rule_id, local = %n.local, source = %n.source, ssrc = format!("{:#010x}", n.ssrc), path = n.path, "source latched");
            // SRTP legs latch in userspace after authentication; the kernel
            // learns the source from here.
            if n.path == "userspace" {
                latches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .dp
                    .latched_in_userspace(&n);
            }
        }
    });
    let dp = relay.clone();
    // Media timeouts: silent calls are ended; the SIP side sends BYE.
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let expiry = relay.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let ended = {
                let mut relay = expiry.lock().unwrap_or_else(|p| p.into_inner());
                relay.sample_quality();
                relay.expire()
            };
            for id in ended {
                let _ = ended_tx.send(id);
            }
        }
    });
    // The SIP B2BUA, when it listens anywhere.
    let sip = if config.sip.listens() {
        let handle = sip::server::start(config.clone(), relay.clone(), ended_rx)
            .await
            .context("starting SIP")?;
        Some(handle)
    } else {
        None
    };
    let listener = control::bind(&config.control.socket)?;
    info!(socket = %config.control.socket.display(), "control socket ready");
    let server = tokio::spawn(control::serve(listener, dp.clone(), started));
    // The NG server (Kamailio/OpenSIPS rtpengine modules), when configured.
    let ng = if config.ng.listen.is_empty() {
        None
    } else {
        Some(NgServer::start(&config.ng.listen, relay.clone())?)
    };
    // The Prometheus endpoint, when configured.
    let metrics = match config.metrics.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            info!(listen = %addr, "metrics endpoint ready (GET /metrics)");
            Some(tokio::spawn(metrics::serve(
                listener,
                metrics::Sources {
                    relay: relay.clone(),
                    ng: ng.as_ref().map(NgServer::ng),
                    started,
                },
            )))
        }
        None => None,
    };

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    server.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(sip) = sip {
        sip.abort();
    }
    if let Some(ng) = ng {
        ng.stop();
    }
    let _ = std::fs::remove_file(&config.control.socket);
    let _ = server.await;
    dp.lock().unwrap_or_else(|p| p.into_inner()).dp.shutdown();
    Ok(())
}

/// The forwarder keeps a socket per relay endpoint it has used (up to one per
/// port of every interface's range), beside SIP, NG and control connections:
/// the default soft limit of 1,024 descriptors is far too low for that. As
/// root the hard limit may be raised too; if it cannot, the forwarder keeps
/// fewer idle sockets.
fn raise_fd_limit(interfaces: &[relay_user::config::Interface]) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let ports: u64 = interfaces
        .iter()
        .map(|i| u64::from(i.port_max - i.port_min) + 1)
        .sum();
    let wanted = ports + relay_user::dataplane::forwarder::FD_RESERVE;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < wanted => {
            if setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted)).is_ok() {
                return;
            }
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => warn!(
                    limit = hard,
                    wanted,
                    "open-file limit is below one socket per media port: idle relay sockets will be closed as their rules go"
                ),
                Err(e) => warn!(error = %e, soft, "cannot raise the open-file limit"),
            }
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open-file limit"),
    }
}

async fn kernel_events(
    mut fd: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    tx: mpsc::UnboundedSender<LatchNotice>,
) {
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "latch event ring buffer");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<LatchEvent>() {
                // SAFETY: the kernel wrote a whole LatchEvent (size checked);
                // read_unaligned makes no alignment assumption.
                let event: LatchEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<LatchEvent>()) };
                let _ = tx.send(LatchNotice::from_kernel(&event));
            }
        }
        guard.clear_ready();
    }
}
