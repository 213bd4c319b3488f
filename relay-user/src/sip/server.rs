//! The SIP server: transports in, the B2BUA's sends out, timers in between.
//! All SIP state lives in [`B2bua`]; this loop only does the I/O.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    b2bua::{B2bua, B2buaConfig, Send, SipStats},
    message::TxKey,
    tls::TlsSetup,
    transaction::{self, TransactionLayer, TransportKind},
    transport::Transports,
};
use crate::{config::Config, relay::Relay};

/// What relayd shows of the SIP side (control socket, metrics).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SipStatus {
    pub calls: usize,
    pub trunks: Vec<TrunkStatus>,
    pub stats: SipStats,
    /// Transport counters (TLS handshake failures, refused sources, ...).
    #[serde(default)]
    pub transport: super::transport::TransportStats,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TrunkStatus {
    pub name: String,
    /// False once OPTIONS went unanswered (new calls get 503); a trunk that
    /// is not pinged stays up.
    pub up: bool,
    pub calls: u32,
    /// OPTIONS keep-alive interval; absent when the trunk is not pinged.
    #[serde(default)]
    pub options_interval_s: Option<u64>,
}

/// Starts the SIP side: trunks, TLS and listeners are set up before this
/// returns (so a bad certificate or a busy port stops relayd with a clear
/// error), then the loop runs in the returned task until it is aborted.
/// `ended` carries media-core call ids ended by a media timeout (both legs
/// get BYE).
pub async fn start(
    config: Config,
    relay: Arc<Mutex<Relay>>,
    ended: mpsc::UnboundedReceiver<String>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut trunks = config.trunks().context("SIP trunks")?;
    for (name, e) in trunks.resolve().await {
        warn!(trunk = %name, error = %e, "cannot resolve the trunk's host name");
    }
    let tls = TlsSetup::load(&config.sip, &trunks).context("SIP TLS")?;
    let (transports, inbound) = Transports::start(&config.sip, tls).await?;
    let transports = Arc::new(transports);
    let sources: Vec<ipnet::IpNet> = trunks.iter().flat_map(|t| t.effective_sources()).collect();
    transports.set_source_filter(Some(Arc::new(move |ip| {
        sources.iter().any(|n| n.contains(&ip))
    })));
    info!(listening = ?transports.local_addrs(), trunks = trunks.len(), "SIP up");
    let b2bua = B2bua::new(
        TransactionLayer::new(transaction::Config::default()),
        trunks,
        transports.local_addrs(),
        B2buaConfig {
            ring_timeout: Duration::from_secs(config.sip.ring_timeout_s),
            invite_rate: config.sip.invite_rate_per_source,
            max_message_size: config.sip.max_message_size,
        },
        Instant::now(),
    );
    Ok(tokio::spawn(serve(
        b2bua, transports, inbound, relay, ended,
    )))
}

async fn serve(
    mut b2bua: B2bua,
    transports: Arc<Transports>,
    mut inbound: mpsc::Receiver<super::transport::Inbound>,
    relay: Arc<Mutex<Relay>>,
    mut ended: mpsc::UnboundedReceiver<String>,
) {
    // Failed sends come back here so their transactions learn of it.
    let (failed_tx, mut failed) = mpsc::unbounded_channel::<TxKey>();
    // Trunks do not change after start: one shared copy for every send batch.
    let trunks = Arc::new(b2bua.trunks.clone());
    loop {
        let deadline = b2bua
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let wake = tokio::select! {
            msg = inbound.recv() => match msg {
                Some(msg) => Wake::Message(msg),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
            Some(media_id) = ended.recv() => Wake::MediaEnded(media_id),
            Some(key) = failed.recv() => Wake::SendFailed(key),
        };
        let sends = {
            let mut relay = relay.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let sends = match wake {
                Wake::Message(msg) => b2bua.receive(&msg.bytes, msg.from, &mut relay, now),
                Wake::Timer => b2bua.poll(&mut relay, now),
                Wake::MediaEnded(id) => b2bua.media_ended(&id, &mut relay, now),
                Wake::SendFailed(key) => b2bua.transport_error(&key, &mut relay, now),
            };
            // What the control socket shows (`relayctl trunks`).
            relay.sip = Some(SipStatus {
                calls: b2bua.calls(),
                // trunk_status() lists the trunks in the order of `trunks`.
                trunks: b2bua
                    .trunk_status()
                    .into_iter()
                    .zip(trunks.iter())
                    .map(|((name, up, calls), t)| TrunkStatus {
                        name,
                        up,
                        calls,
                        options_interval_s: t.options_interval.map(|d| d.as_secs()),
                    })
                    .collect(),
                stats: b2bua.stats.clone(),
                transport: transports.stats(),
            });
            sends
        };
        if !sends.is_empty() {
            // One task per batch keeps a batch in order without letting a slow
            // TLS connect hold up everything else.
            tokio::spawn(deliver(
                transports.clone(),
                trunks.clone(),
                sends,
                failed_tx.clone(),
            ));
        }
    }
}

/// What woke the SIP loop.
enum Wake {
    Message(super::transport::Inbound),
    Timer,
    MediaEnded(String),
    SendFailed(TxKey),
}

async fn deliver(
    transports: Arc<Transports>,
    trunks: Arc<super::trunk::Trunks>,
    sends: Vec<Send>,
    failed: mpsc::UnboundedSender<TxKey>,
) {
    for s in sends {
        let target = (s.dest.transport == TransportKind::Tls)
            .then(|| trunks.trunk_for(s.dest.addr.ip(), TransportKind::Tls))
            .flatten()
            .and_then(|t| transports.tls().and_then(|tls| tls.target(&t.name)));
        if let Err(e) = transports.send(&s.dest, &s.bytes, target).await {
            warn!(to = %s.dest.addr, transport = ?s.dest.transport, error = %e, "SIP send failed");
            if let Some(key) = s.key {
                let _ = failed.send(key);
            }
        }
    }
}
