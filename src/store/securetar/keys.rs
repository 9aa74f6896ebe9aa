//! The backup password and the keys SecureTar derives from it: the iterated SHA-256 key and IV of
//! v1/v2, and the Argon2id root key and BLAKE2b subkeys of v3. Each key is derived once per backup
//! and cached. Nothing here reads or decrypts data, and no key or password is ever logged.

use std::fmt;

use aws_lc_rs::digest;
use blake2::Blake2bMac;
use blake2::digest::Mac as _;
use blake2::digest::consts::U32;
use zeroize::Zeroizing;

use super::{ARGON2_M_KIB, ARGON2_P, ARGON2_T, PERSONAL, SALT, SecureTarError};
use crate::secret::Secret;

/// The backup password with the keys derived from it, cached so that each is derived once per
/// backup (every inner archive of one backup shares the Argon2 salt).
pub struct Keys {
    password: Secret,
    legacy: Option<Zeroizing<[u8; 16]>>,
    root: Option<([u8; SALT], Zeroizing<[u8; 32]>)>,
    /// How many times the Argon2 root key was derived (tests check it is once per backup).
    derivations: u32,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    pub fn new(password: Secret) -> Self {
        Keys {
            password,
            legacy: None,
            root: None,
            derivations: 0,
        }
    }

    pub fn argon2_derivations(&self) -> u32 {
        self.derivations
    }

    /// The v1/v2 AES key: SHA-256 applied 100 times to the password, first 16 bytes.
    pub(super) fn legacy_key(&mut self) -> Zeroizing<[u8; 16]> {
        if let Some(k) = &self.legacy {
            return k.clone();
        }
        let digest = sha256_100(self.password.expose().as_bytes());
        let mut key = Zeroizing::new([0u8; 16]);
        key.copy_from_slice(&digest[..16]);
        self.legacy = Some(key.clone());
        key
    }

    pub(super) fn root_key(
        &mut self,
        salt: &[u8; SALT],
    ) -> Result<Zeroizing<[u8; 32]>, SecureTarError> {
        if let Some((cached_salt, key)) = &self.root
            && cached_salt == salt
        {
            return Ok(key.clone());
        }
        let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
            .map_err(|_| SecureTarError::BadHeader("Argon2 parameters"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(self.password.expose().as_bytes(), salt, key.as_mut())
            .map_err(|_| SecureTarError::BadHeader("Argon2 salt"))?;
        self.derivations += 1;
        self.root = Some((*salt, key.clone()));
        Ok(key)
    }
}

pub(super) fn sha256_100(first: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, first).as_ref());
    for _ in 1..100 {
        let d = digest::digest(&digest::SHA256, &out);
        out.copy_from_slice(d.as_ref());
    }
    out
}

pub(super) fn derive_iv(key: &[u8; 16], salt: &[u8]) -> [u8; 16] {
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(key);
    seed.extend_from_slice(salt);
    let d = sha256_100(&seed);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&d[..16]);
    iv
}

pub(super) fn blake2b_keyed(
    root: &[u8; 32],
    salt: &[u8],
) -> Result<Zeroizing<[u8; 32]>, SecureTarError> {
    let mac = Blake2bMac::<U32>::new_with_salt_and_personal(Some(root), salt, PERSONAL)
        .map_err(|_| SecureTarError::BadHeader("key derivation parameters"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}
