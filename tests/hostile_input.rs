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
