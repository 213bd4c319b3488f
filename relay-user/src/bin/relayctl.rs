//! relayctl: look at and steer a running relayd. `rules` and `counters` fall
//! back to the pinned kernel maps when relayd is down (kernel state only).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use relay_common::DropReason;
use relay_user::{
    config::DEFAULT_CONTROL_SOCKET,
    control::{Client, ClientError, Request},
    dataplane::{CountersView, RuleView, maps::FlowMaps, views_from_maps},
    media::CallView,
    rule::{Path, Policy, Rule},
    sip::server::SipStatus,
};

#[derive(Parser)]
#[command(version, about = "inspect and steer relayd")]
struct Args {
    /// relayd's control socket.
    #[arg(long, global = true, default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// Where the kernel maps are pinned (read when relayd is down).
    #[arg(long, global = true, default_value = "/sys/fs/bpf/relay")]
    pin_path: PathBuf,
    /// Print JSON (the control socket's schema, docs/control-api.md).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every rule with its counters.
    #[command(alias = "flows")]
    Rules,
    /// Add, show or delete one rule.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Global counters: drops by reason, forwarding paths.
    Counters,
    /// Calls of the media core, one row each.
    Calls,
    /// One call: legs, streams, relay and peer endpoints.
    Call { call_id: String },
    /// SIP trunks: up or down (OPTIONS keep-alive), active calls; SIP counters.
    Trunks,
    /// relayd's version, uptime and data-plane mode.
    Version,
}

#[derive(Subcommand)]
enum RuleCommand {
    /// Install (or replace) a static rule.
    Add {
        /// Relay endpoint that receives, e.g. 192.0.2.1:30000.
        #[arg(long)]
        local: SocketAddr,
        /// Relay endpoint forwarded packets leave from.
        #[arg(long)]
        out_src: SocketAddr,
        /// Where forwarded packets go.
        #[arg(long)]
        dst: SocketAddr,
        /// Declared peer (required for strict and restricted).
        #[arg(long)]
        peer: Option<SocketAddr>,
        #[arg(long, value_enum, default_value = "strict")]
        policy: Policy,
        #[arg(long, value_enum, default_value = "forward")]
        path: Path,
        /// Latch policy: window for learning the source, ms.
        #[arg(long, default_value_t = 10_000)]
        latch_window_ms: u64,
        /// Packets per second (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Burst above the rate, packets.
        #[arg(long, default_value_t = 0)]
        burst: u32,
        /// RTP clock rate in Hz for the jitter figure (8000 for G.711,
        /// 48000 for Opus, 90000 for video); 0 = no jitter.
        #[arg(long, default_value_t = 0)]
        clock_rate: u32,
    },
    /// Show one rule.
    Show { local: SocketAddr },
    /// Delete the rule on a relay endpoint.
    Del { local: SocketAddr },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relayctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    match &args.command {
        Command::Rules => {
            let (views, note) = match call(args, &Request::Rules) {
                Ok(v) => (serde_json::from_value::<Vec<RuleView>>(v)?, None),
                Err(ClientError::NotRunning(_)) => {
                    let maps = FlowMaps::open_pinned(&args.pin_path)?;
                    (views_from_maps(&maps), Some(down_note(args)))
                }
                Err(e) => return Err(e.into()),
            };
            print_note(&note);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print_rules(&views);
            }
        }
        Command::Counters => {
            let (counters, note) = match call(args, &Request::Counters) {
                Ok(v) => (serde_json::from_value::<CountersView>(v)?, None),
                Err(ClientError::NotRunning(_)) => {
                    let maps = FlowMaps::open_pinned(&args.pin_path)?;
                    (
                        CountersView::from_pinned(maps.counters()),
                        Some(down_note(args)),
                    )
                }
                Err(e) => return Err(e.into()),
            };
            print_note(&note);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&counters)?);
            } else {
                print_counters(&counters);
            }
        }
        Command::Version => print_value(args, call(args, &Request::Version)?)?,
        Command::Calls => {
            let ids: Vec<String> = serde_json::from_value(call(args, &Request::Calls)?)?;
            let mut views = Vec::new();
            for id in ids {
                // A call may end between the two requests.
                if let Ok(v) = call(args, &Request::Query { call_id: id }) {
                    views.push(serde_json::from_value::<CallView>(v)?);
                }
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print_calls(&views);
            }
        }
        Command::Trunks => {
            let v = call(args, &Request::Sip)?;
            if args.json {
                print_value(args, v)?;
            } else {
                match serde_json::from_value::<Option<SipStatus>>(v)? {
                    None => println!("SIP is not configured"),
                    Some(s) => print_trunks(&s),
                }
            }
        }
        Command::Call { call_id } => print_value(
            args,
            call(
                args,
                &Request::Query {
                    call_id: call_id.clone(),
                },
            )?,
        )?,
        Command::Rule(RuleCommand::Show { local }) => {
            print_value(args, call(args, &Request::Rule { local: *local })?)?
        }
        Command::Rule(RuleCommand::Del { local }) => {
            let v = call(args, &Request::DelRule { local: *local })?;
            if args.json {
                print_value(args, v)?;
            } else {
                println!("deleted rule on {local}");
            }
        }
        Command::Rule(RuleCommand::Add {
            local,
            out_src,
            dst,
            peer,
            policy,
            path,
            latch_window_ms,
            rate,
            burst,
            clock_rate,
        }) => {
            let rule = Rule {
                id: 0,
                local: *local,
                policy: *policy,
                peer: *peer,
                latch_window_ms: *latch_window_ms,
                out_src: *out_src,
                dst: *dst,
                path: *path,
                rate_pps: *rate,
                burst: *burst,
                clock_rate: *clock_rate,
            };
            let v = call(args, &Request::AddRule { rule })?;
            if args.json {
                print_value(args, v)?;
            } else {
                let r: Rule = serde_json::from_value(v)?;
                println!("rule {} on {} installed", r.id, r.local);
            }
        }
    }
    Ok(())
}

fn call(args: &Args, request: &Request) -> Result<serde_json::Value, ClientError> {
    Client::connect(&args.socket)?.call(request)
}

fn down_note(args: &Args) -> String {
    format!(
        "relayd is not running: kernel state only, read from the maps pinned at {}",
        args.pin_path.display()
    )
}

fn print_note(note: &Option<String>) {
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
}

fn print_value(args: &Args, v: serde_json::Value) -> Result<()> {
    let _ = args;
    println!("{}", serde_json::to_string_pretty(&v).context("printing")?);
    Ok(())
}

fn print_rules(views: &[RuleView]) {
    println!(
        "{:>5}  {:<22} {:<10} {:<22} {:<22} {:<9} {:>10} {:>12} {:>9} {:>8} {:>6} {:>7}",
        "ID",
        "LOCAL",
        "POLICY",
        "SOURCE",
        "DESTINATION",
        "PATH",
        "PACKETS",
        "BYTES",
        "DROPS",
        "IDLE",
        "LOSS%",
        "JITTER"
    );
    for v in views {
        let r = &v.rule;
        let source = match (v.latched_source, r.peer) {
            (Some(s), _) => format!("{s}*"),
            (None, Some(p)) if r.policy == Policy::Restricted => format!("{}:?", p.ip()),
            (None, Some(p)) => p.to_string(),
            (None, None) => "(learning)".into(),
        };
        let bytes: u64 = [&v.xdp, &v.userspace]
            .into_iter()
            .flatten()
            .map(|s| s.bytes)
            .sum();
        let drops: u64 = DropReason::ALL.iter().map(|d| v.drops(*d)).sum();
        let idle = [&v.xdp, &v.userspace]
            .into_iter()
            .flatten()
            .filter_map(|s| s.idle_ms)
            .min()
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let q = v.quality.as_ref();
        // A silent flow is flagged where its idle time is shown.
        let idle = match q {
            Some(q) if q.silent => format!("{idle}!"),
            _ => idle,
        };
        let loss = q.map_or("-".to_string(), |q| format!("{:.1}", q.loss_pct));
        let jitter = q
            .and_then(|q| q.jitter_ms)
            .map_or("-".to_string(), |ms| format!("{ms:.1}ms"));
        println!(
            "{:>5}  {:<22} {:<10} {:<22} {:<22} {:<9} {:>10} {:>12} {:>9} {:>8} {:>6} {:>7}",
            r.id,
            r.local.to_string(),
            format!("{:?}", r.policy).to_lowercase(),
            source,
            r.dst.to_string(),
            format!("{:?}", r.path).to_lowercase(),
            v.packets(),
            bytes,
            drops,
            idle,
            loss,
            jitter
        );
    }
    if views.is_empty() {
        println!("(no rules)");
    }
}

fn print_calls(calls: &[CallView]) {
    println!(
        "{:<36} {:<8} {:>7}  {:<22} {:<22} {:<10}",
        "CALL", "STATE", "STREAMS", "LEG A (RELAY)", "LEG B (RELAY)", "DIRECTION"
    );
    for c in calls {
        let relay = |leg: usize| {
            c.legs
                .get(leg)
                .and_then(|l| l.streams.first())
                .map_or("-".to_string(), |s| s.relay_rtp.to_string())
        };
        let direction = c
            .legs
            .iter()
            .filter_map(|l| l.streams.first())
            .map(|s| {
                if s.hold {
                    "hold".to_string()
                } else {
                    s.direction.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let state = match (c.blocked, c.answered) {
            (true, _) => "blocked",
            (false, true) => "up",
            (false, false) => "offered",
        };
        println!(
            "{:<36} {:<8} {:>7}  {:<22} {:<22} {:<10}",
            c.call_id,
            state,
            c.legs.first().map_or(0, |l| l.streams.len()),
            relay(0),
            relay(1),
            direction
        );
    }
    if calls.is_empty() {
        println!("(no calls)");
    }
}

fn print_trunks(s: &SipStatus) {
    println!("{:<20} {:<6} {:>6}", "TRUNK", "STATE", "CALLS");
    for t in &s.trunks {
        println!(
            "{:<20} {:<6} {:>6}",
            t.name,
            if t.up { "up" } else { "DOWN" },
            t.calls
        );
    }
    let st = &s.stats;
    println!(
        "\ncalls: {} started, {} answered, {} failed; dropped: {} from unknown sources, {} rate-limited, {} malformed",
        st.calls_started,
        st.calls_answered,
        st.calls_failed,
        st.unknown_source,
        st.rate_limited,
        st.malformed
    );
}

fn print_counters(c: &CountersView) {
    if let Some(mode) = &c.mode {
        println!("data plane: {mode}");
    }
    for (title, map) in [("xdp", &c.xdp), ("userspace", &c.userspace)] {
        if let Some(map) = map {
            println!("{title}:");
            for (k, v) in map {
                println!("  {k:<20} {v:>14}");
            }
        }
    }
}
