//! The NG server: UDP sockets feeding [`Ng`], and a one-second tick for
//! postponed deletions and housekeeping.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{net::UdpSocket, task::JoinHandle};
use tracing::{debug, info, warn};

use super::Ng;
use crate::relay::Relay;

/// The running server; [`NgServer::stop`] ends its tasks.
pub struct NgServer {
    tasks: Vec<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
    ng: Arc<Mutex<Ng>>,
}

impl NgServer {
    /// Binds every address (failing on the first that cannot be bound) and
    /// starts serving. Must run inside a tokio runtime.
    pub fn start(listen: &[SocketAddr], relay: Arc<Mutex<Relay>>) -> Result<Self> {
        let ng = Arc::new(Mutex::new(Ng::new(Instant::now())));
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        for addr in listen {
            let std_socket = std::net::UdpSocket::bind(addr)
                .with_context(|| format!("binding the NG socket {addr}"))?;
            std_socket.set_nonblocking(true)?;
            let socket = UdpSocket::from_std(std_socket)?;
            let local = socket.local_addr()?;
            info!(socket = %local, "NG control protocol ready");
            addrs.push(local);
            tasks.push(tokio::spawn(serve(socket, ng.clone(), relay.clone())));
        }
        let tick = {
            let (ng, relay) = (ng.clone(), relay.clone());
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(1));
                loop {
                    interval.tick().await;
                    ng.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .tick(&relay, Instant::now());
                }
            })
        };
        tasks.push(tick);
        Ok(Self { tasks, addrs, ng })
    }

    /// The protocol state, for its request counters (metrics). Never lock
    /// it while holding the relay: a request holds this, then the relay.
    pub fn ng(&self) -> Arc<Mutex<Ng>> {
        self.ng.clone()
    }

    /// The bound addresses (with the port the kernel chose for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve(socket: UdpSocket, ng: Arc<Mutex<Ng>>, relay: Arc<Mutex<Relay>>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier replies surface here; keep serving.
                debug!(error = %e, "NG recv");
                continue;
            }
        };
        let reply = ng.lock().unwrap_or_else(|p| p.into_inner()).datagram(
            &relay,
            from,
            &buf[..len],
            Instant::now(),
        );
        if let Some(reply) = reply
            && let Err(e) = socket.send_to(&reply, from).await
        {
            warn!(%from, error = %e, "NG reply not sent");
        }
    }
}
