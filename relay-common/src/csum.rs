//! Incremental Internet checksum updates (RFC 1624), for the XDP rewrite.
//!
//! The relay rewrites addresses and ports of packets it forwards; recomputing
//! the UDP checksum over the payload would cost a loop over every byte, so the
//! old checksum is adjusted by the changed 16-bit words instead:
//!
//! ```text
//!     HC' = ~(~HC + ~m + m')        (RFC 1624, eqn. 3)
//! ```
//!
//! Written by hand because it must run inside the BPF program: no loops over
//! packet data, no allocation, no panics. Checked against full recomputation
//! by the tests below.

/// A checksum being updated. Values are the 16-bit big-endian words as read
/// from the packet (`u16::from_be_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct Incremental(u32);

impl Incremental {
    #[inline(always)]
    pub fn new(check: u16) -> Self {
        Self((!check) as u32)
    }

    /// Replaces one 16-bit word `old` by `new`.
    #[inline(always)]
    pub fn replace(&mut self, old: u16, new: u16) {
        self.0 += (!old) as u32 + new as u32;
    }

    /// Replaces two bytes (a port, network order).
    #[inline(always)]
    pub fn replace2(&mut self, old: [u8; 2], new: [u8; 2]) {
        self.replace(u16::from_be_bytes(old), u16::from_be_bytes(new));
    }

    /// Replaces an IPv4 address (network order bytes).
    #[inline(always)]
    pub fn replace4(&mut self, old: &[u8; 4], new: &[u8; 4]) {
        self.replace2([old[0], old[1]], [new[0], new[1]]);
        self.replace2([old[2], old[3]], [new[2], new[3]]);
    }

    /// Replaces an IPv6 address.
    #[inline(always)]
    pub fn replace16(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        self.replace2([old[0], old[1]], [new[0], new[1]]);
        self.replace2([old[2], old[3]], [new[2], new[3]]);
        self.replace2([old[4], old[5]], [new[4], new[5]]);
        self.replace2([old[6], old[7]], [new[6], new[7]]);
        self.replace2([old[8], old[9]], [new[8], new[9]]);
        self.replace2([old[10], old[11]], [new[10], new[11]]);
        self.replace2([old[12], old[13]], [new[12], new[13]]);
        self.replace2([old[14], old[15]], [new[14], new[15]]);
    }

    /// The updated checksum.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        let mut s = self.0;
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        !(s as u16)
    }

    /// The updated UDP checksum: a computed 0 is sent as 0xFFFF, because 0 on
    /// the wire means "no checksum" (RFC 768) and is illegal over IPv6.
    #[inline(always)]
    pub fn finish_udp(self) -> u16 {
        match self.finish() {
            0 => 0xffff,
            c => c,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use etherparse::{Ipv4Header, Ipv6Header, UdpHeader};
    use std::vec::Vec;

    fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn ipv4_header_and_udp_match_recomputation() {
        for (n, seed) in [(0usize, 0u8), (1, 3), (12, 9), (160, 200), (1371, 77)] {
            let data = payload(n, seed);
            let (src, dst) = ([192, 0, 2, 10], [192, 0, 2, 1]);
            let (nsrc, ndst) = ([198, 51, 100, 1], [198, 51, 100, 200]);
            let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, dst).unwrap();
            ip.set_payload_len(8 + n).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            let udp = UdpHeader::with_ipv4_checksum(4000, 30000, &ip, &data).unwrap();

            let mut hc = Incremental::new(ip.header_checksum);
            hc.replace4(&src, &nsrc);
            hc.replace4(&dst, &ndst);
            let mut uc = Incremental::new(udp.checksum);
            uc.replace4(&src, &nsrc);
            uc.replace4(&dst, &ndst);
            uc.replace2(4000u16.to_be_bytes(), 30002u16.to_be_bytes());
            uc.replace2(30000u16.to_be_bytes(), 5000u16.to_be_bytes());

            let mut ip2 = ip.clone();
            ip2.source = nsrc;
            ip2.destination = ndst;
            assert_eq!(hc.finish(), ip2.calc_header_checksum(), "ip header, n={n}");
            let udp2 = UdpHeader::with_ipv4_checksum(30002, 5000, &ip2, &data).unwrap();
            assert_eq!(uc.finish_udp(), udp2.checksum, "udp, n={n}");
        }
    }

    #[test]
    fn ipv6_udp_matches_recomputation() {
        for (n, seed) in [(0usize, 1u8), (12, 5), (172, 99), (1200, 4)] {
            let data = payload(n, seed);
            let src = [
                0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            let dst = [
                0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            ];
            let nsrc = [
                0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            ];
            let ndst = [
                0x20, 0x01, 0x0d, 0xb8, 0, 2, 0xab, 0xcd, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: (8 + n) as u16,
                next_header: etherparse::IpNumber::UDP,
                hop_limit: 64,
                source: src,
                destination: dst,
            };
            let udp = UdpHeader::with_ipv6_checksum(4000, 30000, &ip, &data).unwrap();
            let mut uc = Incremental::new(udp.checksum);
            uc.replace16(&src, &nsrc);
            uc.replace16(&dst, &ndst);
            uc.replace2(4000u16.to_be_bytes(), 31000u16.to_be_bytes());
            uc.replace2(30000u16.to_be_bytes(), 6000u16.to_be_bytes());
            let mut ip2 = ip.clone();
            ip2.source = nsrc;
            ip2.destination = ndst;
            let udp2 = UdpHeader::with_ipv6_checksum(31000, 6000, &ip2, &data).unwrap();
            assert_eq!(uc.finish_udp(), udp2.checksum, "n={n}");
        }
    }

    #[test]
    fn zero_result_is_sent_as_all_ones() {
        // A sum that folds to 0xFFFF complements to 0, which UDP must send as 0xFFFF.
        let mut c = Incremental::new(0xffff);
        c.replace(0x0000, 0x0000);
        assert_eq!(c.finish(), 0);
        assert_eq!(c.finish_udp(), 0xffff);
    }

    #[test]
    fn unchanged_words_keep_checksum() {
        let mut c = Incremental::new(0x1234);
        c.replace(0xabcd, 0xabcd);
        assert_eq!(c.finish(), 0x1234);
    }
}
