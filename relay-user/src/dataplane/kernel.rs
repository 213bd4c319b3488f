//! Loading the XDP program, pinning its maps, attaching it to the relay's
//! interfaces and detaching it again.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{DevMapHash, HashMap, MapData, RingBuf},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use relay_common::{AddrKey, PortRange, maps as names};
use tracing::{info, warn};

use super::maps::FlowMaps;
use crate::{
    config::{AttachMode, Interface},
    ebpf, rule,
};

/// The loaded program, its attachments and its maps.
pub struct Kernel {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId)>,
    pub maps: FlowMaps,
    events: Option<RingBuf<MapData>>,
}

impl Kernel {
    /// Loads the program with its maps pinned under `pin_path` (reusing maps a
    /// previous relayd left there, so rules survive a restart), fills the
    /// address and egress maps from the configuration, and attaches to every
    /// interface.
    pub fn start(
        pin_path: &Path,
        max_flows: u32,
        interfaces: &[Interface],
        attach: AttachMode,
    ) -> Result<Self> {
        ensure_bpffs(pin_path)?;
        check_pinned_layout(pin_path)?;
        let object = ebpf::relay_object()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_path)
            .map_max_entries(names::FLOWS, max_flows)
            .map_max_entries(names::FLOW_STATE, max_flows)
            .map_max_entries(names::FLOW_STATS, max_flows)
            .load(object)
            .with_context(|| {
                format!(
                    "loading the XDP object (maps pinned at {}; if an older relayd left maps of \
                     another size or layout there, remove that directory)",
                    pin_path.display()
                )
            })?;

        let mut addrs: HashMap<MapData, AddrKey, PortRange> = HashMap::try_from(
            ebpf.take_map(names::RELAY_ADDRS)
                .ok_or_else(|| anyhow!("RELAY_ADDRS missing"))?,
        )?;
        let mut egress: DevMapHash<MapData> = DevMapHash::try_from(
            ebpf.take_map(names::EGRESS)
                .ok_or_else(|| anyhow!("EGRESS missing"))?,
        )?;
        // These two describe the configuration: start them afresh.
        for key in addrs.keys().filter_map(Result::ok).collect::<Vec<_>>() {
            addrs.remove(&key)?;
        }
        for key in egress.keys().filter_map(Result::ok).collect::<Vec<_>>() {
            egress.remove(key)?;
        }
        for iface in interfaces {
            let key = AddrKey {
                addr: rule::addr_of(iface.address),
            };
            let range = PortRange {
                min: iface.port_min,
                max: iface.port_max,
            };
            addrs.insert(key, range, 0)?;
            let ifindex = ifindex(&iface.device)?;
            enable_forwarding(&iface.device, iface.address)?;
            egress
                .insert(ifindex, ifindex, None, 0)
                .with_context(|| format!("adding {} to the egress devmap", iface.device))?;
        }

        let events = RingBuf::try_from(
            ebpf.take_map(names::EVENTS)
                .ok_or_else(|| anyhow!("EVENTS missing"))?,
        )?;
        let mut maps = FlowMaps::take(&mut ebpf)?;
        // Fallback marks belong to the previous relayd's forwarder.
        for word in 0..names::USER_PORT_WORDS {
            maps.user_ports.set(word, 0, 0)?;
        }

        let program: &mut Xdp = ebpf
            .program_mut(ebpf::RELAY_PROGRAM)
            .ok_or_else(|| anyhow!("program {} missing", ebpf::RELAY_PROGRAM))?
            .try_into()?;
        program
            .load()
            .context("the kernel refused the XDP program")?;
        let mut links = Vec::new();
        for iface in interfaces {
            let link = attach_one(program, &iface.device, attach)?;
            links.push((iface.device.clone(), link));
        }
        Ok(Self {
            ebpf,
            links,
            maps,
            events: Some(events),
        })
    }

    /// The latch event ring buffer, for one reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Detaches from every interface; the pinned maps (and rules) stay.
    pub fn detach(mut self) {
        if let Some(program) = self.ebpf.program_mut(ebpf::RELAY_PROGRAM) {
            let program: Result<&mut Xdp, _> = program.try_into();
            if let Ok(program) = program {
                for (device, link) in self.links.drain(..) {
                    match program.detach(link) {
                        Ok(()) => info!(device, "XDP detached"),
                        Err(e) => warn!(device, error = %e, "XDP detach failed"),
                    }
                }
            }
        }
    }
}

/// aya reuses a pinned map whatever its layout, and the verifier then
/// refuses the program with an obscure message. Maps left by a relayd whose
/// rule, state or statistics layout differs (before per-flow quality,
/// FlowRule was 88 bytes and FlowState 32; before the SRTP drop reasons,
/// FlowStats was 80 and COUNTERS had 11 slots) are reported here in plain
/// words instead.
fn check_pinned_layout(pin_path: &Path) -> Result<()> {
    use relay_common::{COUNTERS, FlowRule, FlowState, FlowStats};
    let counters = pin_path.join(names::COUNTERS);
    if counters.exists() {
        let found = MapData::from_pin(&counters)
            .and_then(|m| m.info())
            .map(|i| i.max_entries() as usize)
            .with_context(|| format!("reading the pinned map {}", counters.display()))?;
        if found != COUNTERS {
            bail!(
                "the maps pinned at {} were left by a relayd with another layout ({} has {found} \
                 counters, this relayd's has {COUNTERS}): stop that relayd and remove the \
                 directory; call rules come back with the next offer/answer, static rules must \
                 be added again",
                pin_path.display(),
                names::COUNTERS
            );
        }
    }
    for (name, want) in [
        (names::FLOWS, size_of::<FlowRule>()),
        (names::FLOW_STATE, size_of::<FlowState>()),
        (names::FLOW_STATS, size_of::<FlowStats>()),
    ] {
        let path = pin_path.join(name);
        if !path.exists() {
            continue;
        }
        let found = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map(|i| i.value_size() as usize)
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        if found != want {
            bail!(
                "the maps pinned at {} were left by a relayd with another layout ({name} values \
                 are {found} bytes, this relayd's are {want}): stop that relayd and remove the \
                 directory; call rules come back with the next offer/answer, static rules must \
                 be added again",
                pin_path.display()
            );
        }
    }
    Ok(())
}

fn attach_one(program: &mut Xdp, device: &str, mode: AttachMode) -> Result<XdpLinkId> {
    match mode {
        AttachMode::Driver => program_attach(program, device, XdpMode::Driver),
        AttachMode::Generic => program_attach(program, device, XdpMode::Skb),
        AttachMode::Auto => program_attach(program, device, XdpMode::Driver).or_else(|e| {
            warn!(device, error = %format!("{e:#}"), "driver-mode XDP failed; falling back to generic mode (slower)");
            program_attach(program, device, XdpMode::Skb)
        }),
    }
}

fn program_attach(program: &mut Xdp, device: &str, mode: XdpMode) -> Result<XdpLinkId> {
    let link = program
        .attach(device, mode)
        .with_context(|| format!("attaching XDP to {device} in {mode:?} mode"))?;
    info!(device, ?mode, "XDP attached");
    Ok(link)
}

/// `bpf_fib_lookup` from XDP answers FWD_DISABLED unless the ingress device
/// forwards, so the relay's media interfaces must. The kernel may then route
/// other traffic between them: docs/deployment.md says how to firewall that.
fn enable_forwarding(device: &str, address: std::net::IpAddr) -> Result<()> {
    let family = if address.is_ipv4() { "ipv4" } else { "ipv6" };
    let path = format!("/proc/sys/net/{family}/conf/{device}/forwarding");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1").with_context(|| format!("enabling forwarding: {path}"))?;
    info!(
        device,
        family, "enabled forwarding on the interface (needed by bpf_fib_lookup)"
    );
    Ok(())
}

pub fn ifindex(device: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(device).with_context(|| format!("no network device {device:?}"))
}

/// Makes sure `pin_path` lies on a mounted bpffs, mounting /sys/fs/bpf when
/// nothing is mounted there yet, and creates the directory.
fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    let root = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(root) && !is_bpffs(root) {
        info!("mounting bpffs at /sys/fs/bpf");
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
    }
    std::fs::create_dir_all(pin_path)
        .with_context(|| format!("creating pin directory {}", pin_path.display()))?;
    if !is_bpffs(pin_path) {
        bail!("{} is not on a bpf filesystem", pin_path.display());
    }
    Ok(())
}
