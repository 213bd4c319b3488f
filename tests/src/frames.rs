//! Ethernet frames for the XDP program, built and checked with `etherparse`.
//!
//! Frames are built with etherparse (which computes lengths and checksums),
//! then bent where a test needs a broken header. Frames the program rewrote are
//! parsed with etherparse and their checksums recomputed by it, so a checksum
//! bug in the code under test cannot hide behind the same bug in the test.

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    EtherType, Ethernet2Header, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6Extensions,
    Ipv6Header, Ipv6RawExtHeader, LinkHeader, NetHeaders, PacketBuilder, PacketHeaders,
    SingleVlanHeader, TransportHeader, VlanHeader, VlanId,
};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
/// A 12-byte RTP fixed header.
pub const RTP_HLEN: usize = 12;

/// A UDP datagram in an Ethernet frame, described field by field.
#[derive(Clone, Debug)]
pub struct UdpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// One 802.1Q tag with this VLAN id.
    pub vlan: Option<u16>,
    /// Both addresses must be of one family.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 options, a multiple of 4 bytes (IHL = 5 + len / 4).
    pub ipv4_options: Vec<u8>,
    /// IPv4 "more fragments" flag.
    pub more_fragments: bool,
    /// IPv4 fragment offset in 8-byte units.
    pub fragment_offset: u16,
    /// IPv6: a hop-by-hop options header before UDP.
    pub hop_by_hop: bool,
    /// IPv4 only: false sends UDP checksum 0 ("none").
    pub udp_checksum: bool,
    pub payload: Vec<u8>,
}

impl UdpFrame {
    pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

    pub fn new(src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one address family");
        Self {
            src_mac: Self::SRC_MAC,
            dst_mac: Self::DST_MAC,
            vlan: None,
            src,
            dst,
            ttl: 64,
            ipv4_options: Vec::new(),
            more_fragments: false,
            fragment_offset: 0,
            hop_by_hop: false,
            udp_checksum: true,
            payload,
        }
    }

    /// Offset of the IP header.
    pub fn l3(&self) -> usize {
        ETH_HLEN + if self.vlan.is_some() { VLAN_HLEN } else { 0 }
    }

    /// Offset of the UDP header.
    pub fn l4(&self) -> usize {
        self.l3()
            + match self.src {
                SocketAddr::V4(_) => 20 + self.ipv4_options.len(),
                SocketAddr::V6(_) => IPV6_HLEN + if self.hop_by_hop { 8 } else { 0 },
            }
    }

    /// Offset of the UDP payload.
    pub fn payload_offset(&self) -> usize {
        self.l4() + UDP_HLEN
    }

    pub fn build(&self) -> Vec<u8> {
        let ip = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut h = Ipv4Header::new(0, self.ttl, IpNumber::UDP, src.octets(), dst.octets())
                    .expect("IPv4 header");
                h.options = Ipv4Options::try_from(&self.ipv4_options[..])
                    .expect("IPv4 options: up to 40 bytes, a multiple of 4");
                h.dont_fragment = false;
                h.more_fragments = self.more_fragments;
                h.fragment_offset = self.fragment_offset.try_into().expect("fragment offset");
                h.identification = 0x1234;
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let h = Ipv6Header {
                    hop_limit: self.ttl,
                    source: src.octets(),
                    destination: dst.octets(),
                    ..Default::default()
                };
                let exts = Ipv6Extensions {
                    hop_by_hop_options: self.hop_by_hop.then(|| {
                        // PadN filling the 6 option bytes of an 8-byte header.
                        Ipv6RawExtHeader::new_raw(IpNumber::UDP, &[1, 4, 0, 0, 0, 0])
                            .expect("hop-by-hop header")
                    }),
                    ..Default::default()
                };
                IpHeaders::Ipv6(h, exts)
            }
            _ => panic!("mixed address families"),
        };
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let builder = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id"))
                .ip(ip),
            None => eth.ip(ip),
        }
        .udp(self.src.port(), self.dst.port());
        let mut frame = Vec::with_capacity(builder.size(self.payload.len()));
        builder
            .write(&mut frame, &self.payload)
            .expect("write frame");
        assert_eq!(frame.len(), self.payload_offset() + self.payload.len());
        if !self.udp_checksum {
            assert!(self.src.is_ipv4(), "UDP checksum 0 is IPv4 only");
            let at = self.l4() + 6;
            frame[at..at + 2].copy_from_slice(&[0, 0]);
        }
        frame
    }
}

/// An RTP packet: version 2, payload type 0 (PCMU), `len` bytes in all
/// (at least the 12-byte header), the rest a recognisable pattern.
pub fn rtp(ssrc: u32, seq: u16, len: usize) -> Vec<u8> {
    assert!(len >= RTP_HLEN);
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&[0x80, 0x00]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..len - RTP_HLEN).map(|i| (i as u8).wrapping_mul(7).wrapping_add(0x55)));
    p
}

/// A 172-byte RTP packet, one 20 ms G.711 frame of payload type `pt`, whose
/// payload is made from its SSRC and sequence number: consecutive packets of
/// a stream differ, and so do two streams with different SSRCs, so a
/// receiver that compares it with what was sent knows it got that packet.
pub fn rtp_numbered(pt: u8, ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    let [s0, s1, s2, s3] = ssrc.to_be_bytes();
    let mark = (seq as u8) ^ ((seq >> 8) as u8) ^ s0 ^ s1 ^ s2 ^ s3;
    p.extend((0..160).map(|i| (i as u8) ^ mark));
    p
}

/// An RTCP receiver report with no report blocks (8 bytes: the sender's SSRC
/// sits at offset 4, not 8) followed by `extra` bytes of padding-like data so
/// it passes the 12-byte RTP minimum.
pub fn rtcp_rr(ssrc: u32, extra: usize) -> Vec<u8> {
    let mut p = vec![0x80, 201];
    let words = (8 + extra).div_ceil(4) - 1;
    p.extend_from_slice(&(words as u16).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.resize(8 + extra, 0xee);
    p
}

/// An ARP request who-has `target` from `sender`.
pub fn arp_request(src_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    Ethernet2Header {
        source: src_mac,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    }
    .write(&mut f)
    .expect("write");
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// A TCP SYN in an Ethernet frame.
pub fn tcp_syn(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(UdpFrame::SRC_MAC, UdpFrame::DST_MAC);
    let builder = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    }
    .tcp(src.port(), dst.port(), 1, 65535)
    .syn();
    let mut f = Vec::new();
    builder.write(&mut f, &[]).expect("write");
    f
}

/// The Internet checksum of `bytes` (for re-sealing input headers a test bent
/// on purpose; outputs are checked with etherparse instead).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum of the header at `l3` after a test
/// changed it (its IHL says how long it is, capped at the frame).
pub fn reseal_ipv4_header(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    let end = (l3 + ihl.max(20)).min(frame.len());
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = internet_checksum(&frame[l3..end]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// A UDP frame as etherparse reads it, with the checksums it recomputes.
#[derive(Clone, Debug)]
pub struct ParsedUdp {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub ipv4_options: Vec<u8>,
    /// IPv4: (in the header, recomputed).
    pub ip_checksum: Option<(u16, u16)>,
    /// (in the header, recomputed); the recomputed value is never 0.
    pub udp_checksum: (u16, u16),
    pub payload: Vec<u8>,
}

impl ParsedUdp {
    /// Asserts a valid IPv4 header checksum (IPv4) and a valid UDP checksum
    /// (or, over IPv4, none: 0).
    #[track_caller]
    pub fn assert_checksums_valid(&self) {
        if let Some((got, want)) = self.ip_checksum {
            assert_eq!(
                got, want,
                "IPv4 header checksum {got:#06x}, should be {want:#06x}"
            );
        }
        let (got, want) = self.udp_checksum;
        if self.src.is_ipv4() && got == 0 {
            return;
        }
        assert_eq!(got, want, "UDP checksum {got:#06x}, should be {want:#06x}");
    }
}

/// Parses an Ethernet frame carrying UDP over IPv4 or IPv6 (at most one VLAN
/// tag); panics with the reason if it is anything else or broken.
#[track_caller]
pub fn parse_udp(frame: &[u8]) -> ParsedUdp {
    let h = PacketHeaders::from_ethernet_slice(frame)
        .unwrap_or_else(|e| panic!("etherparse cannot read the frame: {e}: {frame:02x?}"));
    let Some(LinkHeader::Ethernet2(eth)) = h.link else {
        panic!("no Ethernet header")
    };
    let vlan = match h.vlan {
        None => None,
        Some(VlanHeader::Single(SingleVlanHeader { vlan_id, .. })) => Some(vlan_id.value()),
        Some(other) => panic!("unexpected VLAN headers {other:?}"),
    };
    let Some(TransportHeader::Udp(udp)) = h.transport else {
        panic!("not UDP: {:?}", h.transport)
    };
    let payload = h.payload.slice().to_vec();
    let (src, dst, ttl, ipv4_options, ip_checksum, want_udp) = match h.net {
        Some(NetHeaders::Ipv4(ip, _)) => (
            SocketAddr::new(IpAddr::from(ip.source), udp.source_port),
            SocketAddr::new(IpAddr::from(ip.destination), udp.destination_port),
            ip.time_to_live,
            ip.options.as_slice().to_vec(),
            Some((ip.header_checksum, ip.calc_header_checksum())),
            udp.calc_checksum_ipv4(&ip, &payload).expect("UDP length"),
        ),
        Some(NetHeaders::Ipv6(ip, _)) => (
            SocketAddr::new(IpAddr::from(ip.source), udp.source_port),
            SocketAddr::new(IpAddr::from(ip.destination), udp.destination_port),
            ip.hop_limit,
            Vec::new(),
            None,
            udp.calc_checksum_ipv6(&ip, &payload).expect("UDP length"),
        ),
        other => panic!("not IP: {other:?}"),
    };
    ParsedUdp {
        dst_mac: eth.destination,
        src_mac: eth.source,
        vlan,
        src,
        dst,
        ttl,
        ipv4_options,
        ip_checksum,
        udp_checksum: (udp.checksum, want_udp),
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        let mut f = UdpFrame::new(v4("192.0.2.10:4000"), v4("192.0.2.1:30000"), rtp(7, 1, 172));
        for (vlan, options) in [(None, vec![]), (Some(42), vec![1, 1, 1, 0])] {
            f.vlan = vlan;
            f.ipv4_options = options.clone();
            let frame = f.build();
            let p = parse_udp(&frame);
            p.assert_checksums_valid();
            assert_eq!((p.src, p.dst, p.vlan), (f.src, f.dst, vlan));
            assert_eq!(p.ipv4_options, options);
            assert_eq!(p.payload, f.payload);
            assert_eq!(&frame[f.payload_offset()..], &f.payload[..]);
        }
        let f6 = UdpFrame::new(
            "[2001:db8:1::10]:4000".parse().unwrap(),
            "[2001:db8:1::1]:30000".parse().unwrap(),
            rtp(7, 1, 20),
        );
        let p = parse_udp(&f6.build());
        p.assert_checksums_valid();
        assert_eq!(p.dst, f6.dst);
    }

    #[test]
    fn reseal_matches_etherparse() {
        let f = UdpFrame::new(v4("192.0.2.10:4000"), v4("192.0.2.1:30000"), rtp(7, 1, 12));
        let mut frame = f.build();
        let before = frame.clone();
        frame[f.l3() + 8] = 17; // TTL
        reseal_ipv4_header(&mut frame, f.l3());
        frame[f.l3() + 8] = 64;
        reseal_ipv4_header(&mut frame, f.l3());
        assert_eq!(frame, before);
    }

    #[test]
    fn rtcp_ssrc_at_offset_4() {
        let p = rtcp_rr(0xdead_beef, 8);
        assert_eq!(p.len(), 16);
        assert_eq!(&p[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 3);
    }
}
