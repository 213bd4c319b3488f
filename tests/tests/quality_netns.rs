//! Per-flow RTP quality end to end: a real 50 packet/s G.711-shaped RTP
//! stream (20 ms, 160-sample timestamps at 8000 Hz) from the caller's
//! namespace through a relayd rule to the callee, with `tc netem` on the
//! caller's interface introducing loss and delay jitter before the relay.
//! The figures relayd reports (control socket `rule`, `relayctl rules`) are
//! checked against what the callee saw and against what netem was told.
//!
//! Where the kernel has no sch_netem (this project's development VMs are
//! built without it) the sender applies netem's model itself, drawing the
//! same loss and delay per packet; the checks are the same.
//!
//! netem settings, chosen so the expectation is known: `loss 10%` (random,
//! independent) and `delay 20ms 5ms` (uniform on 15..25 ms, netem's default
//! without a distribution table). The spread (10 ms) is below the 20 ms
//! packet interval, so netem does not reorder: out-of-order must be 0. For
//! independent uniform delays of width a, D = the difference of two is
//! triangular on [−a, a] and E|D| = a/3, so RFC 3550's J (a running mean of
//! |D|) hovers around 3.33 ms; its 1/16 smoothing leaves a spread of about
//! 0.4 ms on a single reading, which averaging readings taken 0.5 s apart
//! (25 packets, longer than J's memory) narrows to about 0.1 ms.
//!
//! Tolerances, and why:
//! - lost: exactly the packets the caller sent that the callee did not get
//!   (netem drops before the relay, nothing else drops): a wrong count fails.
//! - loss %: within ±5 points of netem's 10 %. With 500 packets the number
//!   lost is Binomial(500, 0.1), standard deviation 1.3 points: ±5 points is
//!   3.7 standard deviations (a false failure about once in 5000 runs).
//! - jitter: the mean reading within 2.5..4.5 ms of the 3.33 ms expected
//!   (−25 % for sampling, +35 % for the sender's own timer jitter and the
//!   scheduling of a shared 2-core machine, which only add delay variation);
//!   and the final reading within 0.6 ms of the RFC 3550 jitter the test
//!   computes itself, in floating point, from the callee's kernel receive
//!   timestamps (SO_TIMESTAMPNS) of the same packets. An error in units
//!   (ms vs timestamp units: × 8) or in the smoothing (no /16: × 16) or a
//!   halved/doubled conversion lands far outside both.
//! - silent: false while the stream runs, true 2.5 s after it stopped.

use std::{
    io::IoSliceMut,
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, setsockopt, sockopt};
use relay_tests::topology::Topology;
use relay_user::{control::Request, dataplane::RuleView};

const PACKETS: u16 = 500;
const INTERVAL: Duration = Duration::from_millis(20);
const SAMPLES_PER_PACKET: u32 = 160;
const CLOCK_RATE: f64 = 8000.0;
const SSRC: u32 = 0x5151_0001;
const FIRST_SEQ: u16 = 65_400; // wraps during the stream
const LOCAL: &str = "192.0.2.1:30000";

const NETEM_LOSS_PCT: f64 = 10.0;
const NETEM_DELAY_MS: u32 = 20;
const NETEM_JITTER_MS: u32 = 5;

fn rtp(seq: u16, ts: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5u8, 160)); // PCMU silence
    p
}

fn rule_view(t: &Topology) -> RuleView {
    let v = t
        .call(&Request::Rule {
            local: LOCAL.parse().unwrap(),
        })
        .expect("rule request");
    serde_json::from_value(v).expect("rule view")
}

/// xorshift64*, seeded from the clock: every run draws new losses and delays
/// (the expectations are statistical, see the module documentation).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self(nanos | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
    }
}

/// One packet as the callee's kernel received it.
struct Arrival {
    seq: u16,
    ts: u32,
    /// SO_TIMESTAMPNS (CLOCK_REALTIME; only differences are used), ns.
    at_ns: i128,
}

/// Receives until `PACKETS` arrived or nothing came for 1 s.
fn receive(rx: &UdpSocket) -> Vec<Arrival> {
    setsockopt(rx, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < usize::from(PACKETS) && Instant::now() < deadline {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let Ok(msg) =
            recvmsg::<SockaddrIn>(rx.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        else {
            break; // timed out: the stream is over
        };
        let len = msg.bytes;
        let at_ns = msg
            .cmsgs()
            .expect("control messages")
            .find_map(|c| match c {
                ControlMessageOwned::ScmTimestampns(t) => {
                    Some(i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
                }
                _ => None,
            })
            .expect("a receive timestamp");
        assert!(len >= 12, "short packet");
        out.push(Arrival {
            seq: u16::from_be_bytes([buf[2], buf[3]]),
            ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            at_ns,
        });
    }
    out
}

/// RFC 3550 A.8 literally, in floating point, in ms.
fn reference_jitter_ms(arrivals: &[Arrival]) -> f64 {
    let mut j = 0.0;
    let mut prev: Option<f64> = None;
    for a in arrivals {
        let transit = a.at_ns as f64 * CLOCK_RATE / 1e9 - f64::from(a.ts);
        if let Some(p) = prev {
            j += ((transit - p).abs() - j) / 16.0;
        }
        prev = Some(transit);
    }
    j * 1000.0 / CLOCK_RATE
}

fn scenario(mode: &str) {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd(mode).expect("relayd");
    t.relayctl_ok(&[
        "rule",
        "add",
        "--local",
        LOCAL,
        "--peer",
        "192.0.2.10:4000",
        "--out-src",
        "198.51.100.1:40000",
        "--dst",
        "198.51.100.10:5000",
        "--clock-rate",
        "8000",
    ]);
    assert_eq!(rule_view(&t).quality, None, "no RTP yet, no figures");
    // netem would also delay and drop the caller's ARP; a permanent entry
    // keeps neighbour resolution out of the figures.
    let relay_mac = t.relay.link("in0").expect("in0");
    t.caller
        .ip(&[
            "neigh",
            "replace",
            "192.0.2.1",
            "lladdr",
            &relay_tests::netns::format_mac(&relay_mac.mac),
            "nud",
            "permanent",
            "dev",
            "eth0",
        ])
        .expect("static neighbour");
    let netem = t.caller.exec(
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "netem",
            "loss",
            &format!("{NETEM_LOSS_PCT}%"),
            "delay",
            &format!("{NETEM_DELAY_MS}ms"),
            &format!("{NETEM_JITTER_MS}ms"),
        ],
    );
    // Kernels built without sch_netem (CONFIG_NET_SCH_NETEM, as on the
    // development VMs) get netem's model applied by the sender instead: the
    // same independent 10 % loss and uniform 15..25 ms delay per packet.
    let impair_in_sender = match &netem {
        Ok(_) => false,
        Err(e) if format!("{e:#}").contains("qdisc kind is unknown") => {
            eprintln!("[{mode}] no sch_netem in this kernel: the sender applies netem's model");
            true
        }
        Err(e) => panic!("tc netem: {e:#}"),
    };

    let tx = Topology::socket(&t.caller, "192.0.2.10:4000").unwrap();
    let rx = Topology::socket(&t.callee, "198.51.100.10:5000").unwrap();
    let receiver = thread::spawn(move || receive(&rx));

    // Reads the relay's figures every 0.5 s while the stream runs.
    let done = Arc::new(AtomicBool::new(false));
    let socket = t.control_socket();
    let sampler = {
        let done = done.clone();
        thread::spawn(move || {
            let mut samples = Vec::new();
            let local = LOCAL.parse().unwrap();
            // Let J settle first (its memory is ~16 packets).
            thread::sleep(Duration::from_millis(1500));
            while !done.load(Ordering::Relaxed) && samples.len() < 100 {
                let view = relay_user::control::Client::connect(&socket)
                    .and_then(|mut c| c.call(&Request::Rule { local }))
                    .ok()
                    .and_then(|v| serde_json::from_value::<RuleView>(v).ok());
                if let Some(q) = view.and_then(|v| v.quality) {
                    samples.push(q);
                }
                thread::sleep(Duration::from_millis(500));
            }
            samples
        })
    };

    // Paced on absolute deadlines so the sender's timer errors do not add up.
    let mut rng = Rng::seeded();
    let start = Instant::now();
    for i in 0..PACKETS {
        let mut due = start + INTERVAL * u32::from(i);
        if impair_in_sender {
            if rng.below(1000) < (NETEM_LOSS_PCT * 10.0) as u64 {
                continue;
            }
            let spread_us = u64::from(2 * NETEM_JITTER_MS) * 1000;
            let delay_us =
                u64::from(NETEM_DELAY_MS - NETEM_JITTER_MS) * 1000 + rng.below(spread_us);
            due += Duration::from_micros(delay_us);
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let seq = FIRST_SEQ.wrapping_add(i);
        let ts = 1_000u32.wrapping_add(SAMPLES_PER_PACKET * u32::from(i));
        tx.send_to(&rtp(seq, ts), LOCAL).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let arrivals = receiver.join().expect("receiver");
    let samples = sampler.join().expect("sampler");
    let view = rule_view(&t);
    let q = view.quality.clone().unwrap_or_else(|| {
        panic!(
            "no quality figures: {view:#?}\nrelayd log:\n{}",
            t.relayd_log()
        )
    });
    let delivered = arrivals.len() as u64;
    let reordered = arrivals
        .windows(2)
        .filter(|w| w[1].seq.wrapping_sub(w[0].seq) > 0x8000)
        .count() as u64;
    let reference = reference_jitter_ms(&arrivals);
    let mean_jitter = samples.iter().filter_map(|s| s.jitter_ms).sum::<f64>()
        / samples
            .iter()
            .filter(|s| s.jitter_ms.is_some())
            .count()
            .max(1) as f64;
    let expected_jitter = f64::from(2 * NETEM_JITTER_MS) / 3.0;
    eprintln!(
        "[{mode}] sent {PACKETS}, delivered {delivered}, relay: {q:?}\n\
         [{mode}] loss {:.2} % (netem {NETEM_LOSS_PCT} %), jitter final {:?} ms, mean of {} \
         readings {mean_jitter:.3} ms, callee's reference {reference:.3} ms, expected \
         {expected_jitter:.3} ms",
        q.loss_pct,
        q.jitter_ms,
        samples.len()
    );

    // The sequence figures are exact.
    assert_eq!(q.ssrc, SSRC);
    assert_eq!(q.ssrc_changes, 0);
    assert_eq!(q.clock_rate, 8000);
    assert_eq!(
        q.measured_by,
        if mode == "xdp" { "xdp" } else { "userspace" }
    );
    let last_delivered = arrivals
        .iter()
        .map(|a| a.seq)
        .max_by_key(|s| s.wrapping_sub(FIRST_SEQ));
    let first_delivered = arrivals
        .iter()
        .map(|a| a.seq)
        .min_by_key(|s| s.wrapping_sub(FIRST_SEQ));
    let (Some(first), Some(last)) = (first_delivered, last_delivered) else {
        panic!("nothing delivered");
    };
    let span = u64::from(last.wrapping_sub(first)) + 1;
    assert_eq!(q.expected, span, "expected = highest − first + 1");
    assert_eq!(q.received, delivered, "the relay saw what the callee got");
    assert_eq!(q.lost, (span - delivered) as i64, "lost");
    assert_eq!(q.out_of_order, reordered, "out of order");
    assert_eq!(reordered, 0, "netem was set up not to reorder");
    // The sequence wrapped once (65400 + 499 > 65535).
    assert_eq!(q.highest_seq, 65_536 + u64::from(last), "extended highest");

    // Against netem.
    assert!(
        (q.loss_pct - NETEM_LOSS_PCT).abs() <= 5.0,
        "loss {:.2} % vs netem's {NETEM_LOSS_PCT} %",
        q.loss_pct
    );
    assert!(samples.len() >= 10, "only {} readings", samples.len());
    assert!(
        samples.iter().all(|s| !s.silent),
        "silent while the stream ran"
    );
    assert!(
        (2.5..=4.5).contains(&mean_jitter),
        "mean jitter {mean_jitter:.3} ms, netem's {expected_jitter:.3} ms expected"
    );
    let final_jitter = q.jitter_ms.expect("a clock rate gives jitter");
    assert!(
        (final_jitter - reference).abs() <= 0.6,
        "relay's jitter {final_jitter:.3} ms vs the callee's own computation {reference:.3} ms"
    );

    // The table shows loss and jitter.
    let table = t.relayctl_ok(&["rules"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("LOSS%") && header.contains("JITTER"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.contains(LOCAL))
        .unwrap_or_else(|| panic!("no row for {LOCAL}:\n{table}"));
    assert!(
        row.contains(&format!("{:.1}", q.loss_pct)) && row.contains("ms"),
        "{row}"
    );

    // Silence is flagged once the flow has been quiet for 2 s.
    thread::sleep(Duration::from_millis(2500));
    let q = rule_view(&t).quality.expect("figures stay");
    assert!(q.silent, "not flagged silent: {q:?}");
    let json: serde_json::Value =
        serde_json::from_str(&t.relayctl_ok(&["--json", "rules"])).unwrap();
    assert_eq!(json[0]["quality"]["silent"], true, "{json:#}");

    // With relayd down, relayctl reads the kernel's figures from the pinned
    // state (XDP mode only: the forwarder's die with relayd).
    if mode == "xdp" {
        t.stop_relayd().expect("stop relayd");
        let json: serde_json::Value =
            serde_json::from_str(&t.relayctl_ok(&["--json", "rules"])).unwrap();
        assert_eq!(json[0]["quality"]["received"], delivered, "{json:#}");
        assert_eq!(json[0]["quality"]["measured_by"], "xdp", "{json:#}");
    }
}

#[test]
fn quality_under_netem_xdp() {
    scenario("xdp");
}

#[test]
fn quality_under_netem_userspace() {
    scenario("userspace");
}

/// FlowRule and FlowState grew with the quality figures. Maps pinned by an
/// older relayd (88-byte rules) must be refused with a message that says
/// what to do, not with a verifier log.
#[test]
fn maps_pinned_with_the_old_layout_are_refused_clearly() {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    std::fs::create_dir_all(t.pin_path()).expect("pin directory");
    let flows = t.pin_path().join("FLOWS");
    relay_tests::netns::run_command(std::process::Command::new("bpftool").args([
        "map",
        "create",
        &flows.to_string_lossy(),
        "type",
        "hash",
        "key",
        "20",
        "value",
        "88",
        "entries",
        "16",
        "name",
        "FLOWS",
    ]))
    .expect("bpftool map create");
    let err = t
        .start_relayd("xdp")
        .expect_err("relayd must refuse maps of another layout");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("another layout") && msg.contains("FLOWS values are 88 bytes"),
        "{msg}"
    );
}
