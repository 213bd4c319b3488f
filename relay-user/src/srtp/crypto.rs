//! The three primitives SRTP needs, on aws-lc-rs: AES in counter mode, HMAC-SHA1
//! and AES-GCM. Key schedules are built once per session key and kept here,
//! so a packet costs no key setup.
//!
//! Why aws-lc-rs: it is maintained by AWS, its AES (AES-NI/VAES), GHASH
//! (PCLMULQDQ) and SHA-1 (SHA-NI/AVX2) are the assembly of BoringSSL/OpenSSL
//! lineage, and it exposes raw AES-CTR with a caller-chosen counter block
//! (`cipher::EncryptingKey::ctr` + `less_safe_encrypt`), which SRTP needs and
//! `ring` (already in the tree through rustls) does not offer. It builds here
//! with the system C compiler only (no cmake, no clang).

use aws_lc_rs::{aead, cipher, hmac};

use super::Error;

/// AES in counter mode with a 128-bit big-endian counter (RFC 3711 section
/// 4.1.1; SRTP packets never carry the low 16 bits past 2^16 blocks).
pub(crate) struct AesCtr(cipher::EncryptingKey);

impl AesCtr {
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        let alg = match key.len() {
            16 => &cipher::AES_128,
            32 => &cipher::AES_256,
            _ => return Err(Error::BadKey),
        };
        let key = cipher::UnboundCipherKey::new(alg, key).map_err(|_| Error::BadKey)?;
        cipher::EncryptingKey::ctr(key)
            .map(AesCtr)
            .map_err(|_| Error::Crypto)
    }

    /// XORs the keystream that starts at counter block `iv` into `data`.
    #[inline]
    pub(crate) fn apply(&self, iv: [u8; 16], data: &mut [u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let ctx = cipher::EncryptionContext::Iv128(iv.into());
        self.0
            .less_safe_encrypt(data, ctx)
            .map(|_| ())
            .map_err(|_| Error::Crypto)
    }
}

/// HMAC-SHA1 with the inner and outer pads already hashed (in `hmac::Key`).
pub(crate) struct HmacSha1(hmac::Key);

impl HmacSha1 {
    pub(crate) fn new(key: &[u8]) -> Self {
        HmacSha1(hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key))
    }

    /// HMAC over `data || extra` (SRTP appends the ROC without copying the
    /// packet).
    #[inline]
    pub(crate) fn tag(&self, data: &[u8], extra: &[u8]) -> [u8; 20] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(data);
        ctx.update(extra);
        let tag = ctx.sign();
        let mut out = [0u8; 20];
        // SHA-1 tags are 20 bytes; copy what there is either way.
        let t = tag.as_ref();
        let n = t.len().min(20);
        out[..n].copy_from_slice(&t[..n]);
        out
    }
}

/// AES-GCM with a 16-byte tag and caller-built 12-byte nonces (RFC 7714
/// section 8.1).
pub(crate) struct AesGcm(aead::LessSafeKey);

pub(crate) const GCM_TAG: usize = 16;

impl AesGcm {
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        let alg = match key.len() {
            16 => &aead::AES_128_GCM,
            32 => &aead::AES_256_GCM,
            _ => return Err(Error::BadKey),
        };
        let key = aead::UnboundKey::new(alg, key).map_err(|_| Error::BadKey)?;
        Ok(AesGcm(aead::LessSafeKey::new(key)))
    }

    /// Encrypts `data` in place; returns the tag.
    #[inline]
    pub(crate) fn seal(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; GCM_TAG], Error> {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                data,
            )
            .map_err(|_| Error::Crypto)?;
        let mut out = [0u8; GCM_TAG];
        let t = tag.as_ref();
        let n = t.len().min(GCM_TAG);
        out[..n].copy_from_slice(&t[..n]);
        Ok(out)
    }

    /// Checks and decrypts `ciphertext || tag` in place; the plaintext is
    /// the first `len - 16` bytes afterwards.
    #[inline]
    pub(crate) fn open(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        ciphertext_and_tag: &mut [u8],
    ) -> Result<(), Error> {
        self.0
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                ciphertext_and_tag,
            )
            .map(|_| ())
            .map_err(|_| Error::AuthFailed)
    }
}

/// Compares two tags in time that does not depend on where they differ.
#[inline]
pub(crate) fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the compiler from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}
