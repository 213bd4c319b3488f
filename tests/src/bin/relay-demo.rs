//! `cargo xtask demo`: the relay's main job on embedded defaults.
//!
//! Builds four network namespaces (PBX, relay, cloud service, attacker),
//! starts relayd with XDP on its interfaces, a TLS-only voicemail service
//! (Kamailio with mutual TLS in front of a sipp user agent) and a PBX (sipp
//! playing G.711 audio), places calls through the relay, shows that their
//! media went through the kernel path, sprays unsolicited packets and shows
//! them dropped, and cleans everything up. Needs root.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use relay_tests::{
    sip_peers::{
        Hangup, Pki, Uac, Uas, relay_sip_config, start_kamailio_tls, start_pbx, start_service,
    },
    topology::{RelaydOpts, Topology},
};
use relay_user::{control::Request, dataplane::RuleView};

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
        "certificates (test CA), and the voicemail service: Kamailio, TLS only, client certificates required",
    );
    let pki = Pki::create(&dir.join("pki"))?;
    let _kamailio = start_kamailio_tls(&t.callee, &pki, "service", &dir)?;
    let calls = CALLS.to_string();
    // audio_ms > 0: the service plays audio back to the PBX.
    let mut service = start_service(
        &t.callee,
        &dir,
        "service",
        Uas::Accept {
            hangup: Hangup::Awaits,
            hold: false,
            audio_ms: 6000,
        },
        CALLS,
    )?;

    step(
        "relayd: XDP in driver mode on in0, out0, edge0; SIP on udp/tcp 192.0.2.1:5060 and tls 198.51.100.1:5061",
    );
    t.start_relayd_opts(&RelaydOpts {
        extra: relay_sip_config(&pki, 30),
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
    std::thread::sleep(Duration::from_secs(5));
    step("calls up: `relayctl calls`");
    print!("{}", relayctl(&t, &["calls"])?);
    step("their media rules: `relayctl rules` (PACKETS counted by the XDP program)");
    print!("{}", relayctl(&t, &["rules"])?);
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
        "    media packets forwarded so far: {xdp} in the kernel (XDP), {user} by the userspace forwarder"
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
    std::thread::sleep(Duration::from_millis(300));
    step("what the relay dropped, by reason: `relayctl counters`");
    print!("{}", relayctl(&t, &["counters"])?);

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
         {} packets forwarded in XDP, {} unsolicited packets dropped in the driver, {} spoofed packets dropped;\n    \
         every call ended, every rule and port released. Cleaning up.",
        counters["xdp"]["xdp_redirect"].as_u64().unwrap_or(0)
            + counters["xdp"]["xdp_tx"].as_u64().unwrap_or(0),
        counters["xdp"]["drop_no_flow"],
        counters["xdp"]["drop_bad_source"],
    );
    t.stop_relayd()?;
    Ok(())
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
