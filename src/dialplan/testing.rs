//! Test helpers: in-memory [`FlowServices`], the real prompt directory, a tiny executor.
//!
//! The fake services behave like the real ones in the ways a flow can see (a PIN per
//! customer, three tries, the SMS rendered from the plan's template) and can be told to
//! fail in each way the real ones can. SQLite and real SMS providers are tested elsewhere.

use super::check::{CheckEnv, PromptDir, load};
use super::model::{Dialplan, render_sms};
use super::problem::Problem;
use super::services::*;
use super::sim::SentSms;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Drives a future to completion on this thread (the flows under test never need a
/// reactor: the simulated call and the fake services complete at once).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

pub fn prompts() -> PromptDir {
    PromptDir::scan(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prompts"
    )))
    .expect("prompts/ readable")
}

/// Loads a shipped plan, checked against the real prompts.
pub fn shipped(name: &str) -> Result<Dialplan, Vec<Problem>> {
    let path = format!("{}/dialplans/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).expect("shipped plan readable");
    let dir = prompts();
    let exists = |l: &str, n: &str| dir.exists(l, n);
    let env = CheckEnv {
        prompt_exists: &exists,
        languages: dir.languages(),
    };
    load(&format!("dialplans/{name}.toml"), &src, &env)
}

/// Loads a test plan where every prompt exists in en and de.
pub fn plan(src: &str) -> Dialplan {
    match check_with(src, &["en", "de"], &|_, _| true) {
        Ok(p) => p,
        Err(problems) => panic!(
            "test plan has problems:\n{}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Loads test plans as one set (every prompt exists in en and de) and links them, as the
/// daemon does: the plans in order, or the problems.
pub fn plan_set(sources: &[&str]) -> Result<Vec<Dialplan>, Vec<Problem>> {
    let languages = vec!["en".to_string(), "de".to_string()];
    let env = CheckEnv {
        prompt_exists: &|_, _| true,
        languages: &languages,
    };
    let sources: Vec<(String, String)> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("plan{}.toml", i + 1), s.to_string()))
        .collect();
    let mut plans = super::check::load_sources(&sources, &env)?;
    super::check::link(&mut plans);
    Ok(plans)
}

/// Loads a plan against the given languages and prompts.
pub fn check_with(
    src: &str,
    languages: &[&str],
    exists: &dyn Fn(&str, &str) -> bool,
) -> Result<Dialplan, Vec<Problem>> {
    let languages: Vec<String> = languages.iter().map(|s| s.to_string()).collect();
    let env = CheckEnv {
        prompt_exists: exists,
        languages: &languages,
    };
    load("test.toml", src, &env)
}

pub fn customer(id: &str, name: &str, language: Option<&str>) -> CustomerRecord {
    let mut fields = BTreeMap::new();
    fields.insert("id".to_string(), id.to_string());
    fields.insert("name".to_string(), name.to_string());
    fields.insert("mobile".to_string(), "+4915112345678".to_string());
    fields.insert("tier".to_string(), "gold".to_string());
    if let Some(l) = language {
        fields.insert("language".to_string(), l.to_string());
    }
    CustomerRecord {
        id: id.into(),
        name: name.into(),
        mobile: "+4915112345678".into(),
        language: language.map(String::from),
        fields,
    }
}

#[derive(Default)]
struct State {
    sent: Vec<SentSms>,
    /// The live PIN per customer and the wrong tries against it.
    pins: BTreeMap<String, (String, u32)>,
    requests: Vec<PinRequest>,
    lookups: Vec<(LookupBy, String)>,
    http: Vec<super::services::HttpRequest>,
}

/// In-memory services. Override fields make a service answer one way.
pub struct FakeServices {
    pub customers: Vec<CustomerRecord>,
    pub lookup: Option<LookupOutcome>,
    pub send: Option<SendPinOutcome>,
    pub check: Option<CheckPinOutcome>,
    /// Wrong tries allowed per PIN.
    pub tries: u32,
    /// What `http` steps get back (none: every request fails).
    pub http: crate::http_lookup::HttpFakes,
    state: Arc<Mutex<State>>,
}

/// The PIN the fake sends, cut to the requested length.
pub const FAKE_PIN: &str = "4711836295";

impl Default for FakeServices {
    fn default() -> Self {
        FakeServices::new()
    }
}

impl FakeServices {
    /// Knows customer 123456 (Alice, no language) and 654321 (Bernd, de); SMS texts come with
    /// each request, from its plan.
    pub fn new() -> FakeServices {
        FakeServices {
            customers: vec![
                customer("123456", "Alice Example", None),
                customer("654321", "Bernd Beispiel", Some("de")),
            ],
            lookup: None,
            send: None,
            check: None,
            tries: 3,
            http: Default::default(),
            state: Arc::default(),
        }
    }

    /// For [`super::sim::SimCall::sms_capture`].
    pub fn capture(&self) -> impl Fn() -> Vec<SentSms> + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.lock().unwrap().sent.clone()
    }

    pub fn sent(&self) -> Vec<SentSms> {
        self.state.lock().unwrap().sent.clone()
    }

    pub fn requests(&self) -> Vec<PinRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every `http` step's request, as sent.
    pub fn http_requests(&self) -> Vec<super::services::HttpRequest> {
        self.state.lock().unwrap().http.clone()
    }

    pub fn lookups(&self) -> Vec<(LookupBy, String)> {
        self.state.lock().unwrap().lookups.clone()
    }
}

fn decoy_key(customer_id: &str) -> String {
    format!("\u{0}decoy\u{0}{customer_id}")
}

impl FlowServices for FakeServices {
    async fn lookup_customer(&self, by: LookupBy, value: &str) -> LookupOutcome {
        self.state
            .lock()
            .unwrap()
            .lookups
            .push((by, value.to_string()));
        if let Some(o) = &self.lookup {
            return o.clone();
        }
        let found = self.customers.iter().find(|c| match by {
            LookupBy::Id => c.id == value,
            LookupBy::Mobile => c.mobile == value,
        });
        match found {
            Some(c) => LookupOutcome::Found(c.clone()),
            None => LookupOutcome::NotFound,
        }
    }

    async fn send_pin(&self, req: &PinRequest) -> SendPinOutcome {
        let mut st = self.state.lock().unwrap();
        st.requests.push(req.clone());
        if let Some(o) = &self.send {
            return o.clone();
        }
        if req.decoy {
            // Nothing is sent, and no input can match.
            st.pins
                .insert(decoy_key(&req.customer_id), ("\u{0}".into(), 0));
            return SendPinOutcome::Sent { minutes: 5 };
        }
        let pin = FAKE_PIN[..req.length].to_string();
        let name = self
            .customers
            .iter()
            .find(|c| c.id == req.customer_id)
            .map_or("", |c| c.name.as_str());
        let template = req.template.as_deref().unwrap_or("PIN {pin}");
        st.sent.push(SentSms {
            to: "+4915112345678".into(),
            text: render_sms(template, &pin, 5, name),
            pin: pin.clone(),
        });
        st.pins.insert(req.customer_id.clone(), (pin, 0));
        SendPinOutcome::Sent { minutes: 5 }
    }

    async fn http(
        &self,
        step: &str,
        req: &super::services::HttpRequest,
    ) -> Result<super::services::HttpResponse, super::services::HttpError> {
        self.state.lock().unwrap().http.push(req.clone());
        self.http.respond(step, req)
    }

    async fn check_pin(&self, customer_id: &str, input: &str, decoy: bool) -> CheckPinOutcome {
        if let Some(o) = &self.check {
            return o.clone();
        }
        let key = if decoy {
            decoy_key(customer_id)
        } else {
            customer_id.to_string()
        };
        let customer_id = key.as_str();
        let mut st = self.state.lock().unwrap();
        let Some((pin, wrong)) = st.pins.get_mut(customer_id) else {
            return CheckPinOutcome::Expired;
        };
        if pin == input {
            st.pins.remove(customer_id);
            return CheckPinOutcome::Valid;
        }
        *wrong += 1;
        if *wrong >= self.tries {
            st.pins.remove(customer_id);
            CheckPinOutcome::Exhausted
        } else {
            CheckPinOutcome::Invalid {
                tries_left: self.tries - *wrong,
            }
        }
    }
}
