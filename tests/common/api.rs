//! The HTTP API as its clients see it: a reqwest client against the running daemon, and API
//! keys made by the `ivrd api-keys` binary on the daemon's own database.

use serde_json::{Value, json};
use std::process::Command;

pub struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(port: u16) -> Api {
        Api {
            rt: tokio::runtime::Runtime::new().unwrap(),
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `(status, Retry-After, JSON body)`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Option<String>, Value) {
        self.rt.block_on(async {
            let url = format!("{}{path}", self.base);
            let mut req = match method {
                "GET" => self.http.get(url),
                _ => self.http.post(url),
            };
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.expect("API request");
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let json: Value = resp.json().await.expect("a JSON body");
            (status, retry, json)
        })
    }

    pub fn start(&self, key: &str, body: Value) -> (u16, Option<String>, Value) {
        self.call("POST", "/v1/verifications", Some(key), Some(body))
    }

    pub fn check(&self, key: &str, id: &str, code: &str) -> (u16, Value) {
        let (s, _, v) = self.call(
            "POST",
            &format!("/v1/verifications/{id}/check"),
            Some(key),
            Some(json!({ "code": code })),
        );
        (s, v)
    }
}

pub fn make_key(db: &std::path::Path, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["api-keys", "create", name, "--db"])
        .arg(db)
        .output()
        .expect("run ivrd api-keys");
    assert!(
        out.status.success(),
        "ivrd api-keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
