//! The benchmark's own XDP programs: `relay-gen` (traffic generator run with
//! BPF_PROG_TEST_RUN in live-frames mode) and `relay-sink` (counts and drops).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};

/// Frames per BPF_PROG_TEST_RUN call. Between two calls nothing is sent (the
/// kernel sets up and tears down a page pool per call; the thread was seen
/// blocked there for milliseconds), so calls must be long: this many frames
/// take 0.1-0.5 s.
pub const CHUNK: u32 = 1 << 20;
/// Frames the kernel builds and sends per batch (its maximum is 256).
pub const BATCH: u32 = 64;

/// `GEN_CONFIG` and `GEN_HDR`.
type GenMaps = (Array<MapData, [u32; 4]>, Array<MapData, [u8; 64]>);

/// The generator, loaded (not attached: it runs through BPF_PROG_TEST_RUN).
/// Its configuration may change while it runs.
pub struct Gen {
    ebpf: Ebpf,
    maps: Mutex<GenMaps>,
}

impl Gen {
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(relay_user::ebpf::gen_object()?).context("load relay-gen")?;
        let prog: &mut Xdp = ebpf
            .program_mut(relay_user::ebpf::GEN_PROGRAM)
            .context("no program relay_gen")?
            .try_into()?;
        prog.load().context("verify relay_gen")?;
        let config = Array::try_from(ebpf.take_map("GEN_CONFIG").context("no GEN_CONFIG")?)?;
        let hdr = Array::try_from(ebpf.take_map("GEN_HDR").context("no GEN_HDR")?)?;
        Ok(Self {
            ebpf,
            maps: Mutex::new((config, hdr)),
        })
    }

    /// Sets the header template (the first 42 bytes of `frame`: Ethernet,
    /// IPv4 without options, UDP), the flows (flow i, 0 <= i < `flows`, is
    /// sport `sport_base + 2i` -> dport `dport_base + 2i`) and the rate:
    /// `rate` frames per second, or every frame the test run offers.
    pub fn configure(
        &self,
        frame: &[u8],
        flows: u32,
        sport_base: u16,
        dport_base: u16,
        rate: Option<u32>,
    ) -> Result<()> {
        if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[14] != 0x45 {
            bail!("the template must start with Ethernet + IPv4 (no options) + UDP");
        }
        let last = |base: u16| u32::from(base) + 2 * (flows.max(1) - 1);
        if flows == 0 || last(sport_base) > 65_535 || last(dport_base) > 65_535 {
            bail!("{flows} flows do not fit the port space from {sport_base} / {dport_base}");
        }
        let mut hdr = [0u8; 64];
        hdr[..42].copy_from_slice(&frame[..42]);
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.1.set(0, hdr, 0)?;
        let interval = rate.map_or(0, |r| (1_000_000_000 / r.max(1)).max(1));
        maps.0.set(
            0,
            [
                flows,
                u32::from(sport_base),
                u32::from(dport_base),
                interval,
            ],
            0,
        )?;
        Ok(())
    }

    /// Frames sent so far (XDP_TX), summed over CPUs.
    pub fn sent(&self) -> Result<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("GEN_SENT").context("no GEN_SENT")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }

    /// Runs the program on `frame` as if it arrived on interface `ifindex`
    /// (of the calling thread's namespace), in chunks of [`CHUNK`] frames,
    /// until `stop` is set or `limit` has passed; what it sends leaves that
    /// interface. Returns the time it ran.
    pub fn run(
        &self,
        frame: &[u8],
        ifindex: u32,
        stop: &AtomicBool,
        limit: Duration,
    ) -> Result<Duration> {
        let prog: &Xdp = self
            .ebpf
            .program(relay_user::ebpf::GEN_PROGRAM)
            .context("no program relay_gen")?
            .try_into()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let started = Instant::now();
        // Bounded twice: by time, and by a call count no run reaches (10,000
        // calls of CHUNK frames take a quarter of an hour at 10 M frames/s).
        for _ in 0..10_000 {
            if stop.load(Ordering::Relaxed) || started.elapsed() > limit {
                break;
            }
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: CHUNK,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN (live frames) of relay_gen")?;
        }
        Ok(started.elapsed())
    }
}

/// The sink, attached to one interface; detached when dropped.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Attaches to `dev` of the calling thread's namespace, in driver mode.
    pub fn attach(dev: &str) -> Result<Self> {
        let mut ebpf = Ebpf::load(relay_user::ebpf::sink_object()?).context("load relay-sink")?;
        let prog: &mut Xdp = ebpf
            .program_mut(relay_user::ebpf::SINK_PROGRAM)
            .context("no program relay_sink")?
            .try_into()?;
        prog.load().context("verify relay_sink")?;
        prog.attach(dev, XdpMode::Driver)
            .with_context(|| format!("attach relay_sink to {dev}"))?;
        Ok(Self { ebpf })
    }

    /// (IPv4 UDP frames, other frames) received so far, summed over CPUs.
    pub fn counts(&self) -> Result<(u64, u64)> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("SINK_COUNT").context("no SINK_COUNT")?)?;
        let udp = m.get(&0, 0)?.iter().sum();
        let other = m.get(&1, 0)?.iter().sum();
        Ok((udp, other))
    }
}

/// Attaches the pass-only program to each of `devs` (calling thread's
/// namespace): veth delivers XDP_TX'ed and redirected frames only to a peer
/// with an XDP program. Detached when the returned object is dropped.
pub fn attach_pass(devs: &[&str]) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(relay_user::ebpf::pass_object()?).context("load relay-pass")?;
    let prog: &mut Xdp = ebpf
        .program_mut(relay_user::ebpf::PASS_PROGRAM)
        .context("no program relay_pass")?
        .try_into()?;
    prog.load()?;
    for dev in devs {
        prog.attach(dev, XdpMode::Driver)
            .with_context(|| format!("attach relay_pass to {dev}"))?;
    }
    Ok(ebpf)
}
