//! A real softphone calls the demo: baresip (headless, driven over its ctrl_tcp JSON socket)
//! dials ivrd, hears the prompts, types digits, and is hung up on after the last round.
//!
//! What we learned about Debian's baresip 1.0.0 (see also tests/baresip/config.in):
//! - Modules live in /usr/lib/baresip/modules on Debian (other builds use
//!   /usr/lib/<triplet>/baresip/modules or /usr/local/lib/baresip/modules): we look for them.
//! - `net_interface 127.0.0.1` is needed, or the SDP announces eth0's address.
//! - Headless audio: `audio_source aufile,<wav>` and `audio_player aubridge,nil`; the
//!   `sndfile` filter then dumps what the call hears to `<snd_path>/dump-<timestamp>-dec.wav`
//!   (8 kHz mono 16-bit for G.711). The file is complete once the call is closed.
//! - ctrl_tcp speaks netstrings (`<len>:<json>,`): commands are
//!   `{"command":"dial","params":"sip:...","token":"n"}`, answered by
//!   `{"response":true,"ok":true,"data":"","token":"n"}`; events look like
//!   `{"event":true,"type":"CALL_ESTABLISHED",...}` and `CALL_CLOSED`.
//! - DTMF: `sndcode` with one digit sends it as RFC 4733 telephone-events on the negotiated
//!   payload type (baresip offers 101): about 180 ms of updates then three end packets, with
//!   one RTP timestamp per digit. It never falls back to SIP INFO or in-band tones here.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG_TEMPLATE: &str = include_str!("baresip/config.in");

/// Modules the config loads; a directory qualifies only if it has all of them.
const MODULES: &[&str] = &[
    "g711.so",
    "aubridge.so",
    "aufile.so",
    "sndfile.so",
    "uuid.so",
    "account.so",
    "menu.so",
    "ctrl_tcp.so",
];

/// Finds baresip's module directory, which differs between distributions and builds.
fn baresip_module_path() -> PathBuf {
    let mut candidates = vec![
        PathBuf::from("/usr/lib/baresip/modules"),
        PathBuf::from("/usr/local/lib/baresip/modules"),
        PathBuf::from("/usr/lib64/baresip/modules"),
    ];
    // Multiarch: /usr/lib/x86_64-linux-gnu/baresip/modules and friends.
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        candidates.extend(entries.flatten().map(|e| e.path().join("baresip/modules")));
    }
    candidates
        .into_iter()
        .find(|dir| MODULES.iter().all(|m| dir.join(m).is_file()))
        .unwrap_or_else(|| {
            panic!(
                "no baresip module directory with {MODULES:?}: run scripts/install-test-deps.sh (package baresip-core)"
            )
        })
}

/// Writes a mono 8 kHz WAV with a quiet 440 Hz tone: the caller's "voice". Long enough that
/// aufile never runs dry during the call; far from the DTMF frequencies.
fn write_source_wav(path: &Path, secs: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).expect("create source WAV");
    for i in 0..secs * 8000 {
        let t = f64::from(i) / 8000.0;
        let sample = (0.05 * (2.0 * std::f64::consts::PI * 440.0 * t).sin() * 32767.0) as i16;
        writer.write_sample(sample).expect("write sample");
    }
    writer.finalize().expect("finalize source WAV");
}

/// A headless baresip with its own config directory and a ctrl_tcp connection.
struct Baresip {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ctrl: Option<TcpStream>,
    pending: Vec<u8>,
    /// Every event received so far, as raw JSON.
    events: Vec<String>,
    token: u32,
}

impl Baresip {
    fn start() -> Baresip {
        let binary = require_tool("baresip");
        let module_path = baresip_module_path();
        let dir = tempfile::Builder::new()
            .prefix("baresip-test-")
            .tempdir()
            .expect("create temp dir");
        let dump_dir = dir.path().join("dump");
        fs::create_dir(&dump_dir).expect("create dump dir");
        let source = dir.path().join("source.wav");
        write_source_wav(&source, 90);
        let sip_port = free_sip_port();
        let ctrl_port = free_sip_port();
        let rtp_min = free_media_port();

        let config = CONFIG_TEMPLATE
            .replace("@SIP_PORT@", &sip_port.to_string())
            .replace("@RTP_MIN@", &rtp_min.to_string())
            .replace("@RTP_MAX@", &(rtp_min + 3).to_string())
            .replace("@SOURCE_WAV@", &source.display().to_string())
            .replace("@MODULE_PATH@", &module_path.display().to_string())
            .replace("@DUMP_DIR@", &dump_dir.display().to_string())
            .replace("@CTRL_PORT@", &ctrl_port.to_string());
        fs::write(dir.path().join("config"), config).expect("write baresip config");
        // One local account, never registering: calls go straight to the request URI.
        fs::write(
            dir.path().join("accounts"),
            "<sip:tester@127.0.0.1>;regint=0\n",
        )
        .expect("write accounts");

        let log = fs::File::create(dir.path().join("baresip.log")).expect("create log");
        let child = Command::new(binary)
            .arg("-f")
            .arg(dir.path())
            // Backstop: quit on its own even if this test process dies without dropping us.
            .args(["-t", "180"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn baresip");

        let mut phone = Baresip {
            child: Some(child),
            dir,
            ctrl: None,
            pending: Vec::new(),
            events: Vec::new(),
            token: 0,
        };
        phone.connect_ctrl(SocketAddr::from((LOCALHOST, ctrl_port)));
        phone
    }

    fn connect_ctrl(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "baresip exited with {status} during startup\n{}",
                    self.log()
                );
            }
            if let Ok(stream) = TcpStream::connect(addr) {
                self.ctrl = Some(stream);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "baresip ctrl_tcp did not listen on {addr}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    fn dump_dir(&self) -> PathBuf {
        self.dir.path().join("dump")
    }

    /// Reads one netstring frame, or None when `deadline` passes first.
    fn read_frame(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(colon) = self.pending.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.pending[..colon])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "bad netstring from baresip: {:?}",
                            String::from_utf8_lossy(&self.pending)
                        )
                    });
                // <len>:<payload>,
                if self.pending.len() > colon + len + 1 {
                    let payload =
                        String::from_utf8_lossy(&self.pending[colon + 1..colon + 1 + len])
                            .into_owned();
                    self.pending.drain(..colon + len + 2);
                    return Some(payload);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let stream = self.ctrl.as_mut().expect("ctrl connection");
            stream
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .expect("set timeout");
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading baresip ctrl_tcp: {e}"),
            }
        }
    }

    /// Runs a command and returns its response; events that arrive meanwhile are kept.
    fn command(&mut self, command: &str, params: &str) -> String {
        self.token += 1;
        let token = self.token.to_string();
        // Our parameters are digits and SIP URIs: nothing that needs JSON escaping.
        assert!(
            !params.contains(['"', '\\']),
            "unexpected characters in {params:?}"
        );
        let json = format!(r#"{{"command":"{command}","params":"{params}","token":"{token}"}}"#);
        let frame = format!("{}:{json},", json.len());
        self.ctrl
            .as_mut()
            .expect("ctrl connection")
            .write_all(frame.as_bytes())
            .expect("write ctrl command");
        let deadline = Instant::now() + Duration::from_secs(5);
        let token_field = format!(r#""token":"{token}""#);
        loop {
            let frame = self
                .read_frame(deadline)
                .unwrap_or_else(|| panic!("no response to {command} from baresip\n{}", self.log()));
            if frame.contains(r#""response":true"#) && frame.contains(&token_field) {
                assert!(
                    frame.contains(r#""ok":true"#),
                    "baresip refused {command} {params}: {frame}"
                );
                return frame;
            }
            if frame.contains(r#""event":true"#) {
                self.events.push(frame);
            }
        }
    }

    /// Waits for an event of `kind` (e.g. CALL_ESTABLISHED), including ones already received.
    fn wait_event(&mut self, kind: &str, timeout: Duration) -> String {
        let needle = format!(r#""type":"{kind}""#);
        if let Some(event) = self.events.iter().find(|e| e.contains(&needle)) {
            return event.clone();
        }
        let deadline = Instant::now() + timeout;
        while let Some(frame) = self.read_frame(deadline) {
            if frame.contains(r#""event":true"#) {
                self.events.push(frame.clone());
                if frame.contains(&needle) {
                    return frame;
                }
            }
        }
        panic!(
            "baresip sent no {kind} event within {timeout:?}; events so far:\n{}\n--- baresip log ---\n{}",
            self.events.join("\n"),
            self.log()
        );
    }

    /// Asks baresip to quit and waits for it, so sndfile has closed (finalised) its WAVs.
    fn quit(&mut self) {
        if let Some(stream) = self.ctrl.as_mut() {
            let json = r#"{"command":"quit","params":"","token":"quit"}"#;
            let _ = stream.write_all(format!("{}:{json},", json.len()).as_bytes());
        }
        if let Some(child) = self.child.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- baresip events ----\n{}\n---- baresip log ----\n{}\n---- end of baresip log ----",
                self.events.join("\n"),
                self.log()
            );
        }
    }
}

/// RMS of a 16-bit WAV, as a fraction of full scale, and its length.
fn wav_rms(path: &Path) -> (f64, Duration) {
    let mut reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(
        spec.bits_per_sample, 16,
        "sndfile dump is not 16-bit: {spec:?}"
    );
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("decode WAV samples");
    let secs = samples.len() as f64 / f64::from(spec.sample_rate) / f64::from(spec.channels);
    if samples.is_empty() {
        return (0.0, Duration::ZERO);
    }
    let mean_square = samples
        .iter()
        .map(|&s| (f64::from(s) / 32768.0).powi(2))
        .sum::<f64>()
        / samples.len() as f64;
    (mean_square.sqrt(), Duration::from_secs_f64(secs))
}

#[test]
fn baresip_hears_prompts_and_its_digits_are_collected() {
    let daemon = Daemon::start(
        "[demo]\nrounds = 1\nfirst_digit_timeout_ms = 15000\ninter_digit_timeout_ms = 3000\n",
    );
    let mut phone = Baresip::start();

    phone.command("dial", &format!("sip:demo@{}", daemon.sip_addr()));
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));

    // Past the welcome prompt, so the digits land in the barge-in "enter-digits" prompt or the
    // collect itself, whatever the daemon does with type-ahead during the welcome.
    std::thread::sleep(prompt_duration("en", "demo-welcome") + Duration::from_millis(700));
    for digit in ["4", "2", "7", "#"] {
        phone.command("sndcode", digit);
        // One event lasts ~240 ms including its end packets; keep them apart.
        std::thread::sleep(Duration::from_millis(400));
    }

    daemon.expect_log("collected digits=", Duration::from_secs(10));
    // Read-back, goodbye, then ivrd hangs up (rounds = 1).
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    phone.quit();

    assert_eq!(
        daemon.collected(),
        vec![("427".to_string(), "rfc4733".to_string())],
        "expected `collected digits=427 methods=rfc4733` (terminator # not included)"
    );
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(
        !reasons[0].contains("caller") && !reasons[0].contains("remote"),
        "ivrd hung up, yet the reason is {:?}",
        reasons[0]
    );

    let dumps: Vec<PathBuf> = fs::read_dir(phone.dump_dir())
        .expect("read dump dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("dump-") && n.ends_with("-dec.wav"))
        })
        .collect();
    assert_eq!(
        dumps.len(),
        1,
        "expected one dump-*-dec.wav in {}, found {dumps:?}\n{}",
        phone.dump_dir().display(),
        phone.log()
    );
    let (rms, length) = wav_rms(&dumps[0]);
    eprintln!("baresip heard {length:?} of audio, RMS {rms:.4} of full scale");
    assert!(
        length > Duration::from_secs(3),
        "recording of the call is only {length:?} long"
    );
    // Speech prompts sit far above -40 dBFS; a silent or missing stream is ~0.
    assert!(
        rms > 0.01,
        "what baresip heard is (near) silence: RMS {rms:.5} of full scale over {length:?}"
    );
}
