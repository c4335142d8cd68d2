//! Every branch of the shipped `dialplans/verify.toml`, walked by the simulator.
//!
//! These tests pin down what a caller hears and what the audit records for each way through
//! the verification flow, on the plan file as shipped (so editing the plan in a way that
//! changes caller experience fails here, on purpose).

use super::model::Dialplan;
use super::run::Outcome;
use super::services::{CheckPinOutcome, LookupBy, LookupOutcome, SendPinOutcome};
use super::sim::{SimCall, SimEvent, Simulation, sim_facts, simulate};
use super::testing::{FAKE_PIN, FakeServices, block_on, shipped};
use crate::call::CallEnd;
use crate::dialplan::run::FlowEvent;
use std::time::Duration;

const QUEUE: &str = "sip:queue@pbx.example.com";
const FALLBACK: &str = "sip:fallback@pbx.example.com";

fn verify() -> Dialplan {
    shipped("verify").unwrap_or_else(|p| panic!("verify.toml: {p:?}"))
}

fn run_with(script: &str, services: &FakeServices, fail_transfers: &[&str]) -> Simulation {
    let plan = verify();
    let call = SimCall::new(sim_facts("+4915112345678", "100"), script)
        .unwrap()
        .sms_capture(services.capture())
        .fail_transfers(fail_transfers.iter().copied());
    block_on(simulate(&plan, call, services))
}

fn run(script: &str, tweak: impl FnOnce(&mut FakeServices)) -> (Simulation, FakeServices) {
    let mut services = FakeServices::new();
    tweak(&mut services);
    let sim = run_with(script, &services, &[]);
    (sim, services)
}

/// Every prompt played, in order, as `name` (interrupted ones too).
fn heard(sim: &Simulation) -> Vec<String> {
    sim.transcript
        .iter()
        .filter_map(|e| match &e.event {
            SimEvent::Play { prompts, .. } => Some(prompts.join("+")),
            _ => None,
        })
        .collect()
}

fn steps(sim: &Simulation) -> Vec<String> {
    sim.result
        .trail
        .iter()
        .map(|t| format!("{}:{}", t.step, t.outcome))
        .collect()
}

type Headers = Vec<(String, String)>;

/// Every transfer: target, headers, outcome.
fn transfers(sim: &Simulation) -> Vec<(String, Headers, String)> {
    sim.transcript
        .iter()
        .filter_map(|e| match &e.event {
            SimEvent::Flow(FlowEvent::Transfer {
                target,
                headers,
                outcome,
                ..
            }) => Some((target.clone(), headers.clone(), outcome.clone())),
            _ => None,
        })
        .collect()
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn assert_no_pin(sim: &Simulation) {
    let text = sim.format();
    assert!(
        !text.contains("4711"),
        "the PIN leaked into the transcript:\n{text}"
    );
}

#[test]
fn verified_caller_reaches_the_queue_with_headers() {
    let (sim, services) = run("123456 {pin}", |_| {});
    let text = sim.format();
    assert_eq!(sim.result.outcome, Outcome::Verified, "{text}");
    assert_eq!(sim.result.customer_id.as_deref(), Some("123456"));
    assert_eq!(sim.result.transferred_to.as_deref(), Some(QUEUE));
    assert_eq!(sim.result.end, None);
    assert_eq!(sim.result.call_result(), Ok(()));
    assert_eq!(
        transfers(&sim),
        vec![(
            QUEUE.to_string(),
            headers(&[("X-Customer-Id", "123456"), ("X-Verified", "yes")]),
            "transferred".to_string()
        )]
    );
    assert_eq!(
        steps(&sim),
        [
            "welcome:next",
            "ask_id:input",
            "lookup:found",
            "send_pin:sent",
            "ask_pin:input",
            "check:valid",
            "customer_language:next",
            "verified:next",
            "to_queue:transferred"
        ]
    );
    // The 4-digit PIN went to the customer, in the plan language (no language on record).
    let reqs = services.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (
            reqs[0].customer_id.as_str(),
            reqs[0].length,
            reqs[0].language.as_str()
        ),
        ("123456", 4, "en")
    );
    assert_eq!(reqs[0].caller, "+4915112345678");
    assert_eq!(services.lookups(), [(LookupBy::Id, "123456".to_string())]);
    assert_eq!(
        services.sent()[0].text,
        "Your verification PIN is 4711. It is valid for 5 minutes."
    );
    // The caller heard "sending-pin" while the SMS went out, and "verified" before the queue.
    assert!(
        text.contains("sms to +4915112345678: \"Your verification PIN is ****."),
        "{text}"
    );
    assert!(
        text.contains("play sending-pin (en, 2.000s): played"),
        "{text}"
    );
    assert!(text.contains("set pin = ****"), "{text}");
    assert!(text.contains("collected **** (max digits): ok"), "{text}");
    assert!(text.contains("key (PIN digit)"), "{text}");
    assert_no_pin(&sim);
    assert!(heard(&sim).ends_with(&["sending-pin".into(), "enter-pin".into(), "verified".into()]));
}

#[test]
fn a_caller_who_listens_hears_every_prompt_and_the_hash_is_swallowed() {
    // W W: welcome, then the customer-number prompt; '#' after the 6th digit is habit.
    let (sim, _) = run("W W 123456# W W {pin}#", |_| {});
    let text = sim.format();
    assert_eq!(sim.result.outcome, Outcome::Verified, "{text}");
    assert!(
        !text.contains("interrupted") && !text.contains("skipped"),
        "{text}"
    );
    assert_eq!(
        heard(&sim),
        [
            "welcome",
            "enter-customer-id",
            "sending-pin",
            "enter-pin",
            "verified"
        ]
    );
    // The id was typed at 4 s (after two 2-second prompts).
    assert!(text.contains("[00:04.000] key 1"), "{text}");
    assert!(
        !text.contains("invalid"),
        "the '#' must not end the next entry empty:\n{text}"
    );
}

#[test]
fn german_customer_hears_german_after_lookup() {
    let (sim, services) = run("654321 {pin}", |_| {});
    assert_eq!(sim.result.outcome, Outcome::Verified);
    assert_eq!(services.requests()[0].language, "de");
    assert_eq!(
        services.sent()[0].text,
        "Ihre Verifizierungs-PIN lautet 4711. Sie ist 5 Minuten gültig."
    );
    let langs: Vec<(String, String)> = sim
        .transcript
        .iter()
        .filter_map(|e| match &e.event {
            SimEvent::Play {
                prompts, language, ..
            } => Some((prompts.join("+"), language.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        langs.first().unwrap(),
        &("welcome".to_string(), "en".to_string())
    );
    assert_eq!(
        langs.last().unwrap(),
        &("verified".to_string(), "de".to_string())
    );
}

/// What the caller hears, with when: (virtual time, prompt, language).
fn heard_when(sim: &Simulation) -> Vec<(Duration, String, String)> {
    sim.transcript
        .iter()
        .filter_map(|e| match &e.event {
            SimEvent::Play {
                prompts, language, ..
            } => Some((e.at, prompts.join("+"), language.clone())),
            _ => None,
        })
        .collect()
}

/// Three wrong PINs, each typed once the previous prompt ended.
const THREE_WRONG: &str = "W W W W 0000 W W 0000 W W 0000";

/// No oracle: an unknown number hears what a registered one hears, at the same moments, up
/// to and through the failed PIN check; nothing is sent, and only the audit knows.
#[test]
fn unknown_customer_hears_what_a_known_one_hears_and_fails_the_pin_check() {
    let (known, known_services) = run(&format!("123456 {THREE_WRONG}"), |_| {});
    let (unknown, services) = run(&format!("999999 {THREE_WRONG}"), |_| {});
    assert_eq!(
        known.result.outcome,
        Outcome::WrongPin,
        "{}",
        known.format()
    );
    assert_eq!(
        unknown.result.outcome,
        Outcome::UnknownCustomer,
        "{}",
        unknown.format()
    );
    assert_eq!(unknown.result.customer_id, None);
    assert_eq!(heard_when(&unknown), heard_when(&known));
    assert_eq!(steps(&unknown), steps(&known));
    assert!(heard(&unknown).ends_with(&["wrong-pin".into(), "fallback".into()]));
    assert_eq!(known_services.sent().len(), 1);
    assert!(services.sent().is_empty(), "a decoy sent an SMS");
    let reqs = services.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].decoy);
    assert!(unknown.format().contains("not found: decoy"));
    assert_eq!(
        transfers(&unknown),
        vec![(
            FALLBACK.to_string(),
            headers(&[("X-Customer-Id", "999999"), ("X-Verified", "no")]),
            "transferred".to_string()
        )]
    );
}

/// With the prompts' pauses known (as `ivrd simulate` knows them), the wait prompt ends at
/// its first pause once the SMS is out, as the daemon's does, and the PIN prompt follows at
/// once; without them it plays in full.
#[test]
fn the_wait_prompt_is_cut_at_its_first_pause_once_the_sms_is_out() {
    let services = FakeServices::new();
    let plan = verify();
    let call = SimCall::new(sim_facts("+4915112345678", "100"), "123456 W W {pin}")
        .unwrap()
        .sms_capture(services.capture())
        .prompt_durations(|_, p| {
            if p == "sending-pin" {
                Duration::from_millis(4000)
            } else {
                Duration::from_secs(1)
            }
        })
        .prompt_pauses(|_, p| {
            if p == "sending-pin" {
                vec![Duration::from_millis(720), Duration::from_millis(3540)]
            } else {
                Vec::new()
            }
        });
    let sim = block_on(simulate(&plan, call, &services));
    let text = sim.format();
    let when = heard_when(&sim);
    let wait = when
        .iter()
        .position(|(_, p, _)| p == "sending-pin")
        .unwrap();
    let (t, next, _) = &when[wait + 1];
    assert_eq!(next, "enter-pin", "{text}");
    assert_eq!(*t - when[wait].0, Duration::from_millis(720), "{text}");
    assert!(text.contains("0.720s): cut at a pause"), "{text}");
    assert_eq!(sim.result.outcome, Outcome::Verified, "{text}");
    // Without pauses: played in full (1 s by default here).
    let (full, _) = run("123456 W W {pin}", |_| {});
    assert!(!full.format().contains("cut at a pause"));
}

#[test]
fn no_input_three_times_goes_to_fallback() {
    let (sim, _) = run("", |_| {});
    let text = sim.format();
    assert_eq!(sim.result.outcome, Outcome::NoInput, "{text}");
    assert_eq!(sim.result.transferred_to.as_deref(), Some(FALLBACK));
    assert_eq!(
        heard(&sim),
        [
            "welcome",
            "enter-customer-id",
            "no-input",
            "enter-customer-id",
            "no-input",
            "enter-customer-id",
            "no-input",
            "fallback"
        ]
    );
    // welcome 2 s, then 3 x (prompt 2 s + 8 s first-digit timeout + no-input 2 s), fallback
    // 2 s, transfer 1 s: the virtual clock makes the timing exact.
    assert_eq!(
        sim.transcript.last().unwrap().at,
        Duration::from_secs(2 + 3 * 12 + 2 + 1)
    );
    // Without input the fallback transfer leaves the empty customer header out.
    assert_eq!(transfers(&sim)[0].1, headers(&[("X-Verified", "no")]));
}

#[test]
fn an_id_that_does_not_match_the_pattern_is_invalid() {
    // "*12345" is six keys (max), but not six digits.
    let (sim, _) = run("*12345 W W 123456 {pin}", |_| {});
    let text = sim.format();
    assert_eq!(sim.result.outcome, Outcome::Verified, "{text}");
    assert!(
        text.contains("collected \"*12345\" (max digits): invalid"),
        "{text}"
    );
    assert_eq!(
        heard(&sim)[..4],
        [
            "welcome",
            "enter-customer-id",
            "invalid",
            "enter-customer-id"
        ]
    );
}

#[test]
fn invalid_ids_three_times_go_to_fallback() {
    // Too short, ended by '#', three times.
    let (sim, _) = run("123# W W 45# W W 6#", |_| {});
    assert_eq!(
        sim.result.outcome,
        Outcome::InvalidInput,
        "{}",
        sim.format()
    );
    assert_eq!(heard(&sim).iter().filter(|p| *p == "invalid").count(), 3);
    assert_eq!(sim.result.transferred_to.as_deref(), Some(FALLBACK));
}

#[test]
fn three_wrong_pins_go_to_fallback() {
    let (sim, _) = run("123456 W W 0000 W W 0000 W W 0000", |_| {});
    let text = sim.format();
    assert_eq!(sim.result.outcome, Outcome::WrongPin, "{text}");
    assert_eq!(sim.result.customer_id.as_deref(), Some("123456"));
    assert_eq!(sim.result.transferred_to.as_deref(), Some(FALLBACK));
    let checks: Vec<String> = steps(&sim)
        .into_iter()
        .filter(|s| s.starts_with("check:"))
        .collect();
    assert_eq!(
        checks,
        ["check:invalid", "check:invalid", "check:exhausted"]
    );
    assert!(
        text.contains("check_pin customer 123456, PIN **** -> invalid, 2 tries left"),
        "{text}"
    );
    assert!(text.contains("set check.tries_left = \"1\""), "{text}");
    assert_eq!(heard(&sim).iter().filter(|p| *p == "wrong-pin").count(), 3);
    assert!(heard(&sim).ends_with(&["wrong-pin".into(), "fallback".into()]));
    assert_eq!(
        transfers(&sim)[0].1,
        headers(&[("X-Customer-Id", "123456"), ("X-Verified", "no")])
    );
}

/// "*" at the PIN prompt sends the text again, in one step; the same plan goes on.
#[test]
fn star_at_the_pin_prompt_sends_the_text_again() {
    let (sim, services) = run("123456 W W * W W {pin}", |_| {});
    assert_eq!(sim.result.outcome, Outcome::Verified, "{}", sim.format());
    assert_eq!(services.requests().len(), 2, "{}", sim.format());
    let steps = steps(&sim);
    assert!(
        steps.contains(&"ask_pin:star".to_string())
            && steps.contains(&"resend_pin:sent".to_string()),
        "{steps:?}"
    );
    // An unknown number's star is a decoy's resend: nothing goes out.
    let (sim, services) = run("999999 W W * W W 0000", |_| {});
    assert_eq!(sim.result.outcome, Outcome::UnknownCustomer);
    assert!(services.sent().is_empty());
    assert_eq!(services.requests().len(), 2);
    assert!(services.requests().iter().all(|r| r.decoy));
}

#[test]
fn wrong_then_right_pin_is_verified() {
    let (sim, _) = run("123456 W W 0000 W W {pin}", |_| {});
    assert_eq!(sim.result.outcome, Outcome::Verified, "{}", sim.format());
    let checks: Vec<String> = steps(&sim)
        .into_iter()
        .filter(|s| s.starts_with("check:"))
        .collect();
    assert_eq!(checks, ["check:invalid", "check:valid"]);
    assert_no_pin(&sim);
}

#[test]
fn sms_failure_says_so_and_goes_to_fallback() {
    let (sim, _) = run("123456", |s| {
        s.send = Some(SendPinOutcome::Failed("provider down".into()))
    });
    assert_eq!(sim.result.outcome, Outcome::SmsFailed);
    assert_eq!(sim.result.transferred_to.as_deref(), Some(FALLBACK));
    assert!(heard(&sim).ends_with(&["sending-pin".into(), "sms-failed".into(), "fallback".into()]));
    assert!(
        sim.format()
            .contains("send_pin customer 123456, en, 4 digits -> failed: provider down")
    );
}

#[test]
fn rate_limited_goes_to_fallback() {
    let (sim, _) = run("123456", |s| s.send = Some(SendPinOutcome::RateLimited));
    assert_eq!(sim.result.outcome, Outcome::RateLimited);
    assert!(heard(&sim).ends_with(&["sending-pin".into(), "fallback".into()]));
    assert_eq!(sim.result.transferred_to.as_deref(), Some(FALLBACK));
}

#[test]
fn locked_out_goes_to_fallback_at_every_stage() {
    // Locked out at the lookup: a decoy, like an unknown number; the audit names the customer.
    let (sim, _) = run(&format!("123456 {THREE_WRONG}"), |s| {
        s.lookup = Some(LookupOutcome::LockedOut)
    });
    let (known, _) = run(&format!("123456 {THREE_WRONG}"), |_| {});
    assert_eq!(sim.result.outcome, Outcome::LockedOut);
    assert_eq!(sim.result.customer_id.as_deref(), Some("123456"));
    assert_eq!(heard_when(&sim), heard_when(&known));

    let (sim, _) = run("123456", |s| s.send = Some(SendPinOutcome::LockedOut));
    assert_eq!(sim.result.outcome, Outcome::LockedOut);
    assert_eq!(steps(&sim)[3], "send_pin:locked");

    let (sim, _) = run("123456 {pin}", |s| {
        s.check = Some(CheckPinOutcome::LockedOut)
    });
    assert_eq!(sim.result.outcome, Outcome::LockedOut);
    assert_eq!(sim.result.transferred_to.as_deref(), Some(FALLBACK));
}

#[test]
fn expired_pin_and_store_errors_go_to_fallback() {
    let (sim, _) = run("123456 {pin}", |s| s.check = Some(CheckPinOutcome::Expired));
    assert_eq!(sim.result.outcome, Outcome::PinExpired);
    assert_eq!(sim.result.transferred_to.as_deref(), Some(FALLBACK));

    let (sim, _) = run("123456", |s| {
        s.lookup = Some(LookupOutcome::Error("database is locked".into()))
    });
    assert_eq!(sim.result.outcome, Outcome::Error);
    assert_eq!(
        sim.result.error.as_deref(),
        Some("customer lookup: database is locked")
    );
    assert_eq!(sim.result.transferred_to.as_deref(), Some(FALLBACK));
}

#[test]
fn failed_queue_transfer_says_goodbye() {
    let services = FakeServices::new();
    let sim = run_with("123456 {pin}", &services, &[QUEUE]);
    let text = sim.format();
    assert_eq!(sim.result.outcome, Outcome::TransferFailed, "{text}");
    assert_eq!(sim.result.transferred_to, None);
    assert_eq!(sim.result.end, None);
    assert!(heard(&sim).ends_with(&["verified".into(), "goodbye".into()]));
    assert!(
        text.contains("-> failed: 486 Busy Here (simulated)"),
        "{text}"
    );
    assert!(text.contains("ivrd hangs up"), "{text}");
    assert_eq!(steps(&sim).last().unwrap(), "goodbye:hangup");

    // A failed fallback transfer keeps the verification outcome.
    let sim = run_with("999999", &services, &["*"]);
    assert_eq!(sim.result.outcome, Outcome::UnknownCustomer);
    assert!(heard(&sim).ends_with(&["fallback".into(), "goodbye".into()]));
}

#[test]
fn caller_hanging_up_mid_flow_is_recorded_as_such() {
    // Hangs up a second after typing the number, while the SMS goes out.
    let (sim, _) = run("123456 w !", |_| {});
    let text = sim.format();
    assert_eq!(sim.result.outcome, Outcome::CallerHangup, "{text}");
    assert_eq!(sim.result.end, Some(CallEnd::CallerHangup));
    assert_eq!(sim.result.call_result(), Err(CallEnd::CallerHangup));
    assert_eq!(steps(&sim).last().unwrap(), "send_pin:call-ended");
    assert!(
        text.contains("play sending-pin (en, 2.000s): caller hung up at 00:01.000"),
        "{text}"
    );

    // After one wrong PIN (tries left) hanging up is abandoning, not failing.
    let (sim, _) = run("123456 W W 0000 W !", |_| {});
    assert_eq!(
        sim.result.outcome,
        Outcome::CallerHangup,
        "{}",
        sim.format()
    );

    // After a final verdict, the verdict stands.
    let (sim, _) = run("999999 w w !", |_| {});
    assert_eq!(sim.result.outcome, Outcome::UnknownCustomer);
    assert_eq!(sim.result.end, Some(CallEnd::CallerHangup));
}

#[test]
fn the_pin_is_typed_from_the_sms_and_never_shown() {
    let (sim, services) = run("123456 {pin}", |_| {});
    assert_eq!(services.sent()[0].pin, FAKE_PIN[..4]);
    let keys: Vec<bool> = sim
        .transcript
        .iter()
        .filter_map(|e| match e.event {
            SimEvent::Key { masked, .. } => Some(masked),
            _ => None,
        })
        .collect();
    assert_eq!(
        keys,
        [
            false, false, false, false, false, false, true, true, true, true
        ]
    );
    assert_no_pin(&sim);
}

#[test]
#[ignore = "prints transcripts for a human to read"]
fn print_transcripts() {
    for script in [
        "W W 123456# W W {pin}#",
        "123456 W W 0000 W !",
        "999999 w w !",
    ] {
        let (sim, _) = run(script, |_| {});
        println!("--- {script}\n{}", sim.format());
    }
}

#[test]
fn the_demo_plan_reads_a_number_back_in_german() {
    let plan = shipped("demo").unwrap_or_else(|p| panic!("demo.toml: {p:?}"));
    let services = FakeServices::new();
    let call = SimCall::new(sim_facts("+4930111", "200"), "2 W 2024# W W 0815#").unwrap();
    let sim = block_on(simulate(&plan, call, &services));
    let text = sim.format();
    assert_eq!(
        heard(&sim),
        [
            "demo-welcome",
            "language-menu",
            "enter-digits",
            "you-entered",
            "num-2+num-thousand+num-4+num-and+num-20",
            "enter-digits",
            "you-entered",
            "digit-0+digit-8+digit-1+digit-5",
            "goodbye"
        ],
        "{text}"
    );
    assert!(text.contains("language de"), "{text}");
    assert!(text.contains("set round = \"2\""), "{text}");
    assert_eq!(sim.result.outcome, Outcome::Completed, "{text}");
}
