//! The validator's state and its generic checks (errors naming file/section/key, warnings, relative
//! paths, readable files, durations). The per-section rules live in `sections`, secrets in `secrets`;
//! this module must not know any particular section.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ConfigError, ConfigWarning};

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) base: &'a Path,
    pub(super) warnings: Vec<ConfigWarning>,
    pub(super) inline_secret: bool,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    pub(super) fn err(
        &self,
        section: &'static str,
        key: &'static str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: None,
            section,
            key,
            message: message.into(),
        }
    }

    pub(super) fn warn(&mut self, message: String) {
        self.warnings.push(ConfigWarning(message));
    }

    /// Relative paths in the file are relative to the file's own folder, as users expect.
    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn readable_file(
        &self,
        section: &'static str,
        key: &'static str,
        p: &str,
    ) -> Result<PathBuf, ConfigError> {
        let path = self.resolve(p);
        match fs::File::open(&path) {
            Ok(f) => match f.metadata() {
                Ok(m) if m.is_file() => Ok(path),
                Ok(_) => Err(self.err(
                    section,
                    key,
                    format!("{} is not a regular file", path.display()),
                )),
                Err(e) => {
                    Err(self.err(section, key, format!("cannot stat {}: {e}", path.display())))
                }
            },
            Err(e) => Err(self.err(section, key, format!("cannot read {}: {e}", path.display()))),
        }
    }

    pub(super) fn duration(
        &self,
        section: &'static str,
        key: &'static str,
        s: &str,
    ) -> Result<Duration, ConfigError> {
        humantime::parse_duration(s.trim()).map_err(|e| {
            self.err(
                section,
                key,
                format!("{s:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"2h\""),
            )
        })
    }
}
