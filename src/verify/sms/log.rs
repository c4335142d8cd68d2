//! The `log` provider, the no-account default: instead of sending an SMS it appends the
//! message to a file, where a demo operator or a test reads the PIN.
//!
//! THE FILE CONTAINS PINS (that is its purpose). It is for demos and tests only, never for a
//! production deployment; it is created with mode 0600 and an existing file that others can
//! read is tightened to 0600. One line per message:
//! `<RFC 3339 UTC time> to=<full E.164> ref=<reference> text=<text>`, where a backslash, CR
//! or LF in the reference or text is escaped (`\\`, `\r`, `\n`) so a message stays one line.
//!
//! The daemon's own log (via `tracing`) gets only the masked number and the reference.

use super::{
    SendFuture, SmsError, SmsMessage, SmsProvider, SmsReceipt, check_destination, mask_number,
};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

pub(crate) struct LogProvider {
    path: Option<PathBuf>,
    /// Serialises writers so lines from concurrent calls never interleave.
    write_lock: Mutex<()>,
}

impl LogProvider {
    /// Opens (creating if needed) the file once, so a bad path is a start-up error rather
    /// than a failure during a call.
    pub(crate) fn new(path: Option<PathBuf>) -> Result<Self, SmsError> {
        if let Some(p) = &path {
            open(p).map_err(|e| SmsError::Config(format!("SMS log file {}: {e}", p.display())))?;
            tracing::warn!(path = %p.display(),
                "SMS provider 'log': PINs are written to this file (demo/test use only)");
        }
        Ok(LogProvider {
            path,
            write_lock: Mutex::new(()),
        })
    }

    fn write(&self, msg: &SmsMessage) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let line = format!(
            "{} to={} ref={} text={}\n",
            humantime::format_rfc3339_seconds(SystemTime::now()),
            msg.to,
            escape(&msg.reference),
            escape(&msg.text)
        );
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Opened per message (append) so a rotated or deleted file is simply re-created;
        // one write_all of the whole line keeps it whole for readers.
        open(path)?.write_all(line.as_bytes())
    }
}

/// Opens `path` for appending, created with mode 0600; an existing file with group or other
/// permissions is tightened, since it holds PINs.
fn open(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

impl SmsProvider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    fn send<'a>(&'a self, msg: &'a SmsMessage) -> SendFuture<'a> {
        Box::pin(async move {
            check_destination(&msg.to)?;
            // A local append of one short line; not worth a blocking-pool hop.
            self.write(msg).map_err(|e| {
                SmsError::Unavailable(format!("cannot write the SMS log file: {e}"))
            })?;
            tracing::info!(provider = "log", to = %mask_number(&msg.to),
                reference = %msg.reference, to_file = self.path.is_some(),
                "SMS not sent (log provider)");
            Ok(SmsReceipt {
                provider: "log",
                message_id: None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::sms::test_support::message;
    use crate::verify::sms::{SmsConfig, build};

    #[tokio::test]
    async fn writes_one_line_per_message_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms.log");
        let provider = build(&SmsConfig::Log {
            path: Some(path.clone()),
        })
        .unwrap();
        assert_eq!(provider.name(), "log");
        let mut second = message();
        second.reference = "ref-2".into();
        second.text = "line one\nline two \\ 112233".into();
        provider.send(&message()).await.unwrap();
        provider.send(&second).await.unwrap();

        let content = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = content.lines().collect();
        assert_eq!(lines.len(), 2, "{content}");
        let (time, rest) = lines[0].split_once(' ').unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(
            rest,
            "to=+4915112345678 ref=ref-1 text=Your ivrd code is 493817. It expires in 5 minutes."
        );
        assert!(
            lines[1].ends_with(" to=+4915112345678 ref=ref-2 text=line one\\nline two \\\\ 112233")
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn tightens_an_existing_readable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms.log");
        std::fs::write(&path, "old line\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let provider = LogProvider::new(Some(path.clone())).unwrap();
        provider.send(&message()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let content = std::fs::read_to_string(&path).unwrap();
        assert!(content.starts_with("old line\n") && content.lines().count() == 2);
    }

    #[tokio::test]
    async fn without_a_path_nothing_is_written() {
        let provider = LogProvider::new(None).unwrap();
        let receipt = provider.send(&message()).await.unwrap();
        assert_eq!(receipt.provider, "log");
    }

    #[tokio::test]
    async fn a_bad_path_is_a_config_error_and_a_bad_number_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("no-such-dir").join("sms.log");
        assert!(matches!(
            LogProvider::new(Some(bad)),
            Err(SmsError::Config(_))
        ));

        let provider = LogProvider::new(None).unwrap();
        let mut msg = message();
        msg.to = "004915112345678".into();
        assert!(matches!(
            provider.send(&msg).await,
            Err(SmsError::Rejected { status: None, .. })
        ));
    }
}
