//! The masking key: secret HMAC key that makes tokens deterministic for one deployment
//! and unlinkable across deployments.
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use rand::RngCore;
use rand::rngs::OsRng;

use super::MaskError;

/// Minimum key length in bytes (HMAC-SHA256 block security).
pub const MIN_KEY_LEN: usize = 32;
/// Size of a freshly generated key.
const NEW_KEY_LEN: usize = 32;

/// Secret key for tokens. `Debug` never shows the bytes.
#[derive(Clone)]
pub struct MaskKey(Vec<u8>);

impl MaskKey {
    /// Wrap existing key material (at least [`MIN_KEY_LEN`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MaskError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(MaskError::KeyTooShort {
                len: bytes.len(),
                min: MIN_KEY_LEN,
            });
        }
        Ok(MaskKey(bytes.to_vec()))
    }

    /// A fresh random key from the OS RNG (not persisted).
    pub fn generate() -> Result<Self, MaskError> {
        let mut buf = vec![0u8; NEW_KEY_LEN];
        OsRng
            .try_fill_bytes(&mut buf)
            .map_err(|e| MaskError::Rng(e.to_string()))?;
        Ok(MaskKey(buf))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MaskKey({} bytes)", self.0.len())
    }
}

/// Read the key at `path`, or create it (mode 0600, random, fsynced) if it does not exist.
///
/// A key file accessible by group or others is refused: whoever reads the key can
/// confirm guesses of masked values (e.g. test every card number against a token).
pub fn load_or_create_key(path: &Path) -> Result<MaskKey, MaskError> {
    let io = |op: &'static str| {
        move |source: std::io::Error| MaskError::KeyIo {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    match File::open(path) {
        Ok(f) => read_key(path, f),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let key = MaskKey::generate()?;
            // create_new: never overwrite a key another process created meanwhile.
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            let mut f = match created {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return read_key(path, File::open(path).map_err(io("open"))?);
                }
                Err(e) => return Err(io("create")(e)),
            };
            f.write_all(key.bytes()).map_err(io("write"))?;
            f.sync_all().map_err(io("fsync"))?;
            // Make the new directory entry durable too; best effort (some filesystems
            // refuse fsync on directories).
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Ok(d) = File::open(dir)
            {
                let _ = d.sync_all();
            }
            tracing::info!(path = %path.display(), "created a new masking key");
            Ok(key)
        }
        Err(e) => Err(io("open")(e)),
    }
}

fn read_key(path: &Path, f: File) -> Result<MaskKey, MaskError> {
    let io = |op: &'static str| {
        move |source: std::io::Error| MaskError::KeyIo {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    // fstat on the opened file: no window between the check and the read.
    let meta = f.metadata().map_err(io("stat"))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(MaskError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !meta.is_file() {
        return Err(MaskError::KeyIo {
            op: "read",
            path: path.to_path_buf(),
            source: std::io::Error::new(ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let mut buf = Vec::with_capacity(64);
    // A key is small; refuse to slurp a huge file by mistake.
    f.take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(io("read"))?;
    MaskKey::from_bytes(&buf)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_0600_key_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mask.key");
        let k1 = load_or_create_key(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), NEW_KEY_LEN as u64);
        let k2 = load_or_create_key(&path).unwrap();
        assert_eq!(k1.bytes(), k2.bytes());
        assert!(!format!("{k1:?}").contains(&hex::encode(k1.bytes())));
    }

    #[test]
    fn group_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mask.key");
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create_key(&path).unwrap_err();
        assert!(
            matches!(err, MaskError::KeyPermissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(load_or_create_key(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_or_create_key(&path).is_ok());
    }

    #[test]
    fn short_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mask.key");
        std::fs::write(&path, [7u8; 16]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(MaskError::KeyTooShort { len: 16, .. })
        ));
        assert!(MaskKey::from_bytes(&[1; 31]).is_err());
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            MaskKey::generate().unwrap().bytes(),
            MaskKey::generate().unwrap().bytes()
        );
    }
}
