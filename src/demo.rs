//! The built-in demo flow, until dialplans exist: welcome, collect digits, read them back,
//! goodbye. It exercises the whole call API (prompts with barge-in, digit collection with
//! timeouts and a terminator, type-ahead) so the daemon is useful to call on day one.

use crate::call::{CallEnd, CallIo, CollectEnd, CollectSpec};
use crate::config::DemoConfig;
use std::time::Duration;
use tracing::info;

/// The prompts the demo needs in the default language (checked at start-up).
pub const PROMPTS: &[&str] = &[
    "demo-welcome",
    "enter-digits",
    "you-entered",
    "no-input",
    "goodbye",
    "digit-0",
    "digit-1",
    "digit-2",
    "digit-3",
    "digit-4",
    "digit-5",
    "digit-6",
    "digit-7",
    "digit-8",
    "digit-9",
    "star",
    "hash",
];

/// The prompt that speaks one key.
pub fn digit_prompt(c: char) -> Option<String> {
    match c {
        '0'..='9' => Some(format!("digit-{c}")),
        '*' => Some("star".into()),
        '#' => Some("hash".into()),
        _ => None,
    }
}

pub async fn run<C: CallIo + Send>(call: &mut C, cfg: &DemoConfig) -> Result<(), CallEnd> {
    let spec = CollectSpec {
        escape: Vec::new(),
        min: 1,
        max: cfg.max_digits,
        terminator: Some(cfg.terminator),
        first_digit_timeout: Duration::from_millis(cfg.first_digit_timeout_ms),
        inter_digit_timeout: Duration::from_millis(cfg.inter_digit_timeout_ms),
    };
    call.play(&["demo-welcome"], true).await?;
    for _ in 0..cfg.rounds {
        call.play(&["enter-digits"], true).await?;
        let got = call.collect(&spec).await?;
        if got.digits.is_empty() {
            info!(ended_by = ?got.ended_by, "no input");
            call.play(&["no-input"], true).await?;
            continue;
        }
        let methods: Vec<&str> = got.methods.iter().map(|m| m.as_str()).collect();
        // Digits typed at an IVR are not secrets in the demo; the PIN flow never logs them.
        info!(
            digits = %got.digits,
            methods = %methods.join(","),
            ended_by = match got.ended_by { CollectEnd::Terminator => "terminator", CollectEnd::MaxDigits => "max", CollectEnd::Timeout => "timeout", CollectEnd::Escape => "escape" },
            "collected"
        );
        let mut names: Vec<String> = vec!["you-entered".into()];
        names.extend(got.digits.chars().filter_map(digit_prompt));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        call.play(&refs, true).await?;
    }
    call.play(&["goodbye"], false).await?;
    Ok(())
}
