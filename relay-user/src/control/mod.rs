//! The control socket: one JSON object per line each way, over a Unix socket
//! that only root may open (mode 0600). `relayctl` is its client. The schema
//! is versioned (`v`), documented in docs/control-api.md and written down as
//! a JSON Schema in docs/control-api.schema.json.

pub mod flows;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader},
    net::{UnixListener, UnixStream as TokioUnixStream},
};
use tracing::{debug, warn};

use crate::{
    dataplane::monotonic_ns,
    media::{Answer, Offer, SrtpOptions, SrtpPolicy},
    relay::Relay,
    rule::{Policy, Rule},
};

/// Version of the request/response schema.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest request line accepted; longer ones close the connection.
const MAX_LINE: usize = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Version, uptime, data-plane mode.
    Version,
    /// Install or replace the rule on `rule.local`.
    AddRule { rule: Rule },
    /// Remove the rule on `local`.
    DelRule { local: SocketAddr },
    /// Every rule with its figures.
    Rules,
    /// Every rule with its call context, path and age, and the read time.
    Flows,
    /// One rule (by id or relay endpoint) with its kernel map entries.
    Flow { flow: flows::FlowRef },
    /// One rule with its figures.
    Rule { local: SocketAddr },
    /// Global counters.
    Counters,
    /// Media core `offer`: returns `{ "sdp": ... }` for the other leg.
    Offer {
        call_id: String,
        from_tag: String,
        sdp: String,
        /// Interface names facing the offerer and the answerer.
        #[serde(default)]
        from_iface: Option<String>,
        #[serde(default)]
        to_iface: Option<String>,
        #[serde(default)]
        policy: Option<Policy>,
        /// SRTP policies of the offerer's and the answerer's legs (default:
        /// the interfaces').
        #[serde(default)]
        from_srtp: Option<SrtpPolicy>,
        #[serde(default)]
        to_srtp: Option<SrtpPolicy>,
        /// Forward the offerer's SRTP keys unchanged when both legs are SRTP.
        #[serde(default)]
        srtp_passthrough: Option<bool>,
    },
    /// Media core `answer`: returns `{ "sdp": ... }` for the offerer.
    Answer {
        call_id: String,
        from_tag: String,
        to_tag: String,
        sdp: String,
        #[serde(default)]
        policy: Option<Policy>,
    },
    /// Ends a call: its rules go, its ports are freed.
    Delete { call_id: String },
    /// One call with its streams.
    Query { call_id: String },
    /// Call ids.
    Calls,
    /// Blocks or unblocks all media of a call.
    Block { call_id: String, blocked: bool },
    /// SIP trunks (up/down, calls) and SIP counters; null when SIP is off.
    Sip,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    fn ok(result: serde_json::Value) -> Self {
        Self {
            v: SCHEMA_VERSION,
            ok: true,
            error: None,
            result: Some(result),
        }
    }
    fn err(message: String) -> Self {
        Self {
            v: SCHEMA_VERSION,
            ok: false,
            error: Some(message),
            result: None,
        }
    }
}

/// Answers one request line. Never panics on input.
pub fn handle_line(line: &str, relay: &Mutex<Relay>, started: Instant) -> Response {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return Response::err(format!("bad request: {e}")),
    };
    let mut relay = relay.lock().unwrap_or_else(|p| p.into_inner());
    let now_ns = monotonic_ns();
    let result = match request {
        Request::Version => Ok(serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "schema": SCHEMA_VERSION,
            "uptime_s": started.elapsed().as_secs(),
            "dataplane": format!("{:?}", relay.dp.mode()).to_lowercase(),
            "rules": relay.dp.rules().count(),
            "bound_endpoints": relay.dp.bound_endpoints(),
            "idle_sockets": relay.dp.idle_sockets(),
            "calls": relay.media.len(),
            "ports_in_use": relay.media.ports_in_use(),
        })),
        Request::AddRule { rule } => relay.add_static(rule).map(|r| to_json(&r)),
        Request::DelRule { local } => relay.remove_static(local).map(|r| to_json(&r)),
        Request::Rules => Ok(to_json(&relay.dp.views())),
        Request::Flows => Ok(to_json(&flows::flows(&relay))),
        Request::Flow { flow } => flows::flow(&relay, &flow)
            .map(|d| to_json(&d))
            .ok_or_else(|| anyhow!("no rule with {flow}")),
        Request::Rule { local } => relay
            .dp
            .view(local)
            .map(|v| to_json(&v))
            .ok_or_else(|| anyhow!("no rule on {local}")),
        Request::Counters => {
            let mut c = relay.dp.counters();
            if let Some(user) = &mut c.userspace {
                user.insert("call_rule_errors".into(), relay.rule_errors);
            }
            Ok(to_json(&c))
        }
        Request::Offer {
            call_id,
            from_tag,
            sdp,
            from_iface,
            to_iface,
            policy,
            from_srtp,
            to_srtp,
            srtp_passthrough,
        } => relay
            .offer(&Offer {
                call_id: &call_id,
                from_tag: &from_tag,
                sdp: &sdp,
                from_iface: from_iface.as_deref(),
                to_iface: to_iface.as_deref(),
                from_policy: policy,
                from_srtp,
                to_srtp,
                srtp: srtp_passthrough.map(|passthrough| SrtpOptions {
                    passthrough,
                    ..SrtpOptions::default()
                }),
                now_ns,
            })
            .map(|sdp| serde_json::json!({ "sdp": sdp }))
            .map_err(Into::into),
        Request::Answer {
            call_id,
            from_tag,
            to_tag,
            sdp,
            policy,
        } => relay
            .answer(&Answer {
                call_id: &call_id,
                from_tag: &from_tag,
                to_tag: &to_tag,
                sdp: &sdp,
                to_policy: policy,
                now_ns,
            })
            .map(|sdp| serde_json::json!({ "sdp": sdp }))
            .map_err(Into::into),
        Request::Delete { call_id } => relay
            .delete(&call_id)
            .map(|()| serde_json::json!({ "deleted": call_id }))
            .map_err(Into::into),
        Request::Query { call_id } => relay
            .query(&call_id)
            .map(|v| to_json(&v))
            .ok_or_else(|| anyhow!("no call {call_id:?}")),
        Request::Calls => Ok(to_json(&relay.media.list())),
        Request::Sip => Ok(to_json(&relay.sip)),
        Request::Block { call_id, blocked } => relay
            .block(&call_id, blocked)
            .map(|()| serde_json::json!({ "call_id": call_id, "blocked": blocked }))
            .map_err(Into::into),
    };
    match result {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(format!("{e:#}")),
    }
}

fn to_json<T: Serialize>(t: &T) -> serde_json::Value {
    serde_json::to_value(t)
        .unwrap_or_else(|e| serde_json::json!({ "serialize_error": e.to_string() }))
}

/// Binds the control socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!("another relayd is serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // The socket is created with the umask's mode: make that 0600 from the
    // start, so there is no moment in which others may connect. relayd has no
    // other thread creating files while it binds.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves control connections until the task is dropped.
pub async fn serve(listener: UnixListener, dp: Arc<Mutex<Relay>>, started: Instant) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, dp.clone(), started));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: TokioUnixStream, dp: Arc<Mutex<Relay>>, started: Instant) {
    let (read, mut write) = stream.into_split();
    let mut reader = TokioBufReader::new(read);
    loop {
        // Bounded: a peer that never sends a newline cannot grow our memory.
        let mut buf = Vec::new();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "control connection");
                return;
            }
        }
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_LINE {
                let _ = write
                    .write_all(b"{\"v\":1,\"ok\":false,\"error\":\"request too long\"}\n")
                    .await;
            }
            return;
        }
        let response = handle_line(&String::from_utf8_lossy(&buf), &dp, started);
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Why `relayctl` could not reach relayd, in one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("relayd is not running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error("permission denied on {0} (relayctl needs root, like relayd)")]
    Permission(PathBuf),
    #[error("control socket {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("relayd: {0}")]
    Remote(String),
    #[error("control socket {0}: unreadable reply: {1}")]
    Protocol(PathBuf, String),
}

/// A blocking client, one request per call.
pub struct Client {
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.into())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::Permission(path.into()),
            _ => ClientError::Io(path.into(), e),
        })?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        Ok(Self {
            path: path.into(),
            stream: BufReader::new(stream),
        })
    }

    pub fn call(&mut self, request: &Request) -> Result<serde_json::Value, ClientError> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| ClientError::Protocol(self.path.clone(), e.to_string()))?;
        line.push(b'\n');
        let io = |e| ClientError::Io(self.path.clone(), e);
        self.stream.get_mut().write_all(&line).map_err(io)?;
        let mut reply = String::new();
        self.stream
            .read_line(&mut reply)
            .map_err(|e| ClientError::Io(self.path.clone(), e))?;
        let response: Response = serde_json::from_str(&reply)
            .map_err(|e| ClientError::Protocol(self.path.clone(), e.to_string()))?;
        if response.ok {
            Ok(response.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(ClientError::Remote(response.error.unwrap_or_default()))
        }
    }
}
