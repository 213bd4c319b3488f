//! Real SIP peers for the B2BUA tests and the demo: sipp (Debian's
//! `sip-tester`) as the PBX and as the service's user agent, Kamailio with its
//! `tls` module as the service's mutual-TLS front, and test certificates made
//! with the `openssl` command line.
//!
//! ```text
//!  caller ns: sipp UAC (PBX) --udp/tcp--> relayd 192.0.2.1:5060
//!  relayd 198.51.100.1 --tls 5061 (mutual)--> callee ns: Kamailio 198.51.100.10:5061
//!                                             Kamailio --udp--> sipp UAS 198.51.100.10:5080
//! ```
//!
//! For an SRTP-only service ([`start_srtp_service`]) the UAS answers
//! RTP/SAVP with its own key and media on [`SRTP_SERVICE_MEDIA_PORT`], where
//! the caller's libsrtp endpoint listens; [`received_offers`] reads the
//! relay's offers (and so its keys) back from the UAS's message log.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use relay_user::srtp::{Suite, sdes::CryptoAttribute};

use crate::netns::{NetNs, run_command};

/// Where Debian's sip-tester keeps its G.711 A-law sample (Ethernet framing,
/// classic pcap: what `play_pcap_audio` wants).
pub const G711A_PCAP: &str = "/usr/share/sip-tester/g711a.pcap";

/// Files of one test certificate authority and the certificates it signed.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A CA plus leaf certificates for `relay` (198.51.100.1,
    /// relay.example.test) and `service` (198.51.100.10,
    /// voicemail.example.test), and a `rogue` certificate from another CA.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pki = Self { dir: dir.into() };
        pki.ca("ca", "relay test CA")?;
        pki.ca("rogue-ca", "rogue CA")?;
        pki.leaf("relay", "ca", "relay.example.test", "198.51.100.1")?;
        pki.leaf("service", "ca", "voicemail.example.test", "198.51.100.10")?;
        pki.leaf("rogue", "rogue-ca", "relay.example.test", "198.51.100.1")?;
        Ok(pki)
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        run_command(Command::new("openssl").current_dir(&self.dir).args(args)).map(drop)
    }

    fn ca(&self, name: &str, cn: &str) -> Result<()> {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
    }

    fn leaf(&self, name: &str, ca: &str, dns: &str, ip: &str) -> Result<()> {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={dns}"),
        ])?;
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{dns},IP:{ip}\n"
            ),
        )?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ])
    }
}

/// A background process in a namespace, stopped by its pid on drop.
pub struct Peer {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Removed with the peer (e.g. a namespace's resolv.conf).
    cleanup: Option<PathBuf>,
}

impl Peer {
    pub fn spawn(ns: &NetNs, name: &str, program: &str, args: &[&str], log: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log)?;
        // Its own process group, so stopping it also reaches the processes it
        // forks (Kamailio's workers), by the group id of our own child.
        let child = ns
            .command(program)
            .process_group(0)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log: log.into(),
            cleanup: None,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself, up to `limit`.
    pub fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().context("already stopped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "{} did not finish within {limit:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM to the process and its group, then SIGKILL to the group
    /// after 5 s.
    pub fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever of the group is left (workers whose parent is gone).
        let _ = killpg(
            pid,
            if exited {
                Signal::SIGTERM
            } else {
                Signal::SIGKILL
            },
        );
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
        if let Some(path) = self.cleanup.take() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Kamailio in the callee namespace: TLS on 198.51.100.10:5061 requiring a
/// client certificate from our CA, relaying to the UAS at 198.51.100.10:5080
/// over UDP. One Record-Route (`sip:198.51.100.10:5061;transport=tls`) serves
/// both sides: the UAS reaches it over UDP on the same port. No `alias`: the
/// UAS shares Kamailio's address, and an alias of the bare address would make
/// every port of it "myself" (loose_route then treats the UAS's Contact as a
/// strict-routing Request-URI).
pub fn start_kamailio_tls(ns: &NetNs, pki: &Pki, identity: &str, dir: &Path) -> Result<Peer> {
    let tls_cfg = dir.join("kamailio-tls.cfg");
    std::fs::write(
        &tls_cfg,
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
             private_key = {key}\ncertificate = {cert}\nca_list = {ca}\n\n\
             [client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
             private_key = {key}\ncertificate = {cert}\nca_list = {ca}\n",
            key = pki.key(identity).display(),
            cert = pki.cert(identity).display(),
            ca = pki.cert("ca").display(),
        ),
    )?;
    let cfg = dir.join("kamailio.cfg");
    std::fs::write(
        &cfg,
        format!(
            r#"#!KAMAILIO
debug=2
dns=no
rev_dns=no
dns_try_ipv6=no
use_dns_cache=no
log_stderror=yes
fork=yes
children=2
tcp_children=2
enable_tls=yes
listen=tls:198.51.100.10:5061
listen=udp:198.51.100.10:5070
listen=udp:198.51.100.10:5061
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "tls.so"
modparam("tls", "config", "{tls}")
modparam("rr", "enable_double_rr", 0)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        xlog("L_INFO", "in-dialog: $rm ru=$ru from $si:$sp over $pr route=$hdr(Route)\n");
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here"); exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if ($pr != "tls") {{ sl_send_reply("403", "TLS only"); exit; }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    xlog("L_INFO", "service: $rm from $si:$sp over $pr diversion=$hdr(Diversion) via=$hdr(Via)\n");
    record_route();
    $du = "sip:198.51.100.10:5080";
    t_relay();
}}
"#,
            tls = tls_cfg.display()
        ),
    )?;
    // Kamailio looks its addresses up in DNS at start. The namespace has no
    // DNS server, and queries routed into the test topology would only time
    // out: `ip netns exec` gives it this resolv.conf instead, which fails at once.
    let etc = PathBuf::from("/etc/netns").join(ns.name());
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("resolv.conf"),
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )?;
    let pid = dir.join("kamailio.pid");
    let mut peer = Peer::spawn(
        ns,
        "kamailio",
        "kamailio",
        &[
            "-DD",
            "-E",
            // Shared memory for transactions and TLS state: the 64 MB default
            // runs out at the SIP benchmark's highest rate.
            "-m",
            "512",
            "-f",
            cfg.to_str().context("path")?,
            "-P",
            pid.to_str().context("path")?,
            "-Y",
            dir.to_str().context("path")?,
            "-w",
            dir.to_str().context("path")?,
        ],
        &dir.join("kamailio.log"),
    )?;
    peer.cleanup = Some(etc);
    // Ready when its TLS port accepts connections.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let up = ns
            .run(|| std::net::TcpStream::connect("198.51.100.10:5061").is_ok())
            .unwrap_or(false);
        if up {
            return Ok(peer);
        }
        if Instant::now() > deadline {
            bail!("kamailio did not listen within 15 s:\n{}", peer.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a sipp scenario does after its call is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// This side sends BYE after the audio.
    Sends,
    /// This side waits for the other side's BYE.
    Awaits,
}

/// What the PBX (sipp UAC) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uac {
    /// Calls, plays audio for `audio_ms`, optionally holds and resumes, hangs up or awaits BYE.
    Call {
        hangup: Hangup,
        hold: bool,
        audio_ms: u32,
    },
    /// Calls and cancels after the 180.
    Cancel,
    /// Calls and expects this final error response.
    Fails(u16),
}

const UAC_SDP: &str = "v=0\no=pbx 1 1 IN IP[local_ip_type] [local_ip]\ns=-\nc=IN IP[media_ip_type] [media_ip]\n\
     t=0 0\nm=audio [media_port] RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\n\
     a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=DIRECTION\n";

fn uac_request(
    method: &str,
    cseq: u32,
    branch: &str,
    body: Option<String>,
    initial: bool,
) -> String {
    let (ctype, body) = match body {
        Some(b) => ("Content-Type: application/sdp\n".to_string(), b),
        None => (String::new(), String::new()),
    };
    let (uri, to) = if initial {
        (
            "sip:voicemail@[remote_ip]:[remote_port]",
            "<sip:voicemail@[remote_ip]:[remote_port]>",
        )
    } else {
        (
            "[next_url]",
            "<sip:voicemail@[remote_ip]:[remote_port]>[peer_tag_param]",
        )
    };
    let diversion = if initial && method == "INVITE" {
        "Diversion: <sip:2000@pbx.example.test>;reason=no-answer\n"
    } else {
        ""
    };
    let retrans = if method == "ACK" {
        ""
    } else {
        " retrans=\"500\""
    };
    format!(
        "<send{retrans}><![CDATA[\n{method} {uri} SIP/2.0\n\
         Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}\n\
         From: \"PBX\" <sip:1000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\n\
         To: {to}\nCall-ID: [call_id]\nCSeq: {cseq} {method}\n\
         Contact: <sip:1000@[local_ip]:[local_port];transport=[transport]>\n\
         Max-Forwards: 70\n{diversion}{ctype}Content-Length: [len]\n\n{body}]]></send>\n"
    )
}

/// The PBX's sipp scenario.
pub fn uac_scenario(plan: Uac) -> String {
    let sdp = |d: &str| UAC_SDP.replace("DIRECTION", d);
    let mut s =
        String::from("<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"pbx\">\n");
    // Message 0: the INVITE; its branch is reused by CANCEL and non-2xx ACK.
    s += &uac_request("INVITE", 1, "[branch]", Some(sdp("sendrecv")), true);
    s += "<recv response=\"100\" optional=\"true\"/>\n";
    match plan {
        Uac::Fails(code) => {
            s += "<recv response=\"180\" optional=\"true\"/>\n";
            s += &format!("<recv response=\"{code}\"/>\n");
            s += &uac_request("ACK", 1, "[branch-4]", None, true).replace("[peer_tag_param]", "");
            s += "<pause milliseconds=\"200\"/>\n";
        }
        Uac::Cancel => {
            s += "<recv response=\"180\"/>\n<pause milliseconds=\"500\"/>\n";
            s += &uac_request("CANCEL", 1, "[branch-4]", None, true);
            s += "<recv response=\"200\"/>\n<recv response=\"487\"/>\n";
            s += &uac_request("ACK", 1, "[branch-7]", None, true);
            s += "<pause milliseconds=\"200\"/>\n";
        }
        Uac::Call {
            hangup,
            hold,
            audio_ms,
        } => {
            s += "<recv response=\"180\" optional=\"true\"/>\n<recv response=\"183\" optional=\"true\"/>\n\
                  <recv response=\"200\" rrs=\"true\" rtd=\"true\"/>\n";
            s += &uac_request("ACK", 1, "[branch]", None, false);
            if audio_ms > 0 {
                s += &format!(
                    "<nop><action><exec play_pcap_audio=\"{G711A_PCAP}\"/></action></nop>\n<pause milliseconds=\"{audio_ms}\"/>\n"
                );
            }
            let mut cseq = 2;
            if hold {
                for direction in ["sendonly", "sendrecv"] {
                    s += &uac_request("INVITE", cseq, "[branch]", Some(sdp(direction)), false);
                    s += "<recv response=\"100\" optional=\"true\"/>\n<recv response=\"200\"/>\n";
                    s += &uac_request("ACK", cseq, "[branch]", None, false);
                    s += "<pause milliseconds=\"1000\"/>\n";
                    cseq += 1;
                }
            }
            match hangup {
                Hangup::Sends => {
                    s += &uac_request("BYE", cseq, "[branch]", None, false);
                    s += "<recv response=\"200\" crlf=\"true\"/>\n";
                }
                Hangup::Awaits => {
                    s += "<recv request=\"BYE\"/>\n<send><![CDATA[\nSIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n\
                          [last_To:]\n[last_Call-ID:]\n[last_CSeq:]\nContent-Length: 0\n\n]]></send>\n";
                }
            }
        }
    }
    s += "</scenario>\n";
    s
}

/// How the service's user agent answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uas {
    /// 180, 200 with SDP, plays audio, optionally takes a hold and a resume
    /// re-INVITE, then hangs up after `audio_ms` or waits for BYE.
    Accept {
        hangup: Hangup,
        hold: bool,
        audio_ms: u32,
    },
    /// 486 Busy Here.
    Busy,
    /// 180 and nothing more: the INVITE gets cancelled.
    Ring,
}

/// The service's user agent behind Kamailio.
pub fn uas_scenario(plan: Uas) -> String {
    let reply = |code: &str, sdp: bool| {
        let (ctype, body) = if sdp {
            (
                "Content-Type: application/sdp\n",
                "v=0\no=vm 1 1 IN IP[local_ip_type] [local_ip]\ns=-\nc=IN IP[media_ip_type] [media_ip]\nt=0 0\n\
                 m=audio [media_port] RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\n\
                 a=fmtp:101 0-15\n",
            )
        } else {
            ("", "")
        };
        format!(
            "<send><![CDATA[\nSIP/2.0 {code}\n[last_Via:]\n[last_From:]\n[last_To:];tag=[pid]SIPpTag01[call_number]\n\
             [last_Call-ID:]\n[last_CSeq:]\n[last_Record-Route:]\n\
             Contact: <sip:vm@[local_ip]:[local_port];transport=[transport]>\n{ctype}Content-Length: [len]\n\n{body}]]></send>\n"
        )
    };
    let ok = "<send><![CDATA[\nSIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n\
              [last_CSeq:]\nContent-Length: 0\n\n]]></send>\n";
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"service\">\n",
    );
    // Variables taken from the INVITE, only where used: sipp aborts a
    // scenario that assigns a variable it never uses.
    let mut actions = String::new();
    if plan == Uas::Ring {
        // The 487 after a CANCEL must carry the INVITE's CSeq, not the
        // CANCEL's ([last_CSeq:] is the last message's).
        actions += "<ereg regexp=\"[0-9]+\" search_in=\"hdr\" header=\"CSeq:\" check_it=\"true\" assign_to=\"invseq\"/>";
    }
    if matches!(
        plan,
        Uas::Accept {
            hangup: Hangup::Sends,
            ..
        }
    ) {
        // Our BYE's To carries the caller's From tag.
        actions += "<ereg regexp=\"tag=[^;> ]+\" search_in=\"hdr\" header=\"From:\" check_it=\"true\" assign_to=\"ftag\"/>";
    }
    if actions.is_empty() {
        s += "<recv request=\"INVITE\" crlf=\"true\" rrs=\"true\"/>\n";
    } else {
        s += &format!(
            "<recv request=\"INVITE\" crlf=\"true\" rrs=\"true\"><action>{actions}</action></recv>\n"
        );
    }
    match plan {
        Uas::Busy => {
            s += &reply("486 Busy Here", false);
            s += "<recv request=\"ACK\"/>\n";
        }
        Uas::Ring => {
            s += &reply("180 Ringing", false);
            s += "<recv request=\"CANCEL\"/>\n";
            s += ok;
            s += &reply("487 Request Terminated", false)
                .replace("[last_CSeq:]", "CSeq: [$invseq] INVITE");
            s += "<recv request=\"ACK\"/>\n";
        }
        Uas::Accept {
            hangup,
            hold,
            audio_ms,
        } => {
            s += &reply("180 Ringing", false);
            s += &reply("200 OK", true);
            s += "<recv request=\"ACK\"/>\n";
            if audio_ms > 0 {
                s += &format!(
                    "<nop><action><exec play_pcap_audio=\"{G711A_PCAP}\"/></action></nop>\n"
                );
            }
            if hold {
                for _ in 0..2 {
                    s += "<recv request=\"INVITE\"/>\n";
                    s += &reply("200 OK", true).replace(";tag=[pid]SIPpTag01[call_number]", "");
                    s += "<recv request=\"ACK\"/>\n";
                }
            }
            match hangup {
                Hangup::Awaits => {
                    s += "<recv request=\"BYE\"/>\n";
                    s += ok;
                }
                Hangup::Sends => {
                    s += &format!("<pause milliseconds=\"{audio_ms}\"/>\n");
                    s += "<send retrans=\"500\"><![CDATA[\nBYE [next_url] SIP/2.0\n\
                          Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n\
                          From: <sip:voicemail@[local_ip]>;tag=[pid]SIPpTag01[call_number]\n\
                          To: <sip:1000@[remote_ip]>;[$ftag]\n[last_Call-ID:]\nCSeq: 1 BYE\n[routes]\n\
                          Max-Forwards: 70\nContent-Length: 0\n\n]]></send>\n\
                          <recv response=\"200\"/>\n";
                }
            }
        }
    }
    s += "<pause milliseconds=\"500\"/>\n</scenario>\n";
    s
}

/// Starts sipp in `ns` with a scenario written to `dir/name.xml`.
pub fn sipp(ns: &NetNs, dir: &Path, name: &str, scenario: &str, args: &[&str]) -> Result<Peer> {
    let file = dir.join(format!("{name}.xml"));
    std::fs::write(&file, scenario)?;
    let mut all = vec![
        "-sf",
        file.to_str().context("path")?,
        "-nostdin",
        "-trace_err",
        "-trace_msg",
    ];
    let err = dir.join(format!("{name}_errors.log"));
    let msg = dir.join(format!("{name}_messages.log"));
    all.extend([
        "-error_file",
        err.to_str().context("path")?,
        "-message_file",
        msg.to_str().context("path")?,
    ]);
    all.extend_from_slice(args);
    Peer::spawn(ns, name, "sipp", &all, &dir.join(format!("{name}.log")))
}

/// relayd's `[sip]` and `[[trunk]]` configuration for the topology: the PBX
/// (UDP and TCP trunks) on the inside, the TLS-only service on the outside.
pub fn relay_sip_config(pki: &Pki, ring_timeout_s: u32) -> String {
    format!(
        r#"
[sip]
listen_udp = ["192.0.2.1:5060"]
listen_tcp = ["192.0.2.1:5060"]
listen_tls = ["198.51.100.1:5061"]
ring_timeout_s = {ring_timeout_s}
invite_rate_per_source = 100

[sip.tls]
cert = "{cert}"
key = "{key}"

[[trunk]]
name = "pbx"
transport = "udp"
peer = "192.0.2.10:5060"
interface = "inside"
sources = ["192.0.2.0/24"]
route_to = "voicemail"
options_interval_s = 0
pass_headers = ["Diversion"]

[[trunk]]
name = "pbx-tcp"
transport = "tcp"
peer = "192.0.2.10:5060"
interface = "inside"
sources = ["192.0.2.0/24"]
route_to = "voicemail"
options_interval_s = 0

[[trunk]]
name = "voicemail"
transport = "tls"
peer = "198.51.100.10:5061"
interface = "outside"
options_interval_s = 1
pass_headers = ["Diversion", "History-Info", "P-Asserted-Identity"]

[trunk.tls]
ca = "{ca}"
server_name = "voicemail.example.test"
require_client_cert = true
"#,
        cert = pki.cert("relay").display(),
        key = pki.key("relay").display(),
        ca = pki.cert("ca").display(),
    )
}

/// The service's user agent (sipp UAS on 198.51.100.10:5080, media on 16000)
/// behind Kamailio, for `calls` calls.
pub fn start_service(ns: &NetNs, dir: &Path, name: &str, plan: Uas, calls: u32) -> Result<Peer> {
    service_sipp(ns, dir, name, &uas_scenario(plan), calls)
}

/// Where an SRTP-only service's media endpoint listens (its SDP's m= port):
/// a libsrtp endpoint of the test or demo in the callee namespace, since sipp
/// has no SRTP.
pub const SRTP_SERVICE_MEDIA_PORT: u16 = 16500;

/// The SRTP-only service, for `calls` calls: the user agent of
/// [`start_service`] that answers (180, 200) and waits for BYE, its SDP
/// answering RTP/SAVP with media on [`SRTP_SERVICE_MEDIA_PORT`] and an
/// `a=crypto` line of its own, returned with it: tag 1 and
/// `AEAD_AES_128_GCM`, the relay's first offered line (relay offers GCM
/// first), with a fresh key. SDES puts in each SDP the key its writer sends
/// with: the service's media endpoint protects with this key, and
/// unprotects with the relay's line of the same tag ([`received_offers`],
/// [`relay_srtp_offer`]).
pub fn start_srtp_service(
    ns: &NetNs,
    dir: &Path,
    name: &str,
    calls: u32,
) -> Result<(Peer, CryptoAttribute)> {
    let key = CryptoAttribute::generate(1, Suite::AeadAes128Gcm)?;
    let scenario = uas_scenario(Uas::Accept {
        hangup: Hangup::Awaits,
        hold: false,
        audio_ms: 0,
    })
    .replace(
        "m=audio [media_port] RTP/AVP 8 101\n",
        &format!("m=audio {SRTP_SERVICE_MEDIA_PORT} RTP/SAVP 8 101\n"),
    )
    .replace(
        "a=fmtp:101 0-15\n",
        &format!("a=fmtp:101 0-15\na=crypto:{}\n", key.to_sdp_value()),
    );
    Ok((service_sipp(ns, dir, name, &scenario, calls)?, key))
}

/// The SDPs of the INVITEs that the sipp peer `name` (started by [`sipp`] in
/// `dir`) has received so far, in order, as its `-trace_msg` log shows them:
/// for the service, the relay's offers with the relay's `a=crypto` lines.
pub fn received_offers(dir: &Path, name: &str) -> Vec<String> {
    let log = std::fs::read_to_string(dir.join(format!("{name}_messages.log"))).unwrap_or_default();
    // sipp starts each message of its log with a line of dashes and a
    // "UDP message received [n] bytes :" or "... sent ..." line.
    log.split("\n------")
        .filter(|m| m.contains(" message received "))
        .filter_map(|m| Some(&m[m.find("\nINVITE ")?..]))
        .filter_map(|invite| {
            let (_, body) = invite
                .split_once("\r\n\r\n")
                .or_else(|| invite.split_once("\n\n"))?;
            body.starts_with("v=0").then(|| body.trim_end().to_string())
        })
        .collect()
}

/// From the relay's offer `sdp` to the SRTP service: where the relay receives
/// the service's media, and the relay's `a=crypto` line that the service's
/// answer line `answer` picks (same tag and suite), whose key the relay
/// protects with toward the service.
pub fn relay_srtp_offer(
    sdp: &str,
    answer: &CryptoAttribute,
) -> Result<(std::net::SocketAddr, CryptoAttribute)> {
    let line = crate::sdp_crypto(sdp)
        .into_iter()
        .find(|l| l.tag == answer.tag)
        .with_context(|| format!("no a=crypto line with tag {} in\n{sdp}", answer.tag))?;
    if line.suite() != answer.suite() {
        bail!(
            "the relay's tag {} is {:?}, the service answered {:?}",
            line.tag,
            line.suite(),
            answer.suite()
        );
    }
    Ok((crate::sdp_media_endpoint(sdp), line))
}

/// The user agent behind Kamailio on 198.51.100.10:5080 running `scenario`
/// for `calls` calls.
fn service_sipp(ns: &NetNs, dir: &Path, name: &str, scenario: &str, calls: u32) -> Result<Peer> {
    let calls = calls.to_string();
    sipp(
        ns,
        dir,
        name,
        scenario,
        &[
            "-i",
            "198.51.100.10",
            "-p",
            "5080",
            "-mi",
            "198.51.100.10",
            "-mp",
            "16000",
            "-m",
            &calls,
        ],
    )
}

/// The PBX (sipp UAC on 192.0.2.10:5060, media on 20000) calling the relay at
/// 192.0.2.1:5060 over `transport` (sipp's `u1`, `t1`); `extra` sipp
/// arguments follow (one call unless they say `-m`).
pub fn start_pbx(
    ns: &NetNs,
    dir: &Path,
    name: &str,
    plan: Uac,
    transport: &str,
    extra: &[&str],
) -> Result<Peer> {
    let mut args = vec![
        "192.0.2.1:5060",
        "-i",
        "192.0.2.10",
        "-p",
        "5060",
        "-mi",
        "192.0.2.10",
        "-mp",
        "20000",
        "-t",
        transport,
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"-m") {
        args.extend(["-m", "1"]);
    }
    sipp(ns, dir, name, &uac_scenario(plan), &args)
}
