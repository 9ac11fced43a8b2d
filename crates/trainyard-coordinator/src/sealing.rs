//! Secrets the coordinator must be able to read back (SigV4 secret access keys), sealed with
//! AES-256-GCM under a key kept in `<data-dir>/pki/sealing.key` (mode 0600): a copy of the
//! database alone does not reveal them.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const KEY_FILE: &str = "sealing.key";

pub struct Sealer {
    key: LessSafeKey,
    random: SystemRandom,
}

use trainyard_model::hex::{decode as unhex, encode as hex};

impl Sealer {
    /// Loads the key from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let path = dir.join(KEY_FILE);
        let random = SystemRandom::new();
        let bytes = match std::fs::read_to_string(&path) {
            Ok(text) => unhex(text.trim()).with_context(|| format!("{} is not a hex key", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; 32];
                random.fill(&mut bytes).map_err(|_| anyhow::anyhow!("the system's random generator failed"))?;
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                file.write_all(hex(&bytes).as_bytes())?;
                bytes
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| anyhow::anyhow!("{} is not a 256-bit key", path.display()))?;
        Ok(Self { key: LessSafeKey::new(key), random })
    }

    /// `secret` sealed and bound to `context` (opening it under another context fails).
    pub fn seal(&self, secret: &str, context: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| "the system's random generator failed".to_string())?;
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| "sealing failed".to_string())?;
        Ok(format!("{}{}", hex(&nonce), hex(&data)))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<String, String> {
        let bytes = unhex(sealed).filter(|b| b.len() > NONCE_LEN).ok_or("not a sealed value")?;
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| "cannot be opened with this coordinator's sealing key".to_string())?;
        String::from_utf8(plain.to_vec()).map_err(|_| "not text".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let dir = tempfile::tempdir().expect("dir");
        let sealer = Sealer::load_or_create(dir.path()).expect("create");
        let sealed = sealer.seal("s3cr3t", "TYAKEY").expect("seal");
        assert!(!sealed.contains("s3cr3t"));
        assert_ne!(sealed, sealer.seal("s3cr3t", "TYAKEY").expect("seal"), "a fresh nonce each time");
        assert_eq!(sealer.open(&sealed, "TYAKEY").as_deref(), Ok("s3cr3t"));
        assert!(sealer.open(&sealed, "OTHER").is_err(), "bound to its access key id");
        let reloaded = Sealer::load_or_create(dir.path()).expect("reload");
        assert_eq!(reloaded.open(&sealed, "TYAKEY").as_deref(), Ok("s3cr3t"));
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).expect("key").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let other = tempfile::tempdir().expect("dir");
        assert!(Sealer::load_or_create(other.path()).expect("other").open(&sealed, "TYAKEY").is_err());
    }
}
