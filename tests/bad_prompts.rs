//! A bad prompt file never takes ivrd down. Two files that did, written byte for byte:
//! a 44-byte WAV whose data chunk claims 4 GiB (the loader reserved memory for it and the
//! process aborted) and a 108-byte float WAV with samples of -1.7e38 (the resampler's FFT
//! overflowed into a panic). With the real binary and real files:
//! - `ivrd check` names the file and exits 1;
//! - a running daemon given one on SIGHUP logs the failure naming the file, keeps running,
//!   and a call still hears the prompt it had before;
//! - a daemon started with one refuses to start with the same message, exit status 1
//!   (not a panic, not an abort signal).

mod common;

use common::*;
use ivrd::media::prompt::{Prompt, load_wav};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// 8-bit mono 8 kHz, data chunk claiming 4,294,967,295 bytes, no data.
const HUGE_DATA_CLAIM: [u8; 44] = [
    b'R', b'I', b'F', b'F', 0xFF, 0xFF, 0xFF, 0xFF, b'W', b'A', b'V', b'E', //
    b'f', b'm', b't', b' ', 16, 0, 0, 0, //
    1, 0, 1, 0, // PCM, mono
    0x40, 0x1F, 0, 0, 0x40, 0x1F, 0, 0, // 8000 Hz, 8000 bytes/s
    1, 0, 8, 0, // block align 1, 8 bits
    b'd', b'a', b't', b'a', 0xFF, 0xFF, 0xFF, 0xFF,
];

/// 32-bit float stereo 16 kHz, 16 samples of -1.7e38 (0xFEFFC99E).
fn hot_float_stereo() -> Vec<u8> {
    let mut v = vec![
        b'R', b'I', b'F', b'F', 100, 0, 0, 0, b'W', b'A', b'V', b'E', //
        b'f', b'm', b't', b' ', 16, 0, 0, 0, //
        3, 0, 2, 0, // IEEE float, stereo
        0x80, 0x3E, 0, 0, 0x00, 0xF4, 0x01, 0, // 16000 Hz, 128000 bytes/s
        8, 0, 32, 0, // block align 8, 32 bits
        b'd', b'a', b't', b'a', 64, 0, 0, 0,
    ];
    for _ in 0..16 {
        v.extend_from_slice(&[0x9E, 0xC9, 0xFF, 0xFE]);
    }
    assert_eq!(v.len(), 108);
    v
}

/// Each bad file with what its error must say.
fn bad_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "huge data claim",
            HUGE_DATA_CLAIM.to_vec(),
            "data chunk claims 4294967295 bytes but the file has 0",
        ),
        (
            "samples of -1.7e38",
            hot_float_stereo(),
            "samples out of range / not finite",
        ),
    ]
}

/// The prompt the demo plays first: the file the tests replace with a bad one.
const VICTIM: &str = "en/demo-welcome.wav";

/// A copy of the bundled prompts the test may break.
fn copy_prompts(to: &Path) {
    for lang in std::fs::read_dir(prompts_dir()).expect("read prompts dir") {
        let lang = lang.expect("dir entry").path();
        if !lang.is_dir() {
            continue;
        }
        let dest = to.join(lang.file_name().expect("language name"));
        std::fs::create_dir_all(&dest).expect("create language dir");
        for file in std::fs::read_dir(&lang).expect("read language dir") {
            let file = file.expect("dir entry").path();
            if file.extension().is_some_and(|e| e == "wav") {
                std::fs::copy(&file, dest.join(file.file_name().expect("name"))).expect("copy");
            }
        }
    }
}

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// A demo config over `prompts` (the demo needs only its own prompts, no dialplans).
fn write_config(dir: &Path, prompts: &Path) -> PathBuf {
    let port = free_sip_port();
    let cfg = dir.join("ivrd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sip]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\n\
             [media]\nprompts_dir = {}\nrtp_port_min = 32200\nrtp_port_max = 32299\n\
             [demo]\nenabled = true\n[admin]\nlisten = \"\"\n[store]\npath = {}\n",
            toml_str(prompts),
            toml_str(&dir.join("ivrd.db")),
        ),
    )
    .expect("write config");
    cfg
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// No panic message and no abort: what a crash would leave behind.
fn assert_no_crash(out: &str) {
    for sign in [
        "panicked",
        "memory allocation",
        "RUST_BACKTRACE",
        "core dumped",
    ] {
        assert!(!out.contains(sign), "{sign:?} in the output:\n{out}");
    }
}

#[test]
fn check_names_each_bad_prompt_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    copy_prompts(&prompts);
    let cfg = write_config(dir.path(), &prompts);
    let victim = prompts.join(VICTIM);
    let good = std::fs::read(&victim).unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_ivrd"))
            .arg("check")
            .arg("--config")
            .arg(&cfg)
            .current_dir(dir.path())
            .output()
            .expect("run ivrd check")
    };

    let ok = check();
    assert!(ok.status.success(), "{}", text(&ok));

    for (what, bytes, needle) in bad_files() {
        std::fs::write(&victim, &bytes).unwrap();
        let out = check();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {}\n{all}", out.status);
        let expected = format!("{}: ", victim.display());
        assert!(
            all.contains(&expected),
            "{what}: the file is not named:\n{all}"
        );
        assert!(all.contains(needle), "{what}: no {needle:?} in:\n{all}");
        assert_no_crash(&all);
    }

    std::fs::write(&victim, &good).unwrap();
    let ok = check();
    assert!(ok.status.success(), "{}", text(&ok));
}

/// The first `within` bytes' 40 ms window (PCMU) with the most distinct values: a stretch
/// of speech that silence or another prompt cannot match by chance.
fn speech_window(pcmu: &[u8], within: usize) -> &[u8] {
    let len = 320;
    let start = (0..within.min(pcmu.len()).saturating_sub(len))
        .step_by(40)
        .max_by_key(|&i| {
            let mut seen = [false; 256];
            pcmu[i..i + len]
                .iter()
                .for_each(|&b| seen[usize::from(b)] = true);
            seen.iter().filter(|&&s| s).count()
        })
        .expect("the prompt is longer than one window");
    &pcmu[start..start + len]
}

#[test]
fn reload_with_a_bad_prompt_keeps_the_running_prompts() {
    let prompts_tmp = tempfile::tempdir().unwrap();
    let prompts = prompts_tmp.path().to_path_buf();
    copy_prompts(&prompts);
    let victim = prompts.join(VICTIM);
    let good = std::fs::read(&victim).unwrap();
    // What a caller must hear: the prompt as the daemon converted it at start.
    let heard_before = Prompt::from_pcm("demo-welcome", "en", load_wav(&victim).unwrap()).pcmu;
    let window = speech_window(&heard_before, 8000 * 2).to_vec();

    let mut daemon = Daemon::start(&format!("[media]\nprompts_dir = {}\n", toml_str(&prompts)));

    for (round, (what, bytes, needle)) in bad_files().into_iter().enumerate() {
        std::fs::write(&victim, &bytes).unwrap();
        daemon.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(30);
        let failure = loop {
            let lines = daemon.log_lines("reload failed");
            if lines.len() > round {
                break lines[round].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no `reload failed` line within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            failure.contains(&victim.display().to_string()) && failure.contains(needle),
            "{what}: the reload failure does not name {} with {needle:?}:\n{failure}",
            victim.display()
        );
        assert!(daemon.is_running(), "{what}: ivrd exited on the reload");

        // A call still gets the prompt the daemon had before the reload.
        let mut uac = RawUac::call(daemon.sip_addr(), "demo");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !contains(&uac.rtp_payload(), &window) {
            assert!(
                Instant::now() < deadline,
                "{what}: after 10 s the caller has not heard the old demo-welcome \
                 ({} RTP packets received)\n{}",
                uac.rtp_received(),
                uac.transcript()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(uac.bye(), 200, "{what}: BYE\n{}", uac.transcript());
    }
    assert_no_crash(&daemon.log());

    // Once the file is fixed, the next reload takes.
    std::fs::write(&victim, &good).unwrap();
    daemon.signal("HUP");
    daemon.expect_log("reloaded", Duration::from_secs(30));
    assert!(daemon.is_running());
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_daemon_started_with_a_bad_prompt_refuses_to_start() {
    for (what, bytes, needle) in bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let prompts = dir.path().join("prompts");
        copy_prompts(&prompts);
        let victim = prompts.join(VICTIM);
        std::fs::write(&victim, &bytes).unwrap();
        let cfg = write_config(dir.path(), &prompts);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ivrd"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ivrd");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("reap ivrd");
                panic!("{what}: ivrd still running after 60 s\n{}", text(&out));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("collect output");
        let all = text(&out);
        assert_eq!(
            out.status.signal(),
            None,
            "{what}: killed by a signal (abort?)\n{all}"
        );
        assert_eq!(out.status.code(), Some(1), "{what}:\n{all}");
        assert!(
            all.contains(&format!("{}: ", victim.display())) && all.contains(needle),
            "{what}: the error does not name {} with {needle:?}:\n{all}",
            victim.display()
        );
        assert_no_crash(&all);
    }
}
