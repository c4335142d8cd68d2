//! The dialplan `http` step against a real HTTP server on loopback (wiremock), in the running
//! daemon with a SIP caller (`RawUac`, digits as SIP INFO): the CRM's answer becomes a
//! variable the transfer carries; a customer the CRM does not know, and a CRM that answers
//! too slowly, go to the fallback with the reason; the caller's digits reach the CRM
//! percent-encoded in the path, never anywhere else.

mod common;

use common::verify::{FLOW_TIMEOUT, KEY_GAP, target, toml_str};
use common::*;
use std::time::{Duration, Instant};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A CRM: customer 123456 is gold; 555555 answers after 5 s; anything else is 404.
fn crm(rt: &tokio::runtime::Runtime) -> MockServer {
    rt.block_on(async {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/customers/123456"))
            .and(header("authorization", "Bearer crm-token"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    serde_json::json!({"name": "Erika", "account": {"tier": "gold"}}),
                ),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/customers/555555"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"account": {"tier": "slow"}}))
                    .set_delay(Duration::from_secs(5)),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(404))
            .mount(&server)
            .await;
        server
    })
}

fn plan(crm: &str) -> String {
    format!(
        r#"
[dialplan]
name = "crm"
start = "ask"

[vars]
queue = "sip:queue@pbx.example.com"
fallback = "sip:fallback@pbx.example.com"
crm_token = ""

[steps.ask]
collect = "customer_id"
prompt = ["enter-customer-id"]
min = 6
max = 6
on_input = "lookup"
on_failure = "bye"

[steps.lookup]
http = "{crm}/api/customers/${{customer_id}}"
headers = {{ Authorization = "Bearer ${{crm_token}}" }}
timeout = "1500ms"
vars = {{ tier = "/account/tier" }}
on_ok = "queue"
on_error = "fallback"

[steps.queue]
transfer = "${{queue}}"
headers = {{ X-Customer-Id = "${{customer_id}}", X-Tier = "${{tier}}" }}
on_failure = "bye"

[steps.fallback]
transfer = "${{fallback}}"
headers = {{ X-Crm-Status = "${{lookup.status}}" }}
on_failure = "bye"

[steps.bye]
hangup = []
"#
    )
}

#[test]
fn the_crms_answer_steers_the_transfer_and_its_failures_go_to_the_fallback() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = crm(&rt);
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(plans.join("crm.toml"), plan(&server.uri())).unwrap();
    let queue = target("queue", free_udp_port());
    let fallback = target("fallback", free_udp_port());
    let daemon = Daemon::start(&format!(
        "[demo]\nenabled = false\n[dialplans]\ndir = {}\ndefault = \"crm\"\n\
         vars = {{ queue = {}, fallback = {}, crm_token = \"crm-token\" }}\n\
         [store]\npath = {}\n",
        toml_str(&plans.display().to_string()),
        toml_str(&queue),
        toml_str(&fallback),
        toml_str(&dir.path().join("ivrd.db").display().to_string()),
    ));

    let call = |id: &str| -> (RawUac, String) {
        let mut uac = RawUac::call(daemon.sip_addr(), "crm");
        std::thread::sleep(Duration::from_millis(800));
        uac.info_digits(id, KEY_GAP);
        let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
        let refer_to = header_value(&refer, "Refer-To", Some("r")).unwrap_or_default();
        uac.respond(&refer, 603, "Declined");
        (uac, refer_to)
    };

    let (_uac, refer_to) = call("123456");
    assert_eq!(
        refer_to,
        format!("<{queue}?X-Customer-Id=123456&X-Tier=gold>"),
        "the CRM's tier in the transfer"
    );

    let (_uac, refer_to) = call("999999");
    assert_eq!(refer_to, format!("<{fallback}?X-Crm-Status=404>"));

    // 5 s answer, 1.5 s timeout: the caller is not held longer than the step allows.
    let started = Instant::now();
    let (_uac, refer_to) = call("555555");
    assert_eq!(
        refer_to,
        format!("<{fallback}>"),
        "a timeout has no status (the empty header is left out)"
    );
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the REFER came {waited:?} after the call began: the timeout did not hold"
    );
    assert!(
        !daemon.log_lines("http step failed").is_empty(),
        "a failed lookup is logged"
    );

    let requests = rt.block_on(server.received_requests()).unwrap_or_default();
    let paths: Vec<&str> = requests.iter().map(|r| r.url.path()).collect();
    assert_eq!(
        paths,
        [
            "/api/customers/123456",
            "/api/customers/999999",
            "/api/customers/555555"
        ]
    );
}
