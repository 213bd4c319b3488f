//! Peers for the NG tests: Kamailio (Debian's `kamailio`, with its
//! `rtpengine` module) as the SIP proxy that drives relayd over NG, sipp
//! (Debian's `sip-tester`) as caller and callee, a second relayd node, and a
//! small NG client.
//!
//! ```text
//!  caller ns                 relay ns                                  callee ns
//!  sipp UAC 192.0.2.10 --SIP--> Kamailio 192.0.2.1 / 198.51.100.1 --SIP--> sipp UAS 198.51.100.10
//!                               |  rtpengine_offer/answer/delete/query
//!                               v  NG over UDP on 127.0.0.1
//!                               relayd (XDP) 127.0.0.1:2223  [+ relayd (userspace) 127.0.0.1:2224]
//!  RTP 192.0.2.10:6000 <-----> 192.0.2.1 | relay | 198.51.100.1 <-----> 198.51.100.10:7000
//! ```
//!
//! Every process is started by the test and stopped by its pid (SIGTERM,
//! then SIGKILL after a deadline), also when the test fails.

use std::{
    net::{SocketAddr, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use relay_user::{
    control::{Client, Request},
    ng::bencode::{self, Value},
};

use crate::{netns::NetNs, topology::binary};

/// Debian's sip-tester G.711 A-law sample (classic pcap, Ethernet framing):
/// 236 RTP packets over about 7 s.
pub const G711A_PCAP: &str = "/usr/share/sip-tester/g711a.pcap";

/// Fails with an install hint when a tool the NG tests need is missing.
pub fn require_tools() -> Result<()> {
    for (tool, arg, package) in [("kamailio", "-v", "kamailio"), ("sipp", "-v", "sip-tester")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            bail!("{tool} is missing: `apt-get install -y {package}` (cargo xtask test does)");
        }
    }
    if !Path::new(G711A_PCAP).exists() {
        bail!("{G711A_PCAP} is missing: `apt-get install -y sip-tester`");
    }
    Ok(())
}

/// A child process stopped by pid on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} was already stopped", self.name),
        }
    }

    /// Waits up to `limit` for the process to exit by itself; kills it
    /// (by pid) and fails when it does not.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.stop();
                bail!("{} did not finish within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after 10 s; returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command run in `ns`'s network namespace (setns before exec), keeping our
/// mount namespace (unlike `ip netns exec`, which remounts /sys).
pub fn in_netns(ns: &NetNs, program: &Path) -> Result<Command> {
    let file = std::fs::File::open(ns.path())?;
    let mut cmd = Command::new(program);
    // SAFETY: setns(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(cmd)
}

/// Kamailio as a stateful proxy that anchors media through the rtpengine
/// set given in `nodes` (NG URLs like `udp:127.0.0.1:2223`).
pub struct Kamailio {
    pub proc: Proc,
}

/// What Kamailio logs per call, with `NG*` prefixes the tests look for:
/// `NGNODE <call-id> <node>` after the offer, `NGSTAT <call-id> <$rtpstat>`
/// and `NGQUERY <call-id> <rtpengine_query_v JSON>` on BYE, and after the
/// delete `NGMOS <call-id>` with the MOS figures the rtpengine module parsed
/// from the reply (see [`MosLog`]).
pub fn kamailio_config(listen: &[&str], nodes: &[&str]) -> String {
    let listen: String = listen
        .iter()
        .map(|l| format!("listen=udp:{l}:5060\n"))
        .collect();
    let socks = nodes
        .iter()
        .map(|n| format!("{n}=1"))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
# Each worker blocks on every NG round trip: have enough of them.
children=8
# Two interfaces (inside, outside): pick the socket by route.
mhomed=1
auto_aliases=no
{listen}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "maxfwd.so"
loadmodule "rtpengine.so"

modparam("rr", "enable_double_rr", 1)
modparam("rtpengine", "rtpengine_sock", "{socks}")
modparam("rtpengine", "rtp_inst_pvar", "$avp(rtp_inst)")
# A node that misses a reply is skipped for this long (default 60 s).
modparam("rtpengine", "rtpengine_disable_tout", 20)
modparam("rtpengine", "rtpengine_tout_ms", 1000)
# MOS figures of query/delete replies, overall and per label (caller/callee).
modparam("rtpengine", "mos_average_pv", "$avp(mos_avg)")
modparam("rtpengine", "mos_average_samples_pv", "$avp(mos_samples)")
modparam("rtpengine", "mos_average_packetloss_pv", "$avp(mos_loss)")
modparam("rtpengine", "mos_min_pv", "$avp(mos_min)")
modparam("rtpengine", "mos_max_pv", "$avp(mos_max)")
modparam("rtpengine", "mos_A_label_pv", "$avp(mos_A_label)")
modparam("rtpengine", "mos_average_A_pv", "$avp(mos_A)")
modparam("rtpengine", "mos_B_label_pv", "$avp(mos_B_label)")
modparam("rtpengine", "mos_average_B_pv", "$avp(mos_B)")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            rtpengine_delete();
            t_relay();
        }}
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE")) {{
                xlog("L_NOTICE", "NGSTAT $ci $rtpstat\n");
                rtpengine_query_v("j", "$var(q)");
                xlog("L_NOTICE", "NGQUERY $ci $var(q)\n");
                $avp(mos_A_label) = "caller";
                $avp(mos_B_label) = "callee";
                rtpengine_delete();
                xlog("L_NOTICE", "NGMOS $ci $avp(mos_avg) $avp(mos_samples) $avp(mos_loss) $avp(mos_min) $avp(mos_max) $avp(mos_A) $avp(mos_B)\n");
            }} else if (has_body("application/sdp")) {{
                rtpengine_manage("replace-origin replace-session-connection trust-address");
            }}
            t_on_reply("MANAGE");
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) t_relay();
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    record_route();
    if (is_method("INVITE")) {{
        if (!rtpengine_offer("direction=inside direction=outside replace-origin replace-session-connection ICE=remove trust-address label=caller")) {{
            xlog("L_ERR", "NGFAIL $ci offer refused\n");
            sl_send_reply("503", "No media relay");
            exit;
        }}
        xlog("L_NOTICE", "NGNODE $ci $avp(rtp_inst)\n");
        t_on_reply("MANAGE");
        t_on_failure("FAILED");
    }}
    if (!t_relay()) {{
        sl_reply_error();
    }}
}}

onreply_route[MANAGE] {{
    if (has_body("application/sdp")) {{
        if (!rtpengine_answer("replace-origin replace-session-connection trust-address label=callee")) {{
            xlog("L_ERR", "NGFAIL $ci answer refused\n");
        }}
    }}
}}

failure_route[FAILED] {{
    rtpengine_delete();
}}
"#
    )
}

impl Kamailio {
    /// Writes the configuration into `dir`, starts Kamailio in `ns`, and
    /// returns once it has found every NG node (it pings them at startup).
    pub fn start(ns: &NetNs, dir: &Path, listen: &[&str], nodes: &[&str]) -> Result<Self> {
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(&cfg, kamailio_config(listen, nodes))?;
        let run = dir.join("kamailio-run");
        std::fs::create_dir_all(&run)?;
        let mut cmd = in_netns(ns, Path::new("/usr/sbin/kamailio"))?;
        // -DD: stay in the foreground (the pid is Kamailio's main process,
        // which stops its workers on SIGTERM); -E: log to stderr.
        cmd.arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
            .arg(&run);
        let mut proc = Proc::spawn("kamailio", cmd, dir.join("kamailio.log"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = proc.log_text();
            let found = nodes
                .iter()
                .filter(|n| log.contains(&format!("rtpengine instance <{n}> found")))
                .count();
            if found == nodes.len() {
                return Ok(Self { proc });
            }
            if let Some(status) = proc.try_wait()? {
                bail!("kamailio exited ({status}) during start:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("kamailio did not find its NG nodes within 20 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// One call as Kamailio logged it.
#[derive(Debug, Default, Clone)]
pub struct CallLog {
    pub node: Option<String>,
    /// `$rtpstat`: RTP packets, RTCP packets.
    pub rtpstat: Option<(u64, u64)>,
    /// `rtpengine_query_v("j")` at BYE.
    pub query: Option<serde_json::Value>,
    pub mos: Option<MosLog>,
}

/// The MOS figures Kamailio's rtpengine module read from a delete reply
/// (`mos_*_pv`); None where it set nothing (xlog prints `<null>`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MosLog {
    pub average: Option<f64>,
    pub samples: Option<u32>,
    pub loss_pct: Option<u32>,
    pub lowest: Option<f64>,
    pub highest: Option<f64>,
    /// Average over the streams of the tag labelled `caller` / `callee`.
    pub caller: Option<f64>,
    pub callee: Option<f64>,
}

impl MosLog {
    fn parse(s: &str) -> Self {
        let w: Vec<&str> = s.split_whitespace().collect();
        let f = |i: usize| w.get(i).and_then(|v| v.parse().ok());
        let n = |i: usize| w.get(i).and_then(|v| v.parse().ok());
        Self {
            average: f(0),
            samples: n(1),
            loss_pct: n(2),
            lowest: f(3),
            highest: f(4),
            caller: f(5),
            callee: f(6),
        }
    }
}

/// Reads the `NG*` lines of Kamailio's log (from byte `from` on) by call-id.
pub fn calls_in_log(log: &str, from: usize) -> std::collections::BTreeMap<String, CallLog> {
    let mut out: std::collections::BTreeMap<String, CallLog> = Default::default();
    let tail = log.get(from..).unwrap_or("");
    for line in tail.lines() {
        for (tag, what) in [
            ("NGNODE ", 0),
            ("NGSTAT ", 1),
            ("NGQUERY ", 2),
            ("NGMOS ", 3),
        ] {
            let Some(rest) = line.split_once(tag).map(|(_, r)| r) else {
                continue;
            };
            let Some((call, value)) = rest.split_once(' ') else {
                continue;
            };
            let entry = out.entry(call.to_string()).or_default();
            match what {
                0 => entry.node = Some(value.trim().to_string()),
                1 => entry.rtpstat = parse_rtpstat(value),
                2 => entry.query = serde_json::from_str(value.trim()).ok(),
                _ => entry.mos = Some(MosLog::parse(value)),
            }
        }
    }
    out
}

/// "RTP: 118944 bytes, 472 packets, 0 errors; RTCP: 0 bytes, 0 packets, 0 errors"
fn parse_rtpstat(s: &str) -> Option<(u64, u64)> {
    let packets = |part: &str| -> Option<u64> {
        let words: Vec<&str> = part.split_whitespace().collect();
        let i = words.iter().position(|w| w.starts_with("packets"))?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let (rtp, rtcp) = s.split_once(';')?;
    Some((packets(rtp)?, packets(rtcp)?))
}

/// RTP packets the relay received from each tag of a call
/// (`tags.*.medias[0].streams[0].stats.packets` of a query reply).
pub fn rtp_packets_per_tag(query: &serde_json::Value) -> Vec<(String, u64, bool)> {
    let Some(tags) = query["tags"].as_object() else {
        return Vec::new();
    };
    tags.iter()
        .map(|(tag, t)| {
            let stream = &t["medias"][0]["streams"][0];
            let kernelized = stream["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "kernelized"));
            (
                tag.clone(),
                stream["stats"]["packets"].as_u64().unwrap_or(0),
                kernelized,
            )
        })
        .collect()
}

/// The sipp scenarios, written per run (sipp reads the pcap path when it
/// loads the scenario).
pub struct Scenarios {
    pub uac: PathBuf,
    pub uas: PathBuf,
}

impl Scenarios {
    /// `callee` is the request-URI host (the proxy routes on it).
    pub fn write(dir: &Path, callee: &str) -> Result<Self> {
        let uac = dir.join("uac.xml");
        let uas = dir.join("uas.xml");
        std::fs::write(
            &uac,
            UAC.replace("CALLEE", callee).replace("PCAP", G711A_PCAP),
        )?;
        std::fs::write(&uas, UAS.replace("PCAP", G711A_PCAP))?;
        Ok(Self { uac, uas })
    }
}

/// Starts the sipp UAS (it answers every call and plays the sample back).
pub fn start_uas(ns: &NetNs, sc: &Scenarios, ip: &str, dir: &Path) -> Result<Proc> {
    let mut cmd = in_netns(ns, Path::new("/usr/bin/sipp"))?;
    cmd.arg("-sf")
        .arg(&sc.uas)
        .args(["-i", ip, "-p", "5060", "-mi", ip, "-mp", "7000", "-nostdin"])
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("uas-errors.log"));
    let p = Proc::spawn("sipp uas", cmd, dir.join("uas.log"))?;
    // sipp binds at once; give it a moment before the first INVITE.
    std::thread::sleep(Duration::from_millis(300));
    Ok(p)
}

/// One run of the sipp UAC.
pub struct Uac<'a> {
    /// The caller's address (SIP and media).
    pub ip: &'a str,
    /// The proxy the INVITEs go to (port 5060).
    pub proxy: &'a str,
    pub calls: u32,
    /// Calls started per second; all of them run in parallel.
    pub rate: u32,
    /// Names the log files.
    pub name: &'a str,
}

/// Runs the sipp UAC: each call has about 7 s of G.711 both ways. Returns
/// sipp's exit status and the tail of its output.
pub fn run_uac(ns: &NetNs, sc: &Scenarios, uac: &Uac, dir: &Path) -> Result<(ExitStatus, String)> {
    let Uac {
        ip,
        proxy,
        calls,
        rate,
        name,
    } = *uac;
    let mut cmd = in_netns(ns, Path::new("/usr/bin/sipp"))?;
    cmd.arg(format!("{proxy}:5060"))
        .arg("-sf")
        .arg(&sc.uac)
        .args([
            "-s", "callee", "-i", ip, "-p", "5060", "-mi", ip, "-mp", "6000",
        ])
        .args(["-m", &calls.to_string(), "-r", &rate.to_string()])
        .args(["-l", &calls.to_string(), "-nostdin", "-timeout", "90s"])
        .args(["-trace_err", "-error_file"])
        .arg(dir.join(format!("{name}-errors.log")));
    let mut p = Proc::spawn(name, cmd, dir.join(format!("{name}.log")))?;
    let status = p.wait(Duration::from_secs(120))?;
    let errors =
        std::fs::read_to_string(dir.join(format!("{name}-errors.log"))).unwrap_or_default();
    let out = p.log_text();
    let tail: String = out
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Ok((status, format!("{tail}\n{errors}")))
}

const UAC: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="relay ng uac">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@CALLEE:5060 SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: caller <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@CALLEE:5060>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8
      a=rtpmap:8 PCMA/8000
      a=sendrecv
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: caller <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <nop><action><exec play_pcap_audio="PCAP"/></action></nop>
  <pause milliseconds="7500"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: caller <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"#;

/// Needs `rrs="true"` on the INVITE so the 200 OK echoes Record-Route (or the
/// ACK and BYE lose their way back through the proxy).
const UAS: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="relay ng uas">
  <recv request="INVITE" crlf="true" rrs="true"/>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8
      a=rtpmap:8 PCMA/8000
      a=sendrecv
    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <nop><action><exec play_pcap_audio="PCAP"/></action></nop>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#;

/// A second relayd, in userspace mode (the first holds the XDP attachment of
/// the relay's interfaces), on its own addresses of the same devices, with
/// its own control socket, pin path and NG port.
pub struct SecondRelayd {
    pub proc: Proc,
    pub control: PathBuf,
}

impl SecondRelayd {
    pub fn start(
        ns: &NetNs,
        dir: &Path,
        inside: &str,
        outside: &str,
        ng: SocketAddr,
    ) -> Result<Self> {
        let control = dir.join("relayd2.sock");
        let config = dir.join("relayd2.toml");
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
mode = "userspace"
pin_path = "{pin}"

[control]
socket = "{sock}"

[ng]
listen = "{ng}"

[[interface]]
name = "inside"
device = "in0"
address = "{inside}"
ports = "30000-30999"

[[interface]]
name = "outside"
device = "out0"
address = "{outside}"
ports = "40000-40999"
"#,
                pin = dir.join("pin2").display(),
                sock = control.display(),
            ),
        )?;
        let mut cmd = in_netns(ns, &binary("relayd")?)?;
        cmd.arg("--config").arg(&config).env("RELAY_LOG", "info");
        let mut proc = Proc::spawn("relayd (node 2)", cmd, dir.join("relayd2.log"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Client::connect(&control)
                && c.call(&Request::Version).is_ok()
            {
                return Ok(Self { proc, control });
            }
            if let Some(status) = proc.try_wait()? {
                bail!("relayd (node 2) exited ({status}):\n{}", proc.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "relayd (node 2) did not answer within 20 s:\n{}",
                    proc.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn call(&self, request: &Request) -> Result<serde_json::Value> {
        Ok(Client::connect(&self.control)?.call(request)?)
    }
}

/// An NG client (what a proxy module does, minus the SIP).
pub struct NgClient {
    socket: UdpSocket,
    server: SocketAddr,
    next: u32,
}

impl NgClient {
    /// A client socket in `ns` talking to `server`.
    pub fn new(ns: &NetNs, server: SocketAddr) -> Result<Self> {
        let socket = ns.run(|| UdpSocket::bind("127.0.0.1:0"))??;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(Self {
            socket,
            server,
            next: 0,
        })
    }

    /// Sends `dict` under a fresh cookie (three tries) and decodes the reply.
    pub fn request(&mut self, dict: &Value) -> Result<Value> {
        self.next += 1;
        let cookie = format!("test_{}_{}", std::process::id(), self.next);
        let mut packet = format!("{cookie} ").into_bytes();
        packet.extend(bencode::encode(dict));
        let mut buf = vec![0u8; 65_536];
        for _ in 0..3 {
            self.socket.send_to(&packet, self.server)?;
            let Ok((n, _)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let reply = &buf[..n];
            if let Some(body) = reply.strip_prefix(format!("{cookie} ").as_bytes()) {
                return Ok(bencode::decode(body)?);
            }
        }
        bail!("no NG reply from {}", self.server)
    }

    /// `{"command": name}`.
    pub fn command(&mut self, name: &str) -> Result<Value> {
        self.request(&Value::Dict(vec![(b"command".to_vec(), Value::str(name))]))
    }
}

/// rtpengine's command line as the benchmarks run it against relayd: Debian's
/// `rtpengine-daemon` in userspace only (`--table=-1`: no kernel module
/// here), no configuration file, calls deleted at once, logging to stderr,
/// the relay's two interfaces and the media port range, NG on `ng`.
pub fn rtpengine_args(
    inside: &str,
    outside: &str,
    threads: u32,
    ng: &str,
    pid_dir: &Path,
) -> Vec<String> {
    [
        "--config-file=none",
        "--foreground",
        "--log-stderr",
        "--log-level=4",
        "--table=-1",
        "--delete-delay=0",
        "--port-min=30000",
        "--port-max=49999",
    ]
    .map(String::from)
    .into_iter()
    .chain([
        format!("--interface=inside/{inside}"),
        format!("--interface=outside/{outside}"),
        format!("--num-threads={threads}"),
        format!("--listen-ng={ng}"),
        format!("--pidfile={}/rtpengine.pid", pid_dir.display()),
    ])
    .collect()
}
