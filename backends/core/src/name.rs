use std::fmt;

use crate::error::Error;

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest accepted segment (text between `/`), in bytes.
pub const MAX_SEGMENT_LEN: usize = 128;

/// A validated lock name: non-empty `/`-separated segments of `[A-Za-z0-9._-]`, at most
/// [`MAX_NAME_LEN`] bytes, no segment `.` or `..`, and not under ZooKeeper's reserved
/// `zookeeper` root. The same name means the same lock on every backend, and no name can
/// escape the configured prefix or chroot.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(String);

/// Why a name was rejected (the `reason` of [`Error::InvalidName`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A segment is longer than [`MAX_SEGMENT_LEN`] bytes.
    SegmentTooLong {
        /// The segment's index (0-based).
        index: usize,
    },
    /// The name starts or ends with `/`, or has `//`.
    EmptySegment {
        /// The empty segment's index (0-based).
        index: usize,
    },
    /// A segment is `.` or `..`.
    DotSegment {
        /// The segment's index (0-based).
        index: usize,
    },
    /// A character outside `[A-Za-z0-9._-]` (and `/` between segments).
    BadChar {
        /// The character.
        ch: char,
        /// Its byte offset in the name.
        offset: usize,
    },
    /// The name is reserved by a backend (ZooKeeper's `/zookeeper`).
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("name is empty"),
            NameError::TooLong { len } => {
                write!(f, "name is {len} bytes long, the limit is {MAX_NAME_LEN}")
            }
            NameError::SegmentTooLong { index } => write!(
                f,
                "segment {index} is longer than {MAX_SEGMENT_LEN} bytes"
            ),
            NameError::EmptySegment { index } => write!(
                f,
                "segment {index} is empty (leading, trailing or double '/')"
            ),
            NameError::DotSegment { index } => {
                write!(f, "segment {index} is '.' or '..', which could escape the prefix")
            }
            NameError::BadChar { ch, offset } => write!(
                f,
                "character {ch:?} at byte {offset} is not allowed (use A-Z a-z 0-9 . _ - and '/' between segments)"
            ),
            NameError::Reserved => {
                f.write_str("names under 'zookeeper' are reserved by ZooKeeper")
            }
        }
    }
}

impl LockName {
    /// Validates `name`.
    ///
    /// ```
    /// use queuelock_core::{LockName, Error};
    /// assert_eq!(LockName::new("jobs/nightly-report").unwrap().as_str(), "jobs/nightly-report");
    /// assert!(matches!(LockName::new("../etc"), Err(Error::InvalidName { .. })));
    /// ```
    pub fn new(name: &str) -> Result<Self, Error> {
        Self::check(name).map_err(|reason| Error::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        Ok(LockName(name.to_owned()))
    }

    fn check(name: &str) -> Result<(), NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if let Some((offset, ch)) = name
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
        {
            return Err(NameError::BadChar { ch, offset });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: name.len() });
        }
        for (index, seg) in name.split('/').enumerate() {
            if seg.is_empty() {
                return Err(NameError::EmptySegment { index });
            }
            if seg == "." || seg == ".." {
                return Err(NameError::DotSegment { index });
            }
            if seg.len() > MAX_SEGMENT_LEN {
                return Err(NameError::SegmentTooLong { index });
            }
            if index == 0 && seg == "zookeeper" {
                return Err(NameError::Reserved);
            }
        }
        Ok(())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockName({:?})", self.0)
    }
}

impl AsRef<str> for LockName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for LockName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        LockName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> NameError {
        match LockName::new(name) {
            Err(Error::InvalidName { reason, .. }) => reason,
            other => panic!("{name:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn accepts_good_names() {
        for n in [
            "a",
            "jobs/nightly",
            "A-b_c.d/e1",
            "x/y/z",
            "...a",
            "zookeeper2/x",
        ] {
            assert_eq!(LockName::new(n).expect(n).as_str(), n);
        }
        let longest = format!("{}/{}", "a".repeat(127), "b".repeat(128));
        assert!(LockName::new(&longest).is_ok());
    }

    #[test]
    fn rejects_every_class() {
        assert_eq!(reason(""), NameError::Empty);
        assert_eq!(reason("/a"), NameError::EmptySegment { index: 0 });
        assert_eq!(reason("a/"), NameError::EmptySegment { index: 1 });
        assert_eq!(reason("a//b"), NameError::EmptySegment { index: 1 });
        assert_eq!(reason("a/../b"), NameError::DotSegment { index: 1 });
        assert_eq!(reason("."), NameError::DotSegment { index: 0 });
        assert_eq!(reason("a b"), NameError::BadChar { ch: ' ', offset: 1 });
        assert_eq!(
            reason("é"),
            NameError::BadChar {
                ch: 'é', offset: 0
            }
        );
        assert_eq!(
            reason("a\nb"),
            NameError::BadChar {
                ch: '\n',
                offset: 1
            }
        );
        assert_eq!(
            reason("a\0"),
            NameError::BadChar {
                ch: '\0',
                offset: 1
            }
        );
        assert_eq!(
            reason("a\\b"),
            NameError::BadChar {
                ch: '\\',
                offset: 1
            }
        );
        assert_eq!(reason(&"a".repeat(300)), NameError::TooLong { len: 300 });
        assert_eq!(
            reason(&"a".repeat(129)),
            NameError::SegmentTooLong { index: 0 }
        );
        assert_eq!(reason("zookeeper"), NameError::Reserved);
        assert_eq!(reason("zookeeper/quota"), NameError::Reserved);
    }

    #[test]
    fn error_names_the_input_and_reason() {
        let e = LockName::new("a/../b").expect_err("rejected").to_string();
        assert!(e.contains("\"a/../b\"") && e.contains("'..'"), "{e}");
    }
}
