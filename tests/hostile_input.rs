//! Property tests: names and URLs from anywhere never panic, are validated before any
//! network call, and never leak credentials.

use proptest::prelude::*;
use queuelock::{Config, Error, LockName};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_name_is_accepted_only_if_safe(name in "\\PC{0,300}|[a-z./_-]{0,40}") {
        match LockName::new(&name) {
            Ok(n) => {
                prop_assert_eq!(n.as_str(), name.as_str());
                prop_assert!(!name.is_empty() && name.len() <= queuelock::backend::MAX_NAME_LEN);
                prop_assert!(name.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)));
            }
            Err(Error::InvalidName { name: n, reason }) => {
                prop_assert_eq!(n, name);
                prop_assert!(!reason.to_string().is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    #[test]
    fn well_formed_names_are_accepted(segs in prop::collection::vec("[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", 1..5)) {
        let name = segs.join("/");
        prop_assume!(!segs.iter().any(|s| s == "." || s == ".."));
        prop_assume!(segs[0] != "zookeeper");
        prop_assert!(LockName::new(&name).is_ok(), "{name}");
    }

    #[test]
    fn any_url_parses_or_fails_cleanly(url in "\\PC{0,120}") {
        match Config::from_url(&url) {
            Ok(_) | Err(Error::Config(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    #[test]
    fn credentials_never_leak(
        scheme in "etcd|zk|memory|bogus",
        pass in "SeCrEt[a-z0-9]{4,10}",
        opt in "ttl=5s|tll=5s|ttl=never|label=x|ca=/c|",
        host in "h:2379|h|h:99999|",
    ) {
        let urls = [
            format!("{scheme}://user:{pass}@{host}/p?{opt}"),
            format!("{scheme}://{host}/p?password={pass}&{opt}"),
            format!("{scheme}://{host}/p?digest=user:{pass}&{opt}"),
        ];
        for url in urls {
            match Config::from_url(&url) {
                Ok(c) => prop_assert!(!format!("{c:?}").contains(&pass), "Debug leaks: {c:?}"),
                Err(e) => {
                    prop_assert!(!e.to_string().contains(&pass), "error leaks: {e}");
                    prop_assert!(!format!("{e:?}").contains(&pass), "error Debug leaks: {e:?}");
                }
            }
        }
    }
}

/// A backend that fails the test if anything reaches it: hostile names must be refused
/// before any network call.
#[derive(Debug)]
struct Tripwire;

#[async_trait::async_trait]
impl queuelock::backend::Backend for Tripwire {
    fn name(&self) -> &'static str {
        "tripwire"
    }

    async fn open_session(
        &self,
        _options: &queuelock::backend::SessionOptions,
    ) -> queuelock::Result<std::sync::Arc<dyn queuelock::backend::Session>> {
        panic!("a hostile name reached the backend")
    }
}

fn tripwire_client() -> queuelock::Client {
    queuelock::Client::new(std::sync::Arc::new(Tripwire), Default::default())
}

/// Every recipe constructor refuses `name` without touching the backend.
fn refused_everywhere(name: &str) -> Vec<queuelock::NameError> {
    let c = tripwire_client();
    let reason = |r: queuelock::Result<()>| match r {
        Err(Error::InvalidName { name: n, reason }) => {
            assert_eq!(n, name);
            reason
        }
        other => panic!("{name:?}: expected InvalidName, got {other:?}"),
    };
    vec![
        reason(c.mutex(name).map(drop)),
        reason(c.rwlock(name).map(drop)),
        reason(c.semaphore(name, 2).map(drop)),
        reason(c.election(name).map(drop)),
        reason(c.multilock().mutex(name).map(drop)),
        reason(LockName::new(name).map(drop)),
    ]
}

#[test]
fn odd_names_are_rejected_with_the_right_reason() {
    use queuelock::NameError as N;
    let long = "x".repeat(queuelock::backend::MAX_NAME_LEN + 1);
    let long_segment = format!("a/{}", "y".repeat(queuelock::backend::MAX_SEGMENT_LEN + 1));
    type Expect = fn(&N) -> bool;
    let cases: Vec<(&str, Expect)> = vec![
        ("", |r| matches!(r, N::Empty)),
        ("..", |r| matches!(r, N::DotSegment { index: 0 })),
        ("a/../../etc", |r| matches!(r, N::DotSegment { index: 1 })),
        ("a/./b", |r| matches!(r, N::DotSegment { index: 1 })),
        ("/abs", |r| matches!(r, N::EmptySegment { index: 0 })),
        ("a//b", |r| matches!(r, N::EmptySegment { index: 1 })),
        ("a/", |r| matches!(r, N::EmptySegment { .. })),
        (&long, |r| matches!(r, N::TooLong { .. })),
        (&long_segment, |r| {
            matches!(r, N::SegmentTooLong { index: 1 })
        }),
        ("ロック", |r| {
            matches!(
                r,
                N::BadChar {
                    ch: 'ロ',
                    offset: 0
                }
            )
        }),
        ("caf\u{e9}", |r| matches!(r, N::BadChar { offset: 3, .. })),
        ("a\u{0}b", |r| matches!(r, N::BadChar { ch: '\0', .. })),
        ("a\nb", |r| matches!(r, N::BadChar { ch: '\n', .. })),
        ("a\u{1b}[31m", |r| {
            matches!(r, N::BadChar { ch: '\u{1b}', .. })
        }),
        ("\u{202e}lock", |r| matches!(r, N::BadChar { .. })),
        ("a\\..\\b", |r| matches!(r, N::BadChar { ch: '\\', .. })),
        ("%2e%2e/x", |r| matches!(r, N::BadChar { ch: '%', .. })),
        ("a b", |r| matches!(r, N::BadChar { ch: ' ', .. })),
        ("zookeeper", |r| matches!(r, N::Reserved)),
        ("zookeeper/quota", |r| matches!(r, N::Reserved)),
        ("~queuelock/abandoned/x", |r| {
            matches!(r, N::BadChar { ch: '~', .. })
        }),
    ];
    for (name, ok) in cases {
        for reason in refused_everywhere(name) {
            assert!(ok(&reason), "{name:?}: reason {reason:?}");
            let text = Error::InvalidName {
                name: name.to_owned(),
                reason,
            }
            .to_string();
            assert!(text.contains("invalid name"), "{text}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Names from anywhere (any Unicode, control characters, path tricks, very long):
    /// each recipe either accepts the name lazily or refuses it, never reaching the
    /// backend and never panicking.
    #[test]
    fn hostile_names_never_reach_the_backend(
        name in "\\PC{0,40}|[./a\\x00-\\x1f]{0,12}|(\\.\\./|\\./|/|a){0,8}|.{250,300}"
    ) {
        let c = tripwire_client();
        let valid = LockName::new(&name).is_ok();
        prop_assert_eq!(c.mutex(&name).is_ok(), valid);
        prop_assert_eq!(c.rwlock(&name).is_ok(), valid);
        prop_assert_eq!(c.semaphore(&name, 1).is_ok(), valid);
        prop_assert_eq!(c.election(&name).is_ok(), valid);
        if valid {
            // Accepted names cannot climb out of the prefix or chroot.
            prop_assert!(name.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
        }
    }

    /// Configuration from TOML or JSON text never panics; what fails is Error-free
    /// deserialisation, and a parsed config's Debug never shows its secrets.
    #[test]
    fn any_config_text_parses_or_fails_cleanly(
        text in "\\PC{0,200}",
        pass in "SeCrEt[a-z0-9]{4,10}",
    ) {
        let _ = toml::from_str::<Config>(&text);
        let _ = serde_json::from_str::<Config>(&text);
        let json = format!(
            r#"{{"backend":{{"kind":"etcd","endpoints":["h:1"],"user":"u","password":"{pass}"}}}}"#
        );
        let c: Config = serde_json::from_str(&json).expect("valid JSON config");
        let shown = format!("{c:?}");
        prop_assert!(!shown.contains(&pass));
    }
}
