//! TLS material handed to a backend: PEM text, read from files by the caller.

use std::fmt;

use crate::error::{Error, Result};

/// PEM-encoded TLS material for a backend connection: the CA that must have signed the
/// server's certificate and, optionally, a client certificate and its private key.
///
/// `Debug` never shows the private key.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsPem {
    /// CA certificate(s) the server's certificate must chain to. Without one, the
    /// backend's default trust roots apply (if it has any).
    pub ca: Option<String>,
    /// Client certificate chain and private key (mutual TLS).
    pub identity: Option<(String, String)>,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.identity.is_some())
            .field("client_key", &self.identity.as_ref().map(|_| "***"))
            .finish()
    }
}

impl TlsPem {
    /// Material from PEM text: `cert` and `key` must come together.
    ///
    /// Errors: [`Error::Config`] when only one of `cert`/`key` is given, or a text given
    /// holds no PEM block.
    pub fn new(ca: Option<String>, cert: Option<String>, key: Option<String>) -> Result<Self> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Config(
                    "TLS client certificate given without its key (key=)".to_owned(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "TLS client key given without its certificate (cert=)".to_owned(),
                ))
            }
        };
        let check = |what: &str, text: &str| {
            if text.contains("-----BEGIN ") {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "TLS {what} is not PEM (no -----BEGIN block)"
                )))
            }
        };
        if let Some(ca) = &ca {
            check("CA", ca)?;
        }
        if let Some((c, k)) = &identity {
            check("client certificate", c)?;
            check("client key", k)?;
        }
        Ok(TlsPem { ca, identity })
    }
}

#[cfg(test)]
mod tests {
    use super::TlsPem;

    #[test]
    fn pairs_and_pem() {
        let pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".to_owned();
        assert!(TlsPem::new(Some(pem.clone()), None, None).is_ok());
        assert!(TlsPem::new(None, Some(pem.clone()), None).is_err());
        assert!(TlsPem::new(None, None, Some(pem.clone())).is_err());
        assert!(TlsPem::new(Some("garbage".into()), None, None).is_err());
        let secret = "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n";
        let t = TlsPem::new(None, Some(pem), Some(secret.to_owned())).expect("pair");
        assert!(!format!("{t:?}").contains("SECRETKEY"));
    }
}
