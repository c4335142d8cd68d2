mod common;
use common::postgres::Postgres;
use ivrd::store::{NewCustomer, PgOptions, Store};
use std::time::{Duration, SystemTime};

#[test]
fn smoke() {
    let pg = Postgres::new();
    pg.create_database("smoke");
    let url = pg.url("smoke");
    let store = Store::connect(&url, &PgOptions::default()).unwrap();
    assert!(store.was_created());
    store
        .add_customer(&NewCustomer {
            id: "123".into(),
            name: "Erika".into(),
            mobile: "+491701234567".into(),
            language: Some("de".into()),
            extra: [("branch".to_string(), "Köln".to_string())].into(),
        })
        .unwrap();
    let c = store.find_customer("123").unwrap().unwrap();
    assert_eq!(c.extra["branch"], "Köln");
    let now = SystemTime::now();
    let r = store
        .record_failure_and_lock("123", now, now - Duration::from_secs(60), 1, |_| {
            Duration::from_secs(60)
        })
        .unwrap();
    assert_eq!(r, Some((1, 1)));
    store.lock("123", now, u32::MAX).unwrap();
    assert_eq!(store.lockout("123").unwrap().unwrap().1, u32::MAX);
    let again = Store::connect(&url, &PgOptions::default()).unwrap();
    assert!(!again.was_created());
    assert_eq!(again.schema_version().unwrap(), ivrd::store::SCHEMA_VERSION);
    assert!(store.refund_sms("123", "+49", now).is_ok());
    assert_eq!(store.list_customers().unwrap().len(), 1);
    let tmp = tempfile::tempdir().unwrap();
    store.copy_to(&tmp.path().join("copy.db")).unwrap();
    let copy = Store::open(tmp.path().join("copy.db")).unwrap();
    assert_eq!(copy.find_customer("123").unwrap().unwrap().extra["branch"], "Köln");
}
