//! The web sign-up of the use case (examples/web-signup: the seed's two forms and a small
//! Python backend holding the API key) end to end in a real browser: headless Chromium
//! (Debian package `chromium`), driven over its DevTools protocol, types into the sign-up
//! form; the test reads the code from the loopback SMS gateway the daemon texted through,
//! types it into the second form, and the page says the number is verified (and the backend's
//! contact is marked verified). Then a second sign-up with a wrong code three times: the page
//! shows the failure.

mod common;

use common::verify::{Rig, pin_in, toml_str, wrong_pin};
use common::*;
use serde_json::{Value, json};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One page of headless Chromium over the DevTools protocol (a WebSocket of JSON messages).
struct Browser {
    _process: Killed,
    _profile: tempfile::TempDir,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let process = Killed(
            Command::new(chromium())
                .args(CHROMIUM_HEADLESS)
                .arg("--remote-debugging-port=0")
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromium"),
        );
        // Chromium writes the port it chose, and the browser's WebSocket path, here.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Ok(text) = std::fs::read_to_string(&active)
                && let Some(Ok(port)) = text.lines().next().map(str::parse)
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let targets = http_get(port, "/json/list");
        let targets: Value = serde_json::from_str(&targets).expect("/json/list");
        let page = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (ws, _) = tungstenite::connect(url).expect("DevTools WebSocket");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Browser {
            _process: process,
            _profile: profile,
            ws,
            next_id: 1,
        }
    }

    /// One DevTools command; its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .expect("send to chromium");
        loop {
            let m = self.ws.read().expect("read from chromium");
            let tungstenite::Message::Text(text) = m else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// A JavaScript expression's value in the page.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        r["result"]["value"].clone()
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('signup')");
    }

    /// Types `text` into the field `id` as a keyboard would (focus, then text input).
    fn type_into(&mut self, id: &str, text: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById({id:?}); e.value = ''; e.focus(); return true; }})()"
        ));
        self.call("Input.insertText", json!({ "text": text }));
        assert_eq!(
            self.eval(&format!("document.getElementById({id:?}).value")),
            json!(text),
            "typing into #{id}"
        );
    }

    fn click(&mut self, id: &str) {
        self.eval(&format!("document.getElementById({id:?}).click(); true"));
    }

    fn wait_for(&mut self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval(condition) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "the page never got to `{condition}`; message: {}",
                self.eval("document.getElementById('message') && document.getElementById('message').textContent")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn message(&mut self) -> (String, String) {
        let state = self.eval("document.getElementById('message').dataset.state");
        let text = self.eval("document.getElementById('message').textContent");
        (
            state.as_str().unwrap_or_default().to_string(),
            text.as_str().unwrap_or_default().to_string(),
        )
    }

    fn sign_up(&mut self, url: &str, phone: &str) {
        self.open(url);
        self.type_into("firstName", "David");
        self.type_into("lastName", "Brown");
        self.type_into("phone", phone);
        self.type_into("email", "david@example.com");
        self.click("signup-submit");
        self.wait_for("document.getElementById('message').dataset.state !== 'none'");
        let (state, text) = self.message();
        assert_eq!(state, "sent", "after signing up: {text}");
    }
}

/// A GET over a plain socket (the DevTools HTTP endpoint, the example's /contacts): the body,
/// by its Content-Length (Chromium keeps the connection open).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

#[test]
fn a_visitor_signs_up_verifies_by_sms_code_and_a_wrong_code_three_times_fails() {
    let rig = Rig::new(200, free_udp_port());
    let api_port = free_tcp_port();
    let _daemon = rig.daemon(&format!(
        "[api]\nlisten = {}\n",
        toml_str(&format!("127.0.0.1:{api_port}"))
    ));
    let key = {
        let out = Command::new(env!("CARGO_BIN_EXE_ivrd"))
            .args(["api-keys", "create", "web-signup", "--db"])
            .arg(rig.db_path())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let site_port = free_tcp_port();
    let python = require_tool("python3");
    let _site = Killed(
        Command::new(python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/web-signup/server.py"))
            .args(["--port", &site_port.to_string(), "--api"])
            .arg(format!("http://127.0.0.1:{api_port}"))
            .env("IVRD_API_KEY", &key)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the example backend"),
    );
    wait_listening(site_port, "the web sign-up backend");
    let url = format!("http://127.0.0.1:{site_port}/");
    let mut browser = Browser::start();

    // Sign up, read the code from the SMS, type it: verified.
    browser.sign_up(&url, "+49 151 12345678");
    let posts = rig.sms.wait_posts(1, Duration::from_secs(10));
    assert_eq!(posts[0].field("to"), "+4915112345678");
    let code = pin_in(&posts[0].text(), 6);
    browser.type_into("code", &code);
    browser.click("verify-submit");
    browser.wait_for("document.getElementById('message').dataset.state !== 'sent'");
    let (state, text) = browser.message();
    assert_eq!(state, "verified", "{text}");
    assert!(text.contains("+4915112345678"), "{text}");
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 1000,
        "a real screenshot"
    );
    let contacts: Value = serde_json::from_str(&http_get(site_port, "/contacts")).unwrap();
    assert_eq!(contacts[0]["phone"], "+4915112345678");
    assert_eq!(contacts[0]["verified"], true, "{contacts}");

    // Another visitor types a wrong code three times: the page shows the failure.
    browser.sign_up(&url, "+49 151 12345679");
    let posts = rig.sms.wait_posts(2, Duration::from_secs(10));
    let wrong = wrong_pin(&pin_in(&posts[1].text(), 6));
    for (i, tries_left) in [(1, Some(2)), (2, Some(1)), (3, None)] {
        browser.type_into("code", &wrong);
        browser.click("verify-submit");
        browser.wait_for(&format!(
            "document.getElementById('message').dataset.state !== 'sent' && \
             document.getElementById('message').dataset.try !== '{i}'"
        ));
        // Tag the message so the next wait sees the next answer, not this one.
        browser.eval(&format!(
            "document.getElementById('message').dataset.try = '{i}'; true"
        ));
        let (state, text) = browser.message();
        match tries_left {
            Some(n) => {
                assert_eq!(state, "wrong", "try {i}: {text}");
                assert!(text.contains(&format!("{n} tries left")), "try {i}: {text}");
                browser.eval("document.getElementById('message').dataset.state = 'sent'; true");
            }
            None => {
                assert_eq!(state, "failed", "try {i}: {text}");
                assert!(text.contains("max_attempts_reached"), "{text}");
            }
        }
    }
    let contacts: Value = serde_json::from_str(&http_get(site_port, "/contacts")).unwrap();
    assert_eq!(contacts[1]["verified"], false, "{contacts}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 screenshot")
}
