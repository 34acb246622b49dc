//! `Config::from_url` on any text: a config or `Error::Config`, never a panic. Wrapped
//! into URLs that carry a password or digest, the secret never shows in the parsed
//! config's Debug, nor in the error when the URL's structure is ours.
#![no_main]

use libfuzzer_sys::fuzz_target;
use queuelock::{BackendConfig, Config, Error};

const SECRET: &str = "FuzzSecret0x5eed";

/// Parses `url`: what a user could see of the result (Debug, or the error), and whether
/// the secret was parsed as a password or digest.
fn check(url: &str) -> (String, bool) {
    match Config::from_url(url) {
        Ok(c) => {
            let held = match &c.backend {
                BackendConfig::Etcd { password, .. } => password.clone(),
                BackendConfig::ZooKeeper { digest, .. } => digest.clone(),
                _ => None,
            };
            let is_secret = held.is_some_and(|s| s.expose().contains(SECRET));
            (format!("{c:?}"), is_secret)
        }
        Err(e @ Error::Config(_)) => (format!("{e} {e:?}"), false),
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
    if text.contains("Fuzz") {
        return; // the fuzzer wrote the marker itself: anything may show it
    }
    // Text that cannot restructure the URL around the secret (no query, fragment or
    // user-info syntax): then an error must not show the secret either.
    let plain = !text.contains(['?', '#', '&', '=', '@', '%', '/']);
    for url in [
        format!("etcd://u:{SECRET}@{text}"),
        format!("etcd://{text}?password={SECRET}"),
        format!("zk://{text}?digest=u:{SECRET}"),
    ] {
        let (shown, parsed_secret) = check(&url);
        if parsed_secret || plain {
            assert!(!shown.contains(SECRET), "{url:?} leaks: {shown}");
        }
    }
});
