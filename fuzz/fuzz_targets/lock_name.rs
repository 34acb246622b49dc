//! Lock-name validation on any text: accepted names are exactly the safe ones (so no
//! name escapes the prefix or chroot), refusals carry a reason, nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use queuelock::backend::{MAX_NAME_LEN, MAX_SEGMENT_LEN};
use queuelock::{Error, LockName};

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    match LockName::new(&name) {
        Ok(n) => {
            assert_eq!(n.as_str(), name);
            assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
            for seg in name.split('/') {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "{name:?}");
                assert!(seg.len() <= MAX_SEGMENT_LEN);
            }
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)));
            assert!(name != "zookeeper" && !name.starts_with("zookeeper/"));
        }
        Err(Error::InvalidName { name: n, reason }) => {
            assert_eq!(n, name);
            assert!(!reason.to_string().is_empty());
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
});
