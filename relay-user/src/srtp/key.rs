//! Master keys: the secret that SDES carries. Kept in one type whose `Debug`
//! and `Display` never show the bytes and which wipes them when dropped, so a
//! key cannot reach a log by accident.

use zeroize::Zeroize;

use super::{Error, Suite};

/// The largest key || salt any suite uses (AES-256: 32 + 12; AES-CM: 16 + 14).
const MAX_MATERIAL: usize = 46;

/// A master key and master salt for one suite.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    suite: Suite,
    /// key || salt, then zeros.
    material: [u8; MAX_MATERIAL],
}

impl MasterKey {
    /// A key from its parts; their lengths must be the suite's.
    pub fn new(suite: Suite, key: &[u8], salt: &[u8]) -> Result<Self, Error> {
        if key.len() != suite.key_len() || salt.len() != suite.salt_len() {
            return Err(Error::BadKey);
        }
        let mut material = [0u8; MAX_MATERIAL];
        material[..key.len()].copy_from_slice(key);
        material[key.len()..key.len() + salt.len()].copy_from_slice(salt);
        Ok(Self { suite, material })
    }

    /// A key from key || salt, as SDES carries it.
    pub fn from_material(suite: Suite, material: &[u8]) -> Result<Self, Error> {
        if material.len() != suite.key_material_len() {
            return Err(Error::BadKey);
        }
        let (key, salt) = material.split_at(suite.key_len());
        Self::new(suite, key, salt)
    }

    /// A fresh random key from the operating system's CSPRNG (getrandom(2)).
    /// Each call draws new bytes: one per leg, per call, per direction.
    pub fn generate(suite: Suite) -> Result<Self, Error> {
        let mut material = [0u8; MAX_MATERIAL];
        getrandom::fill(&mut material[..suite.key_material_len()]).map_err(|_| Error::Crypto)?;
        Ok(Self { suite, material })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The master key bytes. Only the SRTP context and SDES encoding need
    /// them; never format them.
    pub fn key(&self) -> &[u8] {
        &self.material[..self.suite.key_len()]
    }

    /// The master salt bytes.
    pub fn salt(&self) -> &[u8] {
        &self.material[self.suite.key_len()..self.suite.key_material_len()]
    }

    /// key || salt, as SDES and libsrtp want them.
    pub fn material(&self) -> &[u8] {
        &self.material[..self.suite.key_material_len()]
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.material.zeroize();
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("suite", &self.suite)
            .field("material", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Display for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key <redacted>", self.suite)
    }
}
