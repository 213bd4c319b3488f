//! relayctl: look at and steer a running relayd. Flows, drops and counters
//! fall back to the pinned kernel maps when relayd is down (kernel state
//! only, said on stderr). The rows, rates and tables are built in
//! `relay_user::ctl`; this file parses arguments and prints.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use relay_user::{
    config::DEFAULT_CONTROL_SOCKET,
    control::{Request, flows::FlowRef},
    ctl::{
        drops,
        flows::{self, Filter, FlowState, SortKey},
        human,
        source::{Source, kernel_only_note},
        table,
        terminal::{self, Key, RawInput},
    },
    dataplane::CountersView,
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

#[derive(clap::Args, Clone)]
struct FlowsOpts {
    /// Order of the rows; `flows` sorts by call, `watch` by packet rate.
    #[arg(long, value_enum)]
    sort: Option<SortKey>,
    /// Only this call's flows ("static" for rules without a call).
    #[arg(long)]
    call: Option<String>,
    /// Only flows whose peer, learned source or destination is this IP or IP:port.
    #[arg(long)]
    peer: Option<String>,
    #[arg(long, value_enum)]
    state: Option<FlowState>,
    /// Only flows that dropped packets.
    #[arg(long)]
    drops: bool,
    /// Every column, however wide the terminal.
    #[arg(long)]
    wide: bool,
}

#[derive(Subcommand)]
enum Command {
    /// One row per rule: call, leg, direction, endpoints, path, packets, rate, drops, age, idle.
    Flows {
        #[command(flatten)]
        opts: FlowsOpts,
        /// Seconds between the two samples packet rates come from (0: no rates).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Every rule (the `flows` table without rates; JSON: the rule views).
    Rules,
    /// Everything about one rule (id or relay endpoint), its kernel map entries included.
    Flow { id: String },
    /// Global drops by reason, with rates.
    Drops {
        /// Seconds between the two samples rates come from (0: no rates).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// A live view of flows and drops, refreshed; q or Ctrl-C quits.
    Watch {
        #[command(flatten)]
        opts: FlowsOpts,
        /// Seconds between refreshes (0.2 to 60).
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Stop after this many refreshes (0: until q).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
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
            // One line: the error and its causes, never a Debug dump.
            eprintln!("relayctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let src = Source {
        socket: args.socket.clone(),
        pin_path: args.pin_path.clone(),
    };
    match &args.command {
        Command::Flows { opts, interval } => flows_cmd(args, &src, opts, *interval)?,
        Command::Rules => {
            let reply = src.flows()?;
            note(&src, reply.kernel_only);
            if args.json {
                let views: Vec<_> = reply.flows.into_iter().map(|f| f.view).collect();
                print_json(&views)?;
            } else {
                print_flows_table(&reply.flows, reply.kernel_only, false);
            }
        }
        Command::Flow { id } => {
            let Some(which) = FlowRef::parse(id) else {
                bail!("{id:?} is neither a rule id nor a relay endpoint (IP:port)");
            };
            let detail = src.flow(&which)?;
            note(&src, detail.kernel_only);
            if args.json {
                print_json(&detail)?;
            } else {
                print_flow_detail(&detail);
            }
        }
        Command::Drops { interval } => {
            let (first, kernel_only) = src.counters()?;
            note(&src, kernel_only);
            let (earlier, later, dt) = match sleep_for(*interval)? {
                None => (None, first, 0.0),
                Some(d) => (Some(first), src.counters()?.0, d.as_secs_f64()),
            };
            if args.json {
                print_json(&later)?;
            } else {
                for l in table::render(
                    &drops::COLUMNS,
                    &drops::rows(earlier.as_ref(), &later, dt),
                    terminal::width(),
                ) {
                    println!("{l}");
                }
            }
        }
        Command::Watch {
            opts,
            interval,
            count,
        } => watch(&src, opts, *interval, *count)?,
        Command::Counters => {
            let (counters, kernel_only) = src.counters()?;
            note(&src, kernel_only);
            if args.json {
                print_json(&counters)?;
            } else {
                print_counters(&counters);
            }
        }
        Command::Version => print_json(&src.call(&Request::Version)?)?,
        Command::Calls => {
            let ids: Vec<String> = serde_json::from_value(src.call(&Request::Calls)?)?;
            let mut views = Vec::new();
            for id in ids {
                // A call may end between the two requests.
                if let Ok(v) = src.call(&Request::Query { call_id: id }) {
                    views.push(serde_json::from_value::<CallView>(v)?);
                }
            }
            if args.json {
                print_json(&views)?;
            } else {
                print_calls(&views);
            }
        }
        Command::Trunks => {
            let v = src.call(&Request::Sip)?;
            if args.json {
                print_json(&v)?;
            } else {
                match serde_json::from_value::<Option<SipStatus>>(v)? {
                    None => println!("SIP is not configured"),
                    Some(s) => print_trunks(&s),
                }
            }
        }
        Command::Call { call_id } => print_json(&src.call(&Request::Query {
            call_id: call_id.clone(),
        })?)?,
        Command::Rule(RuleCommand::Show { local }) => {
            print_json(&src.call(&Request::Rule { local: *local })?)?
        }
        Command::Rule(RuleCommand::Del { local }) => {
            let v = src.call(&Request::DelRule { local: *local })?;
            if args.json {
                print_json(&v)?;
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
                srtp: None,
            };
            let v = src.call(&Request::AddRule { rule })?;
            if args.json {
                print_json(&v)?;
            } else {
                let r: Rule = serde_json::from_value(v)?;
                println!("rule {} on {} installed", r.id, r.local);
            }
        }
    }
    Ok(())
}

/// Sleeps `seconds` (bounded to 60 s) between two samples; None for 0.
fn sleep_for(seconds: f64) -> Result<Option<Duration>> {
    if !(0.0..=60.0).contains(&seconds) {
        bail!("--interval must be between 0 and 60 seconds");
    }
    if seconds == 0.0 {
        return Ok(None);
    }
    let d = Duration::from_secs_f64(seconds);
    std::thread::sleep(d);
    Ok(Some(d))
}

fn note(src: &Source, kernel_only: bool) {
    if kernel_only {
        eprintln!("note: {}", kernel_only_note(&src.pin_path));
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v).context("printing")?);
    Ok(())
}

fn flows_cmd(args: &Args, src: &Source, opts: &FlowsOpts, interval: f64) -> Result<()> {
    let first = src.flows()?;
    note(src, first.kernel_only);
    if first.kernel_only && opts.call.is_some() {
        bail!("--call needs relayd: the pinned maps know no calls");
    }
    let reply = match sleep_for(interval)? {
        None => first,
        Some(_) => {
            let mut second = src.flows()?;
            flows::add_rates(&first, &mut second);
            second
        }
    };
    let mut reply = reply;
    let filter = filter_of(opts);
    reply.flows.retain(|f| filter.keeps(f));
    flows::sort(&mut reply.flows, opts.sort.unwrap_or(SortKey::Call));
    if args.json {
        print_json(&reply)?;
    } else {
        print_flows_table(&reply.flows, reply.kernel_only, opts.wide);
    }
    Ok(())
}

fn filter_of(opts: &FlowsOpts) -> Filter {
    Filter {
        call: opts.call.clone(),
        peer: opts.peer.clone(),
        state: opts.state,
        drops: opts.drops,
    }
}

fn print_flows_table(
    flows: &[relay_user::control::flows::FlowView],
    kernel_only: bool,
    wide: bool,
) {
    let rows: Vec<Vec<String>> = flows.iter().map(|f| flows::row(f, kernel_only)).collect();
    let width = if wide { None } else { terminal::width() };
    for l in table::render(&flows::COLUMNS, &rows, width) {
        println!("{l}");
    }
    if flows.is_empty() {
        println!("(no flows)");
    }
}

fn print_flow_detail(d: &relay_user::control::flows::FlowDetail) {
    let f = &d.flow;
    let r = &f.view.rule;
    let kv = |k: &str, v: String| println!("{k:<16} {v}");
    kv("rule", format!("{} on {}", r.id, r.local));
    match &f.call {
        Some(c) => {
            kv("call", c.call_id.clone());
            kv(
                "leg",
                format!("{} (tag {})", c.leg, c.tag.as_deref().unwrap_or("-")),
            );
            kv(
                "stream",
                format!("{} {} {}", c.stream, c.media, c.component),
            );
            kv("direction", format!("{} > {}", c.from_iface, c.to_iface));
        }
        None if d.kernel_only => kv("call", "(unknown: relayd is down)".into()),
        None => kv("call", "static".into()),
    }
    kv("policy", format!("{:?}", r.policy).to_lowercase());
    kv("source", flows::source_cell(f));
    if let Some(ssrc) = f.view.latched_ssrc {
        kv("latched ssrc", format!("{ssrc:#010x}"));
    }
    kv("out_src", r.out_src.to_string());
    kv("destination", r.dst.to_string());
    kv(
        "path",
        format!("{} (rule says {:?})", f.path.as_str(), r.path).to_lowercase(),
    );
    kv(
        "rate limit",
        if r.rate_pps == 0 {
            "none".into()
        } else {
            format!("{} pps, burst {}", r.rate_pps, r.burst)
        },
    );
    kv("age", human::duration_ms(f.age_ms));
    kv("idle", human::duration_ms(f.idle_ms()));
    for (name, stats) in [("xdp", &f.view.xdp), ("userspace", &f.view.userspace)] {
        if let Some(s) = stats {
            kv(
                name,
                format!(
                    "{} packets, {} bytes, {} passed up, drops {}",
                    s.packets,
                    s.bytes,
                    s.passed_up,
                    s.drops
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            );
        }
    }
    match &d.kernel {
        None => {
            println!("\nkernel maps: no entry (userspace mode, or the kernel refused the rule)")
        }
        Some(k) => {
            println!("\nkernel maps:");
            println!("  FLOWS key      {}", k.key_hex);
            let kr = &k.rule;
            println!(
                "  FLOWS value    id={} action={} policy={} peer={} out_src={} dst={} latch_until_ns={} rate_interval_ns={} rate_burst_ns={} ingress_ifindex={}",
                kr.id,
                kr.action,
                kr.policy,
                kr.peer,
                kr.out_src,
                kr.dst,
                kr.latch_until_ns,
                kr.rate_interval_ns,
                kr.rate_burst_ns,
                kr.ingress_ifindex
            );
            match &k.state {
                Some(s) => println!(
                    "  FLOW_STATE     locked={} source={} ssrc={:#010x} tat_ns={}",
                    s.locked, s.source, s.ssrc, s.tat_ns
                ),
                None => println!("  FLOW_STATE     (none)"),
            }
            println!("  FLOW_STATS     per CPU:");
            for (cpu, s) in k.stats_per_cpu.iter().enumerate() {
                println!(
                    "    cpu{cpu:<3} packets={} bytes={} passed_up={} last_seen_ns={} drops={}",
                    s.packets,
                    s.bytes,
                    s.passed_up,
                    s.last_seen_ns,
                    s.drops
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
    }
}

/// The live view: flows sorted by rate (or `--sort`), global drop rates on
/// top, redrawn every `interval`.
fn watch(src: &Source, opts: &FlowsOpts, interval: f64, count: u64) -> Result<()> {
    if !(0.2..=60.0).contains(&interval) {
        bail!("--interval must be between 0.2 and 60 seconds");
    }
    let period = Duration::from_secs_f64(interval);
    // Fail before taking over the screen, so the error stays readable.
    let mut prev = src.flows()?;
    let mut prev_counters = src.counters()?.0;
    let filter = filter_of(opts);
    let input = RawInput::new();
    let mut shown = 0u64;
    loop {
        if let Some(Key::Quit) = input.wait(period) {
            break;
        }
        let mut cur = src.flows()?;
        let counters = src.counters()?.0;
        flows::add_rates(&prev, &mut cur);
        let dt = cur.time_ns.saturating_sub(prev.time_ns) as f64 / 1e9;
        let mut lines = vec![format!(
            "relayctl watch  every {interval}s  {} flows{}  q quits",
            cur.flows.len(),
            if cur.kernel_only {
                "  (relayd down: kernel state only)"
            } else {
                ""
            }
        )];
        let drop_rates: Vec<String> = relay_common::DropReason::ALL
            .iter()
            .filter_map(|r| {
                let rate = drops::rate(Some(&prev_counters), &counters, *r, dt)?;
                (rate > 0.0).then(|| format!("{}={}/s", r.as_str(), human::rate(Some(rate))))
            })
            .collect();
        lines.push(format!(
            "drops: {}",
            if drop_rates.is_empty() {
                "none".to_string()
            } else {
                drop_rates.join("  ")
            }
        ));
        lines.push(String::new());
        let mut view = cur.clone();
        view.flows.retain(|f| filter.keeps(f));
        flows::sort(&mut view.flows, opts.sort.unwrap_or(SortKey::Pps));
        let rows: Vec<Vec<String>> = view
            .flows
            .iter()
            .map(|f| flows::row(f, view.kernel_only))
            .collect();
        let width = if opts.wide { None } else { terminal::width() };
        let room = terminal::height().saturating_sub(lines.len() + 1).max(2);
        let table = table::render(&flows::COLUMNS, &rows, width);
        let hidden = table.len().saturating_sub(room);
        lines.extend(table.into_iter().take(room));
        if hidden > 0 {
            lines.push(format!("... {hidden} more"));
        }
        terminal::paint(&lines);
        prev = cur;
        prev_counters = counters;
        shown += 1;
        if count > 0 && shown >= count {
            break;
        }
    }
    Ok(())
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
    println!("{:<20} {:<6} {:>6}  OPTIONS", "TRUNK", "STATE", "CALLS");
    for t in &s.trunks {
        println!(
            "{:<20} {:<6} {:>6}  {}",
            t.name,
            if t.up { "up" } else { "DOWN" },
            t.calls,
            match t.options_interval_s {
                Some(s) => format!("every {s}s"),
                None => "off (not pinged)".into(),
            }
        );
    }
    let st = &s.stats;
    println!(
        "\ncalls: {} started, {} answered, {} failed; dropped: {} from unknown sources, {} rate-limited, {} malformed; TLS handshake failures: {}",
        st.calls_started,
        st.calls_answered,
        st.calls_failed,
        st.unknown_source,
        st.rate_limited,
        st.malformed,
        s.transport.tls_handshake_failures
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
                println!("  {k:<22} {v:>14}");
            }
        }
    }
}
