//! Shared-secret authentication for transports without TLS client certificates.
//!
//! A connecting side presents a [`Credential`] in its hello; a listener with an
//! [`AccessList`] accepts the peer only if the credential matches one of its entries
//! (compared in constant time), and the entry's role (for example `"worker"` or `"client"`)
//! is attached to the comm ([`PeerInfo::role`](crate::PeerInfo::role)) for the application
//! to enforce. Secrets are never logged: both types print as `<redacted>`.
//!
//! Over tcp:// and unix:// the credential travels in clear text, like a password over plain
//! HTTP: it keeps strangers out of a cluster on a trusted network; across untrusted networks
//! use tls://, which encrypts it (and can authenticate by certificate instead).

use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::error::{CommError, ErrorKind};

/// Longest credential carried in a hello, in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 256;

/// A secret presented when connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(Arc<[u8]>);

impl Credential {
    /// A credential from secret bytes (at most [`MAX_CREDENTIAL_LEN`], at least 1).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Credential, CommError> {
        let secret = secret.as_ref();
        if secret.is_empty() || secret.len() > MAX_CREDENTIAL_LEN {
            return Err(CommError::new(
                ErrorKind::InvalidAddress,
                format!("a credential must be 1 to {MAX_CREDENTIAL_LEN} bytes, not {}", secret.len()),
            ));
        }
        Ok(Credential(secret.into()))
    }

    /// A credential read from a file (surrounding whitespace trimmed).
    pub fn from_file(path: &std::path::Path) -> Result<Credential, CommError> {
        let text = std::fs::read(path).map_err(|e| CommError::from_io(format!("reading {}", path.display()), e))?;
        Credential::new(text.trim_ascii())
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// The credentials a listener accepts, each granting a role.
#[derive(Clone, Default)]
pub struct AccessList {
    entries: Vec<(Credential, String)>,
}

impl fmt::Debug for AccessList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roles: Vec<&str> = self.entries.iter().map(|(_, r)| r.as_str()).collect();
        f.debug_struct("AccessList").field("roles", &roles).finish_non_exhaustive()
    }
}

impl AccessList {
    /// An empty list (refuses everyone).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `credential`, granting `role`.
    pub fn allow(mut self, credential: Credential, role: impl Into<String>) -> Self {
        self.entries.push((credential, role.into()));
        self
    }

    /// True when no credential is accepted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The role `presented` grants, if any. Every entry is compared, each in constant time
    /// for equal lengths, so timing reveals at most the lengths of the secrets.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for (credential, role) in &self.entries {
            if bool::from(credential.expose().ct_eq(presented)) && found.is_none() {
                found = Some(role.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_matching_credentials_and_secrets_never_print() {
        let list = AccessList::new()
            .allow(Credential::new("worker-secret").unwrap(), "worker")
            .allow(Credential::new("client-secret").unwrap(), "client");
        assert_eq!(list.check(b"worker-secret"), Some("worker"));
        assert_eq!(list.check(b"client-secret"), Some("client"));
        assert_eq!(list.check(b"client-secre"), None);
        assert_eq!(list.check(b""), None);
        let printed = format!("{list:?} {:?}", Credential::new("worker-secret").unwrap());
        assert!(!printed.contains("secret"), "{printed}");
        assert!(Credential::new("").is_err() && Credential::new(vec![1; 257]).is_err());
    }
}
