//! Secrets from files, with the real daemon and real peers:
//! - the `webhook` SMS provider's `Authorization` header comes from `headers_file`, found in a
//!   `$CREDENTIALS_DIRECTORY` as systemd's `LoadCredential=credentials:/etc/ivrd/credentials`
//!   lays it out (the config's directory has no such file), and the HTTP request a real
//!   verification sends carries it; after the file changes, a SIGHUP makes the next SMS carry
//!   the new value;
//! - the `[transfer]` digest password comes from `password_file`: the caller (`RawUac`)
//!   challenges ivrd's REFER with a 407, and the answer is computed with the password in the
//!   file, and with the new one after a reload.
//!
//! Neither secret may appear in the daemon's log. Needs nothing beyond the harness.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Erika (examples/customers.csv): she gets an SMS when she types her number.
const ERIKA: &str = "123456";
const KEY_GAP: Duration = Duration::from_millis(300);
/// From the first key to the SMS: lookup and the SMS request, on a loaded machine.
const SMS_TIMEOUT: Duration = Duration::from_secs(30);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

/// Writes a secret as root would: mode 0600 (0400 for systemd's copies).
fn write_secret(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn assert_not_logged(daemon: &Daemon, secrets: &[&str]) {
    let log = daemon.log();
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "the secret {secret:?} is in the daemon log"
        );
    }
}

/// One call that types Erika's customer number and waits for the SMS it triggers; returns
/// the `Authorization` header the gateway received.
fn sms_authorization(daemon: &Daemon, sink: &SmsSink, nth: usize) -> String {
    let mut uac = RawUac::call(daemon.sip_addr(), "100");
    uac.info_digits(ERIKA, KEY_GAP);
    let posts = sink.wait_posts(nth, SMS_TIMEOUT);
    assert_eq!(uac.bye(), 200, "BYE\n{}", uac.transcript());
    posts[nth - 1]
        .header("authorization")
        .unwrap_or_else(|| panic!("the SMS request has no Authorization header: {:?}", posts))
        .to_string()
}

#[test]
fn webhook_header_comes_from_a_systemd_credential_and_is_reread_on_reload() {
    let sink = SmsSink::start(200);
    let state = tempfile::tempdir().unwrap();
    // What systemd makes of /etc/ivrd/credentials/webhook-auth with
    // LoadCredential=credentials:/etc/ivrd/credentials: a private copy, named with `_`.
    let creds = tempfile::tempdir().unwrap();
    let cred = creds.path().join("credentials_webhook-auth");
    write_secret(&cred, "Bearer cred-s3cret-one\n", 0o400);

    let daemon = Daemon::start_with_env(
        &format!(
            r#"
[demo]
enabled = false
[dialplans]
dir = {dir}
default = "verify"
vars = {{ queue = "sip:queue@127.0.0.1:9", fallback = "sip:fallback@127.0.0.1:9" }}
[store]
path = {db}
seed_csv = {seed}
[sms]
provider = "webhook"
url = {url}
headers = {{ X-Tenant = "acme" }}
headers_file = {{ Authorization = "credentials/webhook-auth" }}
max_retries = 0
"#,
            dir = toml_path(&manifest_dir().join("dialplans")),
            db = toml_path(&state.path().join("ivrd.db")),
            seed = toml_path(&manifest_dir().join("examples/customers.csv")),
            url = toml_str(&sink.url()),
        ),
        &[("CREDENTIALS_DIRECTORY", creds.path())],
    );
    // The relative path names no file beside the config: the value can only have come
    // from the credentials directory.
    assert!(!daemon.dir().join("credentials/webhook-auth").exists());

    assert_eq!(
        sms_authorization(&daemon, &sink, 1),
        "Bearer cred-s3cret-one"
    );
    assert_eq!(sink.posts()[0].header("x-tenant"), Some("acme"));

    // A rotated secret takes effect on reload (systemd would copy a new credential on a
    // restart; the daemon's part is to read the file again, which a reload does).
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
    write_secret(&cred, "Bearer cred-s3cret-two\n", 0o400);
    let mut daemon = daemon;
    daemon.signal("HUP");
    daemon.expect_log("reloaded", Duration::from_secs(30));
    assert_eq!(
        sms_authorization(&daemon, &sink, 2),
        "Bearer cred-s3cret-two"
    );

    assert_not_logged(&daemon, &["cred-s3cret"]);
}

/// A plan that transfers every call to `${queue}` at once.
fn transfer_plan(dir: &Path) -> PathBuf {
    let plans = dir.join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(
        plans.join("xfer.toml"),
        r#"
[dialplan]
name = "xfer"
description = "Transfer every call to the queue at once"
start = "to_queue"
language = "en"
languages = ["en"]
numbers = []

[vars]
queue = "sip:queue@127.0.0.1:9"

[steps.to_queue]
transfer = "${queue}"
on_failure = "goodbye"

[steps.goodbye]
hangup = ["goodbye"]
"#,
    )
    .unwrap();
    plans
}

/// One call: ivrd's REFER is challenged with a 407, and the `response=` of the second REFER
/// must be the digest of `password`; then the transfer succeeds and ivrd hangs up.
fn refer_answers_challenge_with(daemon: &Daemon, password: &str) {
    let mut uac = RawUac::call(daemon.sip_addr(), "200");
    let refer = uac.expect_request("REFER", Duration::from_secs(15));
    let challenge = "Digest realm=\"pbx.test\", nonce=\"n0nce-4711\", algorithm=MD5";
    uac.respond_with(
        &refer,
        407,
        "Proxy Authentication Required",
        &[("Proxy-Authenticate", challenge)],
    );
    let again = uac.expect_request("REFER", Duration::from_secs(10));
    let answer = header_value(&again, "Proxy-Authorization", None)
        .unwrap_or_else(|| panic!("the second REFER has no Proxy-Authorization:\n{again}"));
    let param = |name: &str| {
        answer
            .split(',')
            .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no {name}= in {answer}"))
    };
    assert!(answer.starts_with("Digest username=\"ivrd\""), "{answer}");
    let ch = ivrd::sip::auth::parse_challenge(challenge).expect("challenge parses");
    let want = ivrd::sip::auth::authorization(&ch, "ivrd", password, "REFER", &param("uri"), "-");
    let want_response = want
        .split(',')
        .find_map(|p| p.trim().strip_prefix("response="))
        .map(|v| v.trim_matches('"').to_string())
        .expect("response in our own answer");
    assert_eq!(
        param("response"),
        want_response,
        "the digest was not made with the password from the file"
    );
    uac.respond(&again, 202, "Accepted");
    assert_eq!(
        uac.notify_sipfrag("SIP/2.0 200 OK", "terminated;reason=noresource"),
        200
    );
    let bye = uac.expect_request("BYE", Duration::from_secs(10));
    uac.respond(&bye, 200, "OK");
}

#[test]
fn transfer_password_comes_from_password_file_and_is_reread_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let plans = transfer_plan(dir.path());
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let password = secrets.join("pbx-password");
    write_secret(&password, "pbx-pa55-one\n", 0o600);

    let mut daemon = Daemon::start(&format!(
        "[demo]\nenabled = false\n\
         [dialplans]\ndir = {}\ndefault = \"xfer\"\n\
         [transfer]\nusername = \"ivrd\"\npassword_file = {}\ntimeout_secs = 10\n",
        toml_path(&plans),
        toml_path(&password),
    ));
    refer_answers_challenge_with(&daemon, "pbx-pa55-one");

    write_secret(&password, "pbx-pa55-two\n", 0o600);
    daemon.signal("HUP");
    daemon.expect_log("reloaded", Duration::from_secs(30));
    refer_answers_challenge_with(&daemon, "pbx-pa55-two");

    // A password file anyone may read is refused on reload, naming key and file; the
    // running credentials stay.
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    daemon.signal("HUP");
    daemon.expect_log("reload failed", Duration::from_secs(30));
    let failure = daemon.log_lines("reload failed").join("\n");
    assert!(
        failure.contains("[transfer] password_file")
            && failure.contains(&password.display().to_string())
            && failure.contains("readable by every user"),
        "{failure}"
    );
    refer_answers_challenge_with(&daemon, "pbx-pa55-two");

    assert_not_logged(&daemon, &["pbx-pa55"]);
}
