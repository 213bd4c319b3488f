//! `cargo xtask demo`: the relay's main job on embedded defaults.
//!
//! Builds four network namespaces (PBX, relay, cloud service, attacker),
//! starts relayd with XDP on its interfaces, a TLS-only voicemail service
//! (Kamailio with mutual TLS in front of a sipp user agent) that requires
//! SRTP, and a PBX (sipp playing plain G.711 audio), places calls through the
//! relay, which transcrypts: the PBX's audio reaches the service encrypted
//! with the relay's key (this program, the service's media endpoint, decrypts
//! it with libsrtp and the key from the relay's INVITE), and the service's
//! SRTP (sent by this program with libsrtp, since sipp has no SRTP) reaches
//! the PBX decrypted. Then sprays unsolicited and forged packets and shows
//! them dropped, and cleans everything up. Needs root.

use std::{
    collections::HashMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use relay_tests::{
    frames::rtp_numbered,
    libsrtp::LibSrtp,
    sip_peers::{
        Hangup, Pki, SRTP_SERVICE_MEDIA_PORT, Uac, received_offers, relay_sip_config,
        relay_srtp_offer, start_kamailio_tls, start_pbx, start_srtp_service,
    },
    topology::{RelaydOpts, Topology},
};
use relay_user::{control::Request, dataplane::RuleView, srtp::sdes::CryptoAttribute};

const CALLS: u32 = 3;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    step(
        "network namespaces: PBX 192.0.2.10 | relay 192.0.2.1 / 198.51.100.1 / 203.0.113.1 | service 198.51.100.10 | attacker 203.0.113.66",
    );
    let mut t = Topology::new()?;
    let dir = t.dir().join("demo");
    std::fs::create_dir_all(&dir)?;

    step(
        "certificates (test CA), and the voicemail service: Kamailio, TLS only, client certificates required; SRTP only (SDES)",
    );
    let pki = Pki::create(&dir.join("pki"))?;
    let _kamailio = start_kamailio_tls(&t.callee, &pki, "service", &dir)?;
    let calls = CALLS.to_string();
    // The service answers RTP/SAVP with its own key and media on
    // SRTP_SERVICE_MEDIA_PORT, where this program's libsrtp endpoint listens.
    let (mut service, service_key) = start_srtp_service(&t.callee, &dir, "service", CALLS)?;
    let media = Topology::socket(
        &t.callee,
        &format!("198.51.100.10:{SRTP_SERVICE_MEDIA_PORT}"),
    )?;

    step(
        "relayd: XDP in driver mode on in0, out0, edge0; SIP on udp/tcp 192.0.2.1:5060 and tls 198.51.100.1:5061; the voicemail trunk has srtp = \"required\"",
    );
    let config = relay_sip_config(&pki, 30).replacen(
        "name = \"voicemail\"\n",
        "name = \"voicemail\"\nsrtp = \"required\"\n",
        1,
    );
    t.start_relayd_opts(&RelaydOpts {
        extra: config,
        ..RelaydOpts::default()
    })?;

    step(&format!(
        "the PBX places {CALLS} calls over UDP, each playing 6 s of G.711 audio"
    ));
    let mut pbx = start_pbx(
        &t.caller,
        &dir,
        "pbx",
        Uac::Call {
            hangup: Hangup::Sends,
            hold: false,
            audio_ms: 6000,
        },
        "u1",
        &["-r", "1", "-m", &calls, "-l", &calls],
    )?;
    // One call per second: wait for all of them.
    let deadline = Instant::now() + Duration::from_secs(15);
    while service_ports(&t)?.len() < CALLS as usize {
        if Instant::now() > deadline {
            bail!("the calls did not come up:\n{}", pbx.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    step("calls up: `relayctl calls`");
    print!("{}", relayctl(&t, &["calls"])?);

    step(
        "the service sends 2 s of SRTP per call (libsrtp, its own key) and receives the PBX's audio",
    );
    let (sent, received, decrypted) = service_media(&t, &dir, &media, &service_key)?;
    println!(
        "    service: sent {sent} SRTP packets; received {received} packets from the relay, {decrypted} of them \
         SRTP that libsrtp decrypted with the relay's offered key into the PBX's G.711"
    );
    if received == 0 || decrypted != received {
        bail!(
            "the service could not decrypt the PBX's audio with the relay's key ({decrypted}/{received})"
        );
    }
    step(
        "the media flows: `relayctl flows` (every flow has an SRTP end: XDP checks it and passes it up, the forwarder transcrypts)",
    );
    print!("{}", relayctl(&t, &["flows"])?);
    let views: Vec<RuleView> = serde_json::from_value(t.call(&Request::Rules)?)?;
    let xdp: u64 = views
        .iter()
        .map(|v| v.xdp.as_ref().map_or(0, |x| x.packets))
        .sum();
    let user: u64 = views
        .iter()
        .map(|v| v.userspace.as_ref().map_or(0, |x| x.packets))
        .sum();
    println!(
        "    media packets so far: {xdp} checked by the XDP program, {user} transcrypted by the userspace forwarder"
    );

    step("an attacker sprays the inside media port range and spoofs the PBX's address");
    let sprayer = Topology::socket(&t.attacker, "203.0.113.66:6000")?;
    let mut rtp = vec![0x80u8, 0, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    rtp.extend([0u8; 160]);
    for port in 30000..30200u16 {
        sprayer.send_to(&rtp, ("192.0.2.1", port))?;
    }
    let spoof = Topology::spoofing_socket(&t.attacker, "192.0.2.10:20010")?;
    for port in (30000..30010u16).step_by(2) {
        for _ in 0..10 {
            spoof.send_to(&rtp, ("192.0.2.1", port))?;
        }
    }
    step(
        "and forges SRTP toward the relay's outside ports with the service's exact media address and port, from the edge interface",
    );
    let forger = Topology::spoofing_socket(
        &t.attacker,
        &format!("198.51.100.10:{SRTP_SERVICE_MEDIA_PORT}"),
    )?;
    let mut forged = rtp.clone();
    forged.extend([0x5a; 16]);
    for port in service_ports(&t)? {
        for _ in 0..10 {
            forger.send_to(&forged, ("198.51.100.1", port))?;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    step("what the relay dropped, by reason: `relayctl counters`");
    print!("{}", relayctl(&t, &["counters"])?);

    step(
        "per flow: `relayctl flows` (src = spoofed or forged: wrong address, port or interface; each rule only takes packets from the device its relay address lives on)",
    );
    print!("{}", relayctl(&t, &["flows"])?);

    step("waiting for the PBX to hang up");
    let status = pbx.wait(Duration::from_secs(60))?;
    if !status.success() {
        bail!("the PBX's calls failed ({status}):\n{}", pbx.log());
    }
    service.wait(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = t.call(&Request::Version)?;
        if v["calls"] == 0 && v["rules"] == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("relayd still holds calls or rules: {v}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let counters = t.call(&Request::Counters)?;
    step("done");
    println!(
        "    {CALLS} calls from the PBX (UDP) to the TLS-only service, media anchored on the relay;\n    \
         {} packets forwarded in XDP, {} transcrypted by the userspace forwarder (plain <-> SRTP, both directions);\n    \
         {} unsolicited packets dropped in the driver, {} spoofed or forged packets dropped as bad sources, {} SRTP packets failed authentication;\n    \
         every call ended, every rule and port released. Cleaning up.",
        counters["xdp"]["xdp_redirect"].as_u64().unwrap_or(0)
            + counters["xdp"]["xdp_tx"].as_u64().unwrap_or(0),
        counters["userspace"]["forwarded"],
        counters["xdp"]["drop_no_flow"],
        counters["xdp"]["drop_bad_source"].as_u64().unwrap_or(0)
            + counters["userspace"]["drop_bad_source"]
                .as_u64()
                .unwrap_or(0),
        counters["userspace"]["drop_srtp_auth"],
    );
    t.stop_relayd()?;
    Ok(())
}

/// The relay's outside endpoints that receive from the service, one per call.
fn service_ports(t: &Topology) -> Result<Vec<u16>> {
    let views: Vec<RuleView> = serde_json::from_value(t.call(&Request::Rules)?)?;
    Ok(views
        .iter()
        .filter(|v| v.rule.local.ip().to_string() == "198.51.100.1" && v.rule.local.port() % 2 == 0)
        .map(|v| v.rule.local.port())
        .collect())
}

/// The service's media endpoint: 100 SRTP packets (2 s of 20 ms G.711
/// frames) to each call's relay port, and whatever the relay sends it
/// meanwhile, counted as decrypted when libsrtp unprotects it with the key
/// the relay offered in that call's INVITE (read back from the service's
/// sipp log) and it is one of the PBX's G.711 packets.
fn service_media(
    t: &Topology,
    dir: &std::path::Path,
    media: &std::net::UdpSocket,
    key: &CryptoAttribute,
) -> Result<(u32, u32, u32)> {
    let ports = service_ports(t)?;
    if ports.len() != CALLS as usize {
        bail!("expected {CALLS} service-side rules, found {ports:?}");
    }
    let mut tx = LibSrtp::new(&key.key, false).map_err(|e| anyhow::anyhow!("libsrtp: {e}"))?;
    // Per call, the relay endpoint the PBX's audio comes from and the
    // relay's key for it.
    let mut rx = HashMap::new();
    for offer in received_offers(dir, "service") {
        let (relay, line) = relay_srtp_offer(&offer, key)?;
        let ctx = LibSrtp::new(&line.key, true).map_err(|e| anyhow::anyhow!("libsrtp: {e}"))?;
        rx.insert(relay, ctx);
    }
    media.set_nonblocking(true)?;
    let (mut sent, mut received, mut decrypted) = (0u32, 0u32, 0u32);
    let mut buf = vec![0u8; 2048];
    for seq in 0..100u16 {
        for (i, port) in ports.iter().enumerate() {
            let p = tx
                .protect_rtp_vec(&rtp_numbered(8, 0x5e41_0000 + i as u32, seq))
                .map_err(|e| anyhow::anyhow!("libsrtp: {e}"))?;
            media.send_to(&p, ("198.51.100.1", *port))?;
            sent += 1;
        }
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            match media.recv_from(&mut buf) {
                Ok((n, from)) => {
                    received += 1;
                    // The RTP packets of sipp's g711a.pcap are 252 bytes
                    // (30 ms frames of PCMA).
                    let plain = rx
                        .get_mut(&from)
                        .and_then(|ctx| ctx.unprotect_rtp_vec(&buf[..n]).ok());
                    if plain.is_some_and(|p| p.len() == 252 && p[1] & 0x7f == 8) {
                        decrypted += 1;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    media.set_nonblocking(false)?;
    Ok((sent, received, decrypted))
}

fn relayctl(t: &Topology, args: &[&str]) -> Result<String> {
    let out = t.relayctl(args).context("relayctl")?;
    if !out.status.success() {
        bail!(
            "relayctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
