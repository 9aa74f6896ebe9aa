//! Reading secrets (token, key passphrase, backup password) from a file, an environment variable or
//! the config itself, with the permission warnings that go with each. Never logs a secret's value.

use std::fs;

use crate::secret::Secret;

use super::ConfigError;
use super::validator::Validator;

impl Validator<'_> {
    /// A secret from exactly one of: `<key>_file`, `<key>_env`, inline `<key>`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn secret(
        &mut self,
        section: &'static str,
        key: &'static str,
        file_key: &'static str,
        env_key: &'static str,
        file: Option<String>,
        env: Option<String>,
        inline: Option<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        let count = [file.is_some(), env.is_some(), inline.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if count > 1 {
            return Err(self.err(
                section,
                key,
                format!("set only one of `{file_key}`, `{env_key}` and `{key}`"),
            ));
        }
        if let Some(f) = file {
            let path = self.readable_file(section, file_key, &f)?;
            let text = fs::read_to_string(&path).map_err(|e| {
                self.err(
                    section,
                    file_key,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let secret = Secret::new(text.trim());
            if secret.is_empty() {
                return Err(self.err(section, file_key, format!("{} is empty", path.display())));
            }
            if let Some(bits) = crate::private_fs::exposed_bits(&path).filter(|b| *b != 0) {
                self.warn(format!(
                    "[{section}] {file_key}: {} can be read or changed by its group or others (permission bits {bits:03o} \
                     beyond the owner's); the secret in it is exposed. Run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
            return Ok(Some(secret));
        }
        if let Some(name) = env {
            let value = (self.env)(&name).ok_or_else(|| {
                self.err(
                    section,
                    env_key,
                    format!("environment variable {name} is not set (or not valid UTF-8)"),
                )
            })?;
            let secret = Secret::new(value.trim());
            if secret.is_empty() {
                return Err(self.err(
                    section,
                    env_key,
                    format!("environment variable {name} is empty"),
                ));
            }
            return Ok(Some(secret));
        }
        if let Some(value) = inline {
            self.inline_secret = true;
            self.warn(format!(
                "[{section}] {key} is written inline in {}; prefer `{file_key}` or `{env_key}` so the config can be shared without the secret",
                self.path.display()
            ));
            let secret = Secret::new(value.trim());
            if secret.is_empty() {
                return Err(self.err(section, key, "is empty"));
            }
            return Ok(Some(secret));
        }
        Ok(None)
    }
}
