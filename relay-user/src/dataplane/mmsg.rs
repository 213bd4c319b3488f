//! Batched UDP receive and send (`recvmmsg(2)`, `sendmmsg(2)`) for the
//! userspace forwarder: one system call moves up to [`BATCH`] datagrams, which
//! is most of what the forwarder costs per packet besides the crypto.
//!
//! A [`Batch`] owns its buffers and headers; it lives in a thread-local of
//! the worker thread, so idle endpoints hold none. Each slot keeps
//! `TAG_ROOM` bytes free past the largest datagram it accepts, so SRTP can
//! append its tag in place, and control space for the `IP_PKTINFO` /
//! `IPV6_PKTINFO` message that says which device the datagram arrived on.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::RawFd,
};

use super::crypto::TAG_ROOM;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// Bytes per slot: the largest SRTP packet the crypto core takes (9216,
/// jumbo frames) plus the tag room. Larger datagrams arrive truncated and
/// are dropped as malformed.
pub const SLOT: usize = crate::srtp::MAX_PACKET + TAG_ROOM;

/// Control bytes per slot: room for one `in6_pktinfo` message (the larger
/// of the two) with its header, as `CMSG_SPACE` computes it.
const CONTROL: usize = 64;

/// Control buffers aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL]);

pub struct Batch {
    bufs: Vec<u8>,
    controls: Vec<Control>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs
        // for which all-zero bytes are a valid value.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_iov: libc::iovec = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Self {
            bufs: vec![0u8; BATCH * SLOT],
            controls: vec![Control([0; CONTROL]); BATCH],
            addrs: vec![zero_addr; BATCH],
            iovs: vec![zero_iov; BATCH],
            hdrs: vec![zero_hdr; BATCH],
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; returns how
    /// many (`WouldBlock` when none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            let name: *mut libc::sockaddr_storage = &mut self.addrs[i];
            let name_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            self.set_header(i, i, SLOT - TAG_ROOM, name, name_len);
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_control = self.controls[i].0.as_mut_ptr().cast();
            h.msg_controllen = CONTROL as _;
        }
        // SAFETY: every header points at its own address slot, control
        // buffer and iovec, which point into `bufs`; all live as long as
        // `self`, and the kernel writes at most iov_len bytes, msg_namelen
        // address bytes and msg_controllen control bytes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last [`Batch::recv`]: its sender (None for an
    /// unknown family or a truncated datagram) and length.
    pub fn received(&self, i: usize) -> (Option<SocketAddr>, usize) {
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return (None, 0);
        }
        (sockaddr_to(&self.addrs[i]), h.msg_len as usize)
    }

    /// The device datagram `i` of the last [`Batch::recv`] arrived on, when
    /// the socket asked for `IP_PKTINFO` / `IPV6_RECVPKTINFO`.
    pub fn ingress(&self, i: usize) -> Option<u32> {
        let h = &self.hdrs[i].msg_hdr;
        // SAFETY: the CMSG_* macros walk the control buffer of this header,
        // which the kernel filled (msg_controllen bytes, within CONTROL) and
        // which stays alive and unchanged while we read it; each payload is
        // read unaligned as the struct its level and type say it holds.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                        let info = data.cast::<libc::in_pktinfo>().read_unaligned();
                        return u32::try_from(info.ipi_ifindex).ok();
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                        return Some(info.ipi6_ifindex);
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    /// The whole slot of datagram `i` (the datagram, then room to grow).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * SLOT..(i + 1) * SLOT]
    }

    pub fn slot(&self, i: usize) -> &[u8] {
        &self.bufs[i * SLOT..(i + 1) * SLOT]
    }

    /// Sends the given (slot, length) datagrams to `dst` without blocking;
    /// returns how many left (the first ones; `WouldBlock` when none).
    pub fn send(
        &mut self,
        fd: RawFd,
        dst: SocketAddr,
        items: &[(usize, usize)],
    ) -> io::Result<usize> {
        let n = items.len().min(BATCH);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: as in `new`.
        let mut to: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let to_len = sockaddr_from(dst, &mut to);
        for (k, &(slot, len)) in items[..n].iter().enumerate() {
            self.set_header(k, slot, len.min(SLOT), &mut to, to_len);
        }
        // SAFETY: the first n headers point at `to` (alive until the call
        // returns) and at iovecs into `bufs`; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    /// Points header `k` (and iovec `k`) at `len` bytes of slot `slot` and
    /// at the address `name` of `name_len` bytes, with every field the
    /// kernel may have written on the last call reset. Both system calls
    /// need the same one-buffer, no-control-data header; they differ only
    /// in which slot, how long, and where the address lives.
    fn set_header(
        &mut self,
        k: usize,
        slot: usize,
        len: usize,
        name: *mut libc::sockaddr_storage,
        name_len: libc::socklen_t,
    ) {
        debug_assert!(slot < BATCH && len <= SLOT);
        self.iovs[k] = libc::iovec {
            // SAFETY: callers pass slot < BATCH, so slot * SLOT < bufs.len()
            // and the pointer stays inside the allocation; with len <= SLOT
            // the iovec ends inside it too.
            iov_base: unsafe { self.bufs.as_mut_ptr().add(slot * SLOT) }.cast(),
            iov_len: len,
        };
        let h = &mut self.hdrs[k];
        h.msg_hdr.msg_name = name.cast();
        h.msg_hdr.msg_namelen = name_len;
        h.msg_hdr.msg_iov = &mut self.iovs[k];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = std::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
        h.msg_len = 0;
    }
}

fn sockaddr_to(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn sockaddr_from(a: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr; we write a whole sockaddr_in.
            let sin =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["192.0.2.1:30000", "[2001:db8::1]:40000"] {
            let a: SocketAddr = a.parse().unwrap();
            // SAFETY: zeroed sockaddr_storage is valid.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            sockaddr_from(a, &mut ss);
            assert_eq!(sockaddr_to(&ss), Some(a));
        }
    }

    #[test]
    fn batch_moves_datagrams_both_ways() {
        use std::os::fd::AsRawFd;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut b = Batch::new();
        assert_eq!(
            b.recv(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for i in 0..40u8 {
            tx.send_to(&[i; 100], rx.local_addr().unwrap()).unwrap();
        }
        let n = b.recv(rx.as_raw_fd()).unwrap();
        assert_eq!(n, BATCH);
        for i in 0..n {
            let (from, len) = b.received(i);
            assert_eq!((from, len), (Some(tx.local_addr().unwrap()), 100));
            assert_eq!(b.slot(i)[..len], [i as u8; 100]);
        }
        assert_eq!(b.recv(rx.as_raw_fd()).unwrap(), 8);
        // Send three of them back, from slots 0, 2, 4, with new lengths.
        let items = [(0, 10), (2, 20), (4, 30)];
        let sent = b
            .send(rx.as_raw_fd(), tx.local_addr().unwrap(), &items)
            .unwrap();
        assert_eq!(sent, 3);
        let mut buf = [0u8; 200];
        for (slot, len) in items {
            let (n, from) = tx.recv_from(&mut buf).unwrap();
            assert_eq!((n, from), (len, rx.local_addr().unwrap()));
            assert_eq!(buf[..n], vec![32 + slot as u8; len][..]);
        }
    }
}
