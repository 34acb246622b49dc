//! A `Config` from TOML or JSON text: parsed or refused, never a panic; a parsed config
//! turns into a client (in-process only; other backends are not compiled in) or an
//! error, also without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use queuelock::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [
        toml::from_str::<Config>(text).ok(),
        serde_json::from_str::<Config>(text).ok(),
    ]
    .into_iter()
    .flatten()
    {
        let _ = format!("{parsed:?}");
        // Round trip: what serde wrote, serde reads back to the same config.
        let json = serde_json::to_string(&parsed).expect("a parsed config serialises");
        let again: Config = serde_json::from_str(&json).expect("and reads back");
        assert_eq!(again, parsed);
    }
});
