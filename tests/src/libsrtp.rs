//! A hand-written binding to libsrtp 2 (Debian's `libsrtp2-dev`), the
//! reference SRTP implementation: just what the interop tests and the SRTP
//! benchmark need (create a session for one suite and direction, protect
//! and unprotect RTP and RTCP).
//!
//! Debian builds libsrtp2 2.5 against NSS, which provides its AES-GCM, so
//! every suite relay speaks is there.

use std::{
    ffi::{c_int, c_uint, c_ulong, c_void},
    sync::Once,
};

use relay_user::srtp::{MasterKey, Suite};

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CryptoPolicy {
    cipher_type: u32,
    cipher_key_len: c_int,
    auth_type: u32,
    auth_key_len: c_int,
    auth_tag_len: c_int,
    sec_serv: c_int,
}

#[repr(C)]
struct Ssrc {
    kind: c_int,
    value: c_uint,
}

/// `srtp_policy_t` of libsrtp 2.5 (srtp2/srtp.h).
#[repr(C)]
struct Policy {
    ssrc: Ssrc,
    rtp: CryptoPolicy,
    rtcp: CryptoPolicy,
    key: *const u8,
    keys: *mut c_void,
    num_master_keys: c_ulong,
    deprecated_ekt: *mut c_void,
    window_size: c_ulong,
    allow_repeat_tx: c_int,
    enc_xtn_hdr: *mut c_int,
    enc_xtn_hdr_count: c_int,
    next: *mut Policy,
}

const SSRC_ANY_INBOUND: c_int = 2;
const SSRC_ANY_OUTBOUND: c_int = 3;
/// `sec_serv_auth`: authentication without confidentiality.
const SEC_SERV_AUTH: c_int = 2;

/// libsrtp status codes the tests look at.
pub const OK: c_int = 0;
pub const AUTH_FAIL: c_int = 7;
pub const REPLAY_FAIL: c_int = 9;
pub const REPLAY_OLD: c_int = 10;

#[link(name = "srtp2")]
unsafe extern "C" {
    fn srtp_init() -> c_int;
    fn srtp_create(session: *mut *mut c_void, policy: *const Policy) -> c_int;
    fn srtp_dealloc(session: *mut c_void) -> c_int;
    fn srtp_protect(ctx: *mut c_void, hdr: *mut c_void, len: *mut c_int) -> c_int;
    fn srtp_unprotect(ctx: *mut c_void, hdr: *mut c_void, len: *mut c_int) -> c_int;
    fn srtp_protect_rtcp(ctx: *mut c_void, hdr: *mut c_void, len: *mut c_int) -> c_int;
    fn srtp_unprotect_rtcp(ctx: *mut c_void, hdr: *mut c_void, len: *mut c_int) -> c_int;
    fn srtp_crypto_policy_set_rtp_default(p: *mut CryptoPolicy);
    fn srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(p: *mut CryptoPolicy);
    fn srtp_crypto_policy_set_aes_gcm_128_16_auth(p: *mut CryptoPolicy);
    fn srtp_crypto_policy_set_aes_gcm_256_16_auth(p: *mut CryptoPolicy);
}

/// Room libsrtp may write past a packet (SRTP_MAX_TRAILER_LEN, MKI included).
pub const MAX_TRAILER: usize = 16 + 128 + 4;

/// One libsrtp session: one master key, one direction, any SSRC.
pub struct LibSrtp {
    ctx: *mut c_void,
}

// SAFETY: a libsrtp session is plain memory owned by this value; libsrtp
// keeps no thread-local state for it.
unsafe impl Send for LibSrtp {}

impl LibSrtp {
    /// A session for `key`'s suite; `inbound` for unprotecting. Fails with
    /// libsrtp's status code (e.g. when the library lacks the suite).
    pub fn new(key: &MasterKey, inbound: bool) -> Result<Self, c_int> {
        Self::with_rtcp_encryption(key, inbound, true)
    }

    /// As [`Self::new`]; with `rtcp_encrypt` false, SRTCP is authenticated
    /// only (E = 0), which relay never sends but must accept.
    pub fn with_rtcp_encryption(
        key: &MasterKey,
        inbound: bool,
        rtcp_encrypt: bool,
    ) -> Result<Self, c_int> {
        static INIT: Once = Once::new();
        let mut init = OK;
        // SAFETY: srtp_init has no preconditions; Once runs it once.
        INIT.call_once(|| init = unsafe { srtp_init() });
        if init != OK {
            return Err(init);
        }
        let mut rtp = CryptoPolicy::default();
        let mut rtcp = CryptoPolicy::default();
        // SAFETY: the setters write the fields of the struct they are given.
        unsafe {
            match key.suite() {
                Suite::AesCm128HmacSha1_80 => {
                    srtp_crypto_policy_set_rtp_default(&mut rtp);
                    srtp_crypto_policy_set_rtp_default(&mut rtcp);
                }
                // SRTCP keeps the 80-bit tag (RFC 4568 section 6.2.2).
                Suite::AesCm128HmacSha1_32 => {
                    srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&mut rtp);
                    srtp_crypto_policy_set_rtp_default(&mut rtcp);
                }
                Suite::AeadAes128Gcm => {
                    srtp_crypto_policy_set_aes_gcm_128_16_auth(&mut rtp);
                    srtp_crypto_policy_set_aes_gcm_128_16_auth(&mut rtcp);
                }
                Suite::AeadAes256Gcm => {
                    srtp_crypto_policy_set_aes_gcm_256_16_auth(&mut rtp);
                    srtp_crypto_policy_set_aes_gcm_256_16_auth(&mut rtcp);
                }
            }
        }
        if !rtcp_encrypt {
            rtcp.sec_serv = SEC_SERV_AUTH;
        }
        let policy = Policy {
            ssrc: Ssrc {
                kind: if inbound {
                    SSRC_ANY_INBOUND
                } else {
                    SSRC_ANY_OUTBOUND
                },
                value: 0,
            },
            rtp,
            rtcp,
            key: key.material().as_ptr(),
            keys: std::ptr::null_mut(),
            num_master_keys: 0,
            deprecated_ekt: std::ptr::null_mut(),
            window_size: 128,
            allow_repeat_tx: 0,
            enc_xtn_hdr: std::ptr::null_mut(),
            enc_xtn_hdr_count: 0,
            next: std::ptr::null_mut(),
        };
        let mut ctx = std::ptr::null_mut();
        // SAFETY: policy and the key it points to live across the call;
        // libsrtp derives its session keys from them during srtp_create and
        // keeps no pointer to either.
        let status = unsafe { srtp_create(&mut ctx, &policy) };
        if status != OK || ctx.is_null() {
            return Err(status);
        }
        Ok(Self { ctx })
    }

    fn call(
        &mut self,
        f: unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_int) -> c_int,
        buf: &mut [u8],
        len: usize,
        protect: bool,
    ) -> Result<usize, c_int> {
        // libsrtp writes up to MAX_TRAILER bytes past the packet when it
        // protects and reads `len` bytes when it unprotects.
        let need = if protect { len + MAX_TRAILER } else { len };
        assert!(need <= buf.len(), "buffer too small for libsrtp");
        let mut n = c_int::try_from(len).map_err(|_| -1)?;
        // SAFETY: buf holds at least `need` bytes, which covers what libsrtp
        // reads and writes; ctx is a live session.
        let status = unsafe { f(self.ctx, buf.as_mut_ptr().cast(), &mut n) };
        if status != OK {
            return Err(status);
        }
        usize::try_from(n).map_err(|_| -1)
    }

    /// Protects `buf[..len]`; `buf` needs [`MAX_TRAILER`] bytes of room.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, c_int> {
        self.call(srtp_protect, buf, len, true)
    }

    pub fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, c_int> {
        self.call(srtp_unprotect, buf, len, false)
    }

    /// The SRTP packet of the RTP packet `plain`.
    pub fn protect_rtp_vec(&mut self, plain: &[u8]) -> Result<Vec<u8>, c_int> {
        let mut buf = vec![0u8; plain.len() + MAX_TRAILER];
        buf[..plain.len()].copy_from_slice(plain);
        let n = self.protect_rtp(&mut buf, plain.len())?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The RTP packet of the SRTP packet `packet`.
    pub fn unprotect_rtp_vec(&mut self, packet: &[u8]) -> Result<Vec<u8>, c_int> {
        let mut buf = packet.to_vec();
        let n = self.unprotect_rtp(&mut buf, packet.len())?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, c_int> {
        self.call(srtp_protect_rtcp, buf, len, true)
    }

    pub fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, c_int> {
        self.call(srtp_unprotect_rtcp, buf, len, false)
    }
}

impl Drop for LibSrtp {
    fn drop(&mut self) {
        // SAFETY: ctx came from srtp_create and is freed once.
        unsafe {
            srtp_dealloc(self.ctx);
        }
    }
}
