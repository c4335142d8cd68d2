//! Secrets kept out of the configuration file: every secret key `X` (an SMS provider's
//! token, a webhook header value, the transfer password) has an `X_file` twin that names a
//! file holding the secret.
//!
//! Why: under systemd the daemon runs as a `DynamicUser=`, which owns no file in `/etc`, so
//! whatever it reads there must be readable through a group or by everyone. Secrets instead
//! come through systemd credentials: the unit loads `/etc/ivrd/credentials/` (root, 0700) with
//! `LoadCredential=credentials:/etc/ivrd/credentials`, and systemd hands the service private,
//! read-only copies in `$CREDENTIALS_DIRECTORY`, named after their path with `/` turned into
//! `_` (`credentials/twilio-token` becomes `credentials_twilio-token`).
//!
//! How an `X_file` path is found:
//! - absolute: read as it is;
//! - relative, with `$CREDENTIALS_DIRECTORY` set (under systemd): the credential named after
//!   the path as systemd names it, so `X_file = "credentials/twilio-token"` reads
//!   `$CREDENTIALS_DIRECTORY/credentials_twilio-token`;
//! - relative, without it (`ivrd check` run by root, a daemon started by hand): relative to
//!   the config file's directory, as every other path, i.e. `/etc/ivrd/credentials/twilio-token`.
//!
//! The same config therefore works in both places, naming the same file.
//!
//! The file holds the secret and nothing else; one trailing newline (`\n` or `\r\n`) is
//! dropped, since editors add one. Setting both `X` and `X_file` is an error, and so is an
//! empty, missing, non-UTF-8 or oversized file. A file outside `$CREDENTIALS_DIRECTORY` that
//! every user may read is refused; one that its group may read is accepted with a warning
//! (a group such as `ivrd-config` may be exactly how a hand-made setup lets the service
//! read it). Secrets are read at start and on every reload. Note that systemd copies
//! credentials only when the service starts: a changed credential file needs
//! `systemctl restart`, not a reload.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The largest secret file read. Tokens and keys are tens of bytes; this only keeps a
/// mistake (a path pointing at a log file) from being read whole.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Where `X_file` paths are looked up: the config file's directory, and systemd's
/// credentials directory when the daemon runs under a unit that loads credentials.
#[derive(Debug, Clone)]
pub struct SecretFiles {
    config_dir: PathBuf,
    credentials: Option<PathBuf>,
}

impl SecretFiles {
    /// Looks up relative paths in `credentials` when given, else in `config_dir`.
    pub fn new(config_dir: impl Into<PathBuf>, credentials: Option<PathBuf>) -> Self {
        SecretFiles {
            config_dir: config_dir.into(),
            credentials,
        }
    }

    /// The credentials directory from `$CREDENTIALS_DIRECTORY`, as systemd sets it.
    pub fn from_env(config_dir: &Path) -> Self {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Self::new(config_dir, credentials)
    }

    /// The file `X_file = file` names (see the module documentation).
    pub fn locate(&self, file: &Path) -> Result<PathBuf, String> {
        if file.is_absolute() {
            return Ok(file.to_path_buf());
        }
        let mut parts = Vec::new();
        for part in file.components() {
            match part {
                Component::Normal(p) => parts.push(p.to_str().ok_or("the path is not UTF-8")?),
                _ => {
                    return Err(
                        "a relative path may not contain `.` or `..`: name the file below the \
                         config's directory, or give an absolute path"
                            .into(),
                    );
                }
            }
        }
        if parts.is_empty() {
            return Err("the path is empty".into());
        }
        Ok(match &self.credentials {
            Some(dir) => dir.join(parts.join("_")),
            None => self.config_dir.join(file),
        })
    }

    /// Reads the secret that `key_file = file` names. `key` is how the error and warning
    /// name the setting, e.g. `[sms] auth_token_file`.
    pub fn read(
        &self,
        key: &str,
        file: &Path,
        warnings: &mut Vec<String>,
    ) -> Result<String, String> {
        let at = |what: String| format!("{key} = {:?}: {what}", file.display().to_string());
        let path = self.locate(file).map_err(at)?;
        let in_credentials = self
            .credentials
            .as_deref()
            .is_some_and(|dir| path.starts_with(dir));
        let mut f = File::open(&path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound && in_credentials {
                format!(
                    ": systemd has no such credential. Put the secret in {} (mode 0600) and \
                     restart ivrd: credentials are loaded when the service starts, not on reload",
                    self.config_dir.join(file).display()
                )
            } else {
                String::new()
            };
            at(format!("{}: {e}{hint}", path.display()))
        })?;
        let meta = f
            .metadata()
            .map_err(|e| at(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(at(format!("{} is not a regular file", path.display())));
        }
        // systemd's copies are readable by the service alone, whatever their bits say.
        if !in_credentials {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                return Err(at(format!(
                    "{} is readable by every user on this host (mode {mode:04o}): \
                     run `chmod 0600 {}` and keep it in a directory only root can open",
                    path.display(),
                    path.display()
                )));
            }
            if mode & 0o070 != 0 {
                warnings.push(at(format!(
                    "{} is readable by its group (mode {mode:04o}); make it 0600 unless that \
                     group is how the service reads it",
                    path.display()
                )));
            }
        }
        let mut bytes = Vec::new();
        (&mut f)
            .take(MAX_SECRET_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| at(format!("{}: {e}", path.display())))?;
        if bytes.len() as u64 > MAX_SECRET_BYTES {
            return Err(at(format!(
                "{} is larger than {MAX_SECRET_BYTES} bytes: it should hold the secret only",
                path.display()
            )));
        }
        let mut text = String::from_utf8(bytes)
            .map_err(|_| at(format!("{} is not UTF-8 text", path.display())))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        if text.is_empty() {
            return Err(at(format!(
                "{} is empty: put the secret in it",
                path.display()
            )));
        }
        Ok(text)
    }

    /// Resolves a secret that may be given as `key = "..."` or `key_file = "..."`, but not
    /// both: reads the file into `value`. `section` is e.g. `[sms]`. Leaves an unset pair
    /// alone (the caller knows whether it is required).
    pub fn resolve(
        &self,
        section: &str,
        key: &str,
        value: &mut String,
        file: Option<&Path>,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(file) = file else {
            return Ok(());
        };
        if !value.is_empty() {
            return Err(both_set(section, key));
        }
        *value = self.read(&format!("{section} {key}_file"), file, warnings)?;
        Ok(())
    }

    /// [`Self::resolve`] for an optional secret.
    pub fn resolve_option(
        &self,
        section: &str,
        key: &str,
        value: &mut Option<String>,
        file: Option<&Path>,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(file) = file else {
            return Ok(());
        };
        if value.is_some() {
            return Err(both_set(section, key));
        }
        *value = Some(self.read(&format!("{section} {key}_file"), file, warnings)?);
        Ok(())
    }
}

/// The error for `key` and `key_file` both set.
pub fn both_set(section: &str, key: &str) -> String {
    format!(
        "{section} {key} and {key}_file are both set: keep {key}_file and remove {key}, \
         so the secret is not in the config file"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(path: &Path, text: &str, mode: u32) {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn relative_paths_follow_the_config_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("credentials/twilio-token"), "tok\n", 0o600);
        let files = SecretFiles::new(dir.path(), None);
        let mut w = Vec::new();
        let got = files
            .read(
                "[sms] auth_token_file",
                Path::new("credentials/twilio-token"),
                &mut w,
            )
            .unwrap();
        assert_eq!(got, "tok");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn relative_paths_are_systemd_credentials_when_there_is_a_credentials_directory() {
        let config = tempfile::tempdir().unwrap();
        let creds = tempfile::tempdir().unwrap();
        // systemd's name for credentials/twilio-token loaded from a directory, and a copy
        // whose bits would be refused elsewhere: systemd's copies are private anyway.
        write(
            &creds.path().join("credentials_twilio-token"),
            "from-systemd\n",
            0o644,
        );
        write(
            &config.path().join("credentials/twilio-token"),
            "from-etc",
            0o600,
        );
        let files = SecretFiles::new(config.path(), Some(creds.path().to_path_buf()));
        let mut w = Vec::new();
        assert_eq!(
            files
                .read("k", Path::new("credentials/twilio-token"), &mut w)
                .unwrap(),
            "from-systemd"
        );
        // A plain name is a credential loaded on its own (LoadCredential=webhook-auth:...).
        write(&creds.path().join("webhook-auth"), "Bearer x", 0o400);
        assert_eq!(
            files.read("k", Path::new("webhook-auth"), &mut w).unwrap(),
            "Bearer x"
        );
        assert!(w.is_empty(), "{w:?}");

        // A credential systemd did not load: named, with what to do.
        let e = files
            .read(
                "[sms] api_key_file",
                Path::new("credentials/tyntec-key"),
                &mut w,
            )
            .unwrap_err();
        assert!(
            e.starts_with("[sms] api_key_file = \"credentials/tyntec-key\": "),
            "{e}"
        );
        assert!(e.contains("credentials_tyntec-key"), "{e}");
        assert!(e.contains("no such credential"), "{e}");
        assert!(
            e.contains(
                &config
                    .path()
                    .join("credentials/tyntec-key")
                    .display()
                    .to_string()
            ),
            "{e}"
        );
        assert!(e.contains("restart ivrd"), "{e}");
    }

    #[test]
    fn absolute_paths_are_read_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let creds = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write(&path, "abs", 0o600);
        let files = SecretFiles::new("/nonexistent", Some(creds.path().to_path_buf()));
        assert_eq!(files.read("k", &path, &mut Vec::new()).unwrap(), "abs");
    }

    #[test]
    fn one_trailing_newline_is_dropped_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let files = SecretFiles::new(dir.path(), None);
        for (content, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            (" spaced \n", " spaced "),
        ] {
            write(&dir.path().join("s"), content, 0o600);
            assert_eq!(
                files.read("k", Path::new("s"), &mut Vec::new()).unwrap(),
                want,
                "{content:?}"
            );
        }
    }

    #[test]
    fn empty_missing_oversized_and_binary_files_are_errors_naming_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let files = SecretFiles::new(dir.path(), None);
        let key = "[transfer] password_file";
        let mut w = Vec::new();
        let check = |name: &str, needle: &str, w: &mut Vec<String>| {
            let e = files.read(key, Path::new(name), w).unwrap_err();
            assert!(e.starts_with(&format!("{key} = \"{name}\": ")), "{e}");
            let path = dir.path().join(name).display().to_string();
            assert!(e.contains(&path), "{e}");
            assert!(e.contains(needle), "{needle:?} not in {e}");
        };
        write(&dir.path().join("empty"), "", 0o600);
        check("empty", "is empty", &mut w);
        write(&dir.path().join("newline"), "\n", 0o600);
        check("newline", "is empty", &mut w);
        check("missing", "No such file", &mut w);
        write(
            &dir.path().join("big"),
            &"x".repeat(MAX_SECRET_BYTES as usize + 1),
            0o600,
        );
        check("big", "larger than", &mut w);
        fs::write(dir.path().join("bin"), [0xFF, 0xFE]).unwrap();
        fs::set_permissions(dir.path().join("bin"), fs::Permissions::from_mode(0o600)).unwrap();
        check("bin", "not UTF-8", &mut w);
        fs::create_dir(dir.path().join("adir")).unwrap();
        check("adir", "not a regular file", &mut w);
        for bad in ["../x", "./x", "a/../b"] {
            let e = files.read(key, Path::new(bad), &mut w).unwrap_err();
            assert!(e.contains("may not contain"), "{bad}: {e}");
        }
    }

    #[test]
    fn files_others_can_read_are_refused_and_group_readable_ones_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let files = SecretFiles::new(dir.path(), None);
        let path = dir.path().join("tok");
        let mut w = Vec::new();
        for mode in [0o644, 0o604, 0o666, 0o601] {
            write(&path, "t", mode);
            let e = files
                .read("[sms] auth_token_file", Path::new("tok"), &mut w)
                .unwrap_err();
            assert!(e.contains("readable by every user"), "{mode:o}: {e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
            assert!(e.contains(&format!("chmod 0600 {}", path.display())), "{e}");
        }
        assert!(w.is_empty());
        write(&path, "t", 0o640);
        assert_eq!(
            files
                .read("[sms] auth_token_file", Path::new("tok"), &mut w)
                .unwrap(),
            "t"
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("[sms] auth_token_file = \"tok\": "),
            "{}",
            w[0]
        );
        assert!(
            w[0].contains("readable by its group (mode 0640)"),
            "{}",
            w[0]
        );
        for mode in [0o600, 0o400] {
            let mut w = Vec::new();
            write(&path, "t", mode);
            files.read("k", Path::new("tok"), &mut w).unwrap();
            assert!(w.is_empty(), "{mode:o}: {w:?}");
        }
    }

    #[test]
    fn a_secret_and_its_file_together_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("p"), "from-file\n", 0o600);
        let files = SecretFiles::new(dir.path(), None);
        let mut w = Vec::new();

        let mut value = "inline".to_string();
        let e = files
            .resolve(
                "[sms]",
                "auth_token",
                &mut value,
                Some(Path::new("p")),
                &mut w,
            )
            .unwrap_err();
        assert!(
            e.contains("[sms] auth_token and auth_token_file are both set"),
            "{e}"
        );
        let mut value = String::new();
        files
            .resolve(
                "[sms]",
                "auth_token",
                &mut value,
                Some(Path::new("p")),
                &mut w,
            )
            .unwrap();
        assert_eq!(value, "from-file");
        let mut value = "inline".to_string();
        files
            .resolve("[sms]", "auth_token", &mut value, None, &mut w)
            .unwrap();
        assert_eq!(value, "inline");

        let mut pw = Some("inline".to_string());
        let e = files
            .resolve_option(
                "[transfer]",
                "password",
                &mut pw,
                Some(Path::new("p")),
                &mut w,
            )
            .unwrap_err();
        assert!(
            e.contains("[transfer] password and password_file are both set"),
            "{e}"
        );
        let mut pw = None;
        files
            .resolve_option(
                "[transfer]",
                "password",
                &mut pw,
                Some(Path::new("p")),
                &mut w,
            )
            .unwrap();
        assert_eq!(pw.as_deref(), Some("from-file"));
    }
}
