//! The userspace forwarder: the same rules, ingress device binding, source
//! policies, sanity checks, rate limits and counters as the XDP program, on
//! ordinary UDP sockets (`IP_PKTINFO` tells each datagram's device).
//!
//! It holds a socket on every relay endpoint a rule uses. With XDP attached it
//! sees only what the program passes up (neighbour unresolved, VLAN, address
//! family change, `userspace` rules); with `--dataplane userspace` it is the
//! whole data plane.
//!
//! A socket stays bound when its last rule goes: binding, registering and
//! closing one per endpoint per call was most of the cost of setting a call
//! up (see docs/bench/ng.md). Endpoints only ever lie inside the configured
//! port ranges, so the pool is bounded by them, and an idle socket costs a
//! few hundred bytes (receive buffers are per worker thread, not per socket).
//! A packet to an idle socket finds no rule and is counted as `no_flow`,
//! which also keeps the kernel from answering it with ICMP.

use std::{
    cell::RefCell,
    collections::HashMap,
    io::ErrorKind,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use nix::sys::socket::{setsockopt, sockopt};
use relay_common::{
    DROP_REASONS, DropReason, FlowRule, FlowState, FlowStats,
    policy::{self, SourceCheck},
    quality,
};
use tokio::{io::Interest, net::UdpSocket, sync::mpsc, task::JoinHandle};
use tracing::debug;

use super::{
    LatchNotice,
    crypto::{self, FlowCrypto},
    mmsg::{self, Batch},
    monotonic_ns,
};
use crate::rule::{self, Path, Rule};

/// One rule as the forwarder keeps it.
struct Entry {
    rule: Rule,
    kernel: FlowRule,
    state: FlowState,
    stats: FlowStats,
    out: Arc<UdpSocket>,
    /// SRTP contexts of SRTP flows. Kept in the entry, under the entries
    /// lock the packet path already holds, so no second lock per packet;
    /// boxed because the crypto library's key schedules make it kilobytes,
    /// which every insert and removal of an entry would copy.
    crypto: Option<Box<FlowCrypto>>,
}

/// A bound relay endpoint and how many rules use it (0: idle in the pool).
struct Endpoint {
    socket: Arc<UdpSocket>,
    users: usize,
    task: JoinHandle<()>,
}

struct Shared {
    entries: Mutex<HashMap<SocketAddr, Entry>>,
    drops: [AtomicU64; DROP_REASONS],
    forwarded: AtomicU64,
    events: mpsc::UnboundedSender<LatchNotice>,
}

pub struct Forwarder {
    shared: Arc<Shared>,
    endpoints: HashMap<SocketAddr, Endpoint>,
    /// Sockets kept bound at most (in use or idle), below the open-file limit.
    max_sockets: usize,
}

impl Forwarder {
    pub fn new(events: mpsc::UnboundedSender<LatchNotice>) -> Self {
        // Leave room under the open-file limit for SIP, NG and control
        // connections; past this, idle sockets are closed as their rules go.
        let max_sockets = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1_024, |(soft, _)| soft)
            .saturating_sub(FD_RESERVE)
            .max(64) as usize;
        Self {
            shared: Arc::new(Shared {
                entries: Mutex::new(HashMap::new()),
                drops: Default::default(),
                forwarded: AtomicU64::new(0),
                events,
            }),
            endpoints: HashMap::new(),
            max_sockets,
        }
    }

    /// Installs or replaces a rule, binding its endpoints. A replaced rule
    /// keeps its learned source unless `reset_state`.
    pub fn install(&mut self, rule: &Rule, kernel: FlowRule, reset_state: bool) -> Result<()> {
        let old = self.lock().get(&rule.local).map(|e| e.rule.clone());
        // Bind the new endpoints before letting go of the old ones, so a
        // failure leaves the previous rule working.
        self.acquire(rule.local)?;
        if let Err(e) = self.acquire(rule.out_src) {
            self.release(rule.local);
            return Err(e);
        }
        if let Some(old) = &old {
            self.release(old.local);
            self.release(old.out_src);
        }
        let out = self.endpoints[&rule.out_src].socket.clone();
        let mut entries = self.lock();
        let old = entries.remove(&rule.local);
        // Unchanged keys keep their contexts (rollover counters and replay
        // windows); new keys start new ones.
        let crypto = match old {
            Some(ref e) if e.rule.srtp == rule.srtp && !reset_state => None,
            _ => Some(match &rule.srtp {
                Some(keys) => FlowCrypto::new(keys)
                    .context("SRTP keys of the rule")?
                    .map(Box::new),
                None => None,
            }),
        };
        let (state, stats, crypto) = match old {
            Some(e) if !reset_state => (e.state, e.stats, crypto.unwrap_or(e.crypto)),
            Some(e) => (FlowState::default(), e.stats, crypto.flatten()),
            None => (FlowState::default(), FlowStats::default(), crypto.flatten()),
        };
        entries.insert(
            rule.local,
            Entry {
                rule: rule.clone(),
                kernel,
                state,
                stats,
                out,
                crypto,
            },
        );
        Ok(())
    }

    pub fn remove(&mut self, local: SocketAddr) -> Option<Rule> {
        let entry = self.lock().remove(&local)?;
        self.release(entry.rule.local);
        self.release(entry.rule.out_src);
        Some(entry.rule)
    }

    pub fn stats(&self, local: SocketAddr) -> FlowStats {
        self.lock().get(&local).map(|e| e.stats).unwrap_or_default()
    }

    pub fn state(&self, local: SocketAddr) -> Option<FlowState> {
        self.lock().get(&local).map(|e| e.state)
    }

    /// Global drops by [`DropReason`] and the number of packets forwarded.
    pub fn counters(&self) -> ([u64; DROP_REASONS], u64) {
        let mut drops = [0; DROP_REASONS];
        for (o, c) in drops.iter_mut().zip(&self.shared.drops) {
            *o = c.load(Ordering::Relaxed);
        }
        (drops, self.shared.forwarded.load(Ordering::Relaxed))
    }

    /// How many endpoints rules use (for leak checks).
    pub fn bound_endpoints(&self) -> usize {
        self.endpoints.values().filter(|e| e.users > 0).count()
    }

    /// How many bound sockets wait in the pool for their next rule.
    pub fn idle_sockets(&self) -> usize {
        self.endpoints.len() - self.bound_endpoints()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written
        // (entries are replaced whole), so a poisoned lock is still usable.
        self.shared
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn acquire(&mut self, addr: SocketAddr) -> Result<()> {
        if let Some(ep) = self.endpoints.get_mut(&addr) {
            ep.users += 1;
            return Ok(());
        }
        let std_socket = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("binding relay endpoint {addr}"))?;
        std_socket.set_nonblocking(true)?;
        // Each datagram says which device it came in on: a rule takes
        // packets only from its interface's device, as in XDP.
        match addr {
            SocketAddr::V4(_) => setsockopt(&std_socket, sockopt::Ipv4PacketInfo, &true),
            SocketAddr::V6(_) => setsockopt(&std_socket, sockopt::Ipv6RecvPacketInfo, &true),
        }
        .with_context(|| format!("asking for the arrival device on {addr}"))?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let task = tokio::spawn(serve(socket.clone(), addr, self.shared.clone()));
        self.endpoints.insert(
            addr,
            Endpoint {
                socket,
                users: 1,
                task,
            },
        );
        Ok(())
    }

    /// The socket stays bound for the next rule on this endpoint, unless the
    /// pool is at its limit.
    fn release(&mut self, addr: SocketAddr) {
        let Some(ep) = self.endpoints.get_mut(&addr) else {
            return;
        };
        ep.users = ep.users.saturating_sub(1);
        if ep.users == 0 && self.endpoints.len() > self.max_sockets {
            if let Some(ep) = self.endpoints.remove(&addr) {
                ep.task.abort();
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for ep in self.endpoints.values() {
            ep.task.abort();
        }
    }
}

/// Descriptors left for everything but relay sockets.
pub const FD_RESERVE: u64 = 4_096;

/// Batches (of up to `mmsg::BATCH` datagrams) handled per wake-up before
/// the task yields to the others.
const ROUNDS: usize = 4;

thread_local! {
    /// One batch of receive buffers per worker thread: idle endpoints hold
    /// none.
    static BATCH_BUF: RefCell<Batch> = RefCell::new(Batch::new());
}

/// Receives on one relay endpoint and forwards what the rules allow.
async fn serve(socket: Arc<UdpSocket>, local: SocketAddr, shared: Arc<Shared>) {
    loop {
        if let Err(e) = socket.readable().await {
            debug!(%local, error = %e, "readable");
            tokio::task::yield_now().await;
            continue;
        }
        for _ in 0..ROUNDS {
            match BATCH_BUF.with_borrow_mut(|b| receive(&socket, local, &shared, b)) {
                Received::Done => {}
                Received::Empty => break,
                // The send buffer is full: wait for room rather than lose them.
                Received::Blocked(packets, out, dst) => {
                    for packet in packets {
                        if let Err(e) = out.send_to(&packet, dst).await {
                            debug!(%local, %dst, error = %e, "send");
                        }
                    }
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

enum Received {
    /// A batch was forwarded or dropped.
    Done,
    /// Nothing (more) to read.
    Empty,
    /// Allowed, but the outgoing socket's buffer is full: these are left.
    Blocked(Vec<Vec<u8>>, Arc<UdpSocket>, SocketAddr),
}

/// One `recvmmsg`, the decisions under one lock, one `sendmmsg`.
fn receive(socket: &UdpSocket, local: SocketAddr, shared: &Shared, b: &mut Batch) -> Received {
    let n = match socket.try_io(Interest::READABLE, || b.recv(socket.as_raw_fd())) {
        Ok(0) => return Received::Empty,
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Received::Empty,
        Err(e) => {
            // ICMP errors from earlier sends surface here; keep serving.
            debug!(%local, error = %e, "recv");
            return Received::Done;
        }
    };
    let mut items = [(0usize, 0usize); mmsg::BATCH];
    let mut k = 0;
    let mut route = None;
    {
        let now = monotonic_ns();
        let mut entries = shared.entries.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..n {
            let (from, len) = b.received(i);
            let Some(from) = from else {
                // Truncated (larger than any media packet) or not IP.
                count_drop(shared, DropReason::Malformed);
                continue;
            };
            let ingress = b.ingress(i);
            if let Some((out, dst, len)) = decide(
                &mut entries,
                shared,
                local,
                (from, ingress),
                b.slot_mut(i),
                len,
                now,
            ) {
                items[k] = (i, len);
                k += 1;
                route = Some((out, dst));
            }
        }
    }
    // One rule per receiving endpoint, and the lock was held for the whole
    // batch: every accepted packet leaves through the same socket to the
    // same destination.
    let Some((out, dst)) = route else {
        return Received::Done;
    };
    let mut done = 0;
    while done < k {
        match out.try_io(Interest::WRITABLE, || {
            b.send(out.as_raw_fd(), dst, &items[done..k])
        }) {
            Ok(0) => break,
            Ok(sent) => done += sent,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => {
                // The first datagram failed (e.g. no route): skip it.
                debug!(%local, %dst, error = %e, "send");
                done += 1;
            }
        }
    }
    if done < k {
        let left = items[done..k]
            .iter()
            .map(|&(slot, len)| b.slot(slot)[..len].to_vec())
            .collect();
        return Received::Blocked(left, out, dst);
    }
    Received::Done
}

/// The per-packet decision; mirrors the XDP program step for step, then
/// applies the flow's SRTP step. Returns the packet's new length.
fn decide(
    entries: &mut HashMap<SocketAddr, Entry>,
    shared: &Shared,
    local: SocketAddr,
    (from, ingress): (SocketAddr, Option<u32>),
    buf: &mut [u8],
    len: usize,
    now: u64,
) -> Option<(Arc<UdpSocket>, SocketAddr, usize)> {
    let Some(entry) = entries.get_mut(&local) else {
        count_drop(shared, DropReason::NoFlow);
        return None;
    };
    let verdict = check(entry, (from, ingress), buf, len, now);
    match verdict {
        Err(reason) => {
            entry.stats.drops[reason as usize] += 1;
            count_drop(shared, reason);
            None
        }
        Ok((latched, new_len)) => {
            if latched {
                let _ = shared.events.send(LatchNotice {
                    rule_id: entry.rule.id,
                    local,
                    source: from,
                    ssrc: entry.state.ssrc,
                    path: "userspace",
                });
            }
            entry.stats.packets += 1;
            entry.stats.bytes += len as u64;
            entry.stats.last_seen_ns = now;
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
            Some((entry.out.clone(), entry.rule.dst, new_len))
        }
    }
}

/// Ok((true, _)) when this packet latched the rule's source; the length is
/// the packet's after the SRTP step.
fn check(
    entry: &mut Entry,
    (from, ingress): (SocketAddr, Option<u32>),
    buf: &mut [u8],
    len: usize,
    now: u64,
) -> Result<(bool, usize), DropReason> {
    let payload = &buf[..len];
    if entry.rule.path == Path::Block {
        return Err(DropReason::Blocked);
    }
    // The kernel always reports the device (the socket asked); a datagram
    // without it is checked by the rest alone.
    if let Some(ifindex) = ingress {
        policy::check_ingress(&entry.kernel, ifindex)?;
    }
    let (first, second) = match payload {
        [a, b, ..] => (*a, *b),
        _ => (0, 0),
    };
    policy::check_rtp(payload.len(), first)?;
    let off = policy::ssrc_offset(second);
    let ssrc = u32::from_be_bytes([
        payload[off],
        payload[off + 1],
        payload[off + 2],
        payload[off + 3],
    ]);
    let (seq, ts) = (
        u16::from_be_bytes([payload[2], payload[3]]),
        u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
    );
    let src = rule::addr_of(canonical(from).ip());
    // The source is checked (and maybe learned) on a copy of the state: an
    // SRTP packet may teach it only once it has authenticated below.
    let mut state = entry.state;
    let latched = policy::check_source(
        &entry.kernel,
        &mut state,
        &src,
        from.port().to_be_bytes(),
        ssrc,
        now,
    )? == SourceCheck::Latched;
    policy::check_rate(&entry.kernel, &mut state, now)?;
    // A packet that passed the rate limit spent its token even if it fails
    // authentication: forged packets are limited like any others.
    entry.state.tat_ns = state.tat_ns;
    let rtcp = policy::is_rtcp(second);
    let len = match &mut entry.crypto {
        Some(c) => c.apply(buf, len, rtcp).map_err(crypto::drop_reason)?,
        None => len,
    };
    entry.state = state;
    // RTP quality with the XDP program's code (check_rtp vouched for the
    // 12-byte header, which SRTP leaves in the clear).
    if !rtcp {
        quality::rtp_arrived(
            &mut entry.state.quality,
            entry.kernel.clock_rate,
            ssrc,
            seq,
            ts,
            now,
        );
    }
    Ok((latched, len))
}

/// IPv4-mapped IPv6 sources (dual-stack sockets) compare as IPv4.
pub(super) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn count_drop(shared: &Shared, reason: DropReason) {
    shared.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
}
