//! The scheme → transport table, with connect retries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::address::Address;
use crate::comm::Comm;
use crate::error::{CommError, ErrorKind};
use crate::transport::{CommConfig, Listener, Transport};

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`], each jittered ×0.5–1.5.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// Largest retry delay.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// An explicit table mapping URL schemes to transports. There is no global registry: build
/// one (the `courier` facade offers `with_default_transports()`) and pass it where needed.
///
/// ```
/// # use courier_core::{Registry, ErrorKind};
/// let registry = Registry::new();
/// let err = registry.transport("carrier-pigeon").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::UnsupportedScheme);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    transports: BTreeMap<String, Arc<dyn Transport>>,
    config: CommConfig,
}

impl Registry {
    /// An empty registry with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `transport` for its scheme, replacing any previous one.
    pub fn register(&mut self, transport: Arc<dyn Transport>) -> &mut Self {
        self.transports.insert(transport.scheme().to_owned(), transport);
        self
    }

    /// Builder form of [`Registry::register`].
    pub fn with(mut self, transport: Arc<dyn Transport>) -> Self {
        self.register(transport);
        self
    }

    /// Settings used by [`Registry::connect`] and [`Registry::listen`].
    pub fn config(&self) -> &CommConfig {
        &self.config
    }

    /// Replaces the default settings.
    pub fn set_config(&mut self, config: CommConfig) -> &mut Self {
        self.config = config;
        self
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<&str> {
        self.transports.keys().map(String::as_str).collect()
    }

    /// The transport for `scheme`, or `UnsupportedScheme` listing the known ones.
    pub fn transport(&self, scheme: &str) -> Result<&Arc<dyn Transport>, CommError> {
        self.transports.get(scheme).ok_or_else(|| {
            CommError::new(
                ErrorKind::UnsupportedScheme,
                format!("no transport for scheme {scheme:?}; known schemes: {}", self.schemes().join(", ")),
            )
        })
    }

    /// Connects to `url` with the registry's settings.
    pub async fn connect(&self, url: &str) -> Result<Comm, CommError> {
        self.connect_with(url, &self.config).await
    }

    /// Connects to `url`, retrying transient failures with jittered exponential backoff until
    /// `config.connect_timeout` has passed; then `ConnectTimeout` with the last failure as its
    /// source.
    pub async fn connect_with(&self, url: &str, config: &CommConfig) -> Result<Comm, CommError> {
        let addr = Address::parse(url)?;
        let transport = self.transport(addr.scheme())?;
        let deadline = Instant::now() + config.connect_timeout;
        let mut backoff = MIN_BACKOFF;
        let mut attempt_config = config.clone();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            attempt_config.connect_timeout = left;
            let err = match transport.connect(&addr, &attempt_config).await {
                Ok(comm) => return Ok(comm),
                Err(e) if e.kind().is_transient() || e.kind() == ErrorKind::ConnectTimeout => e,
                Err(e) => return Err(e),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || err.kind() == ErrorKind::ConnectTimeout {
                return Err(CommError::new(
                    ErrorKind::ConnectTimeout,
                    format!("could not connect to {url} within {:?}", config.connect_timeout),
                )
                .with_source(err));
            }
            let jittered = backoff.mul_f64(0.5 + fastrand::f64());
            tracing::trace!(%url, error = %err, ?jittered, "connect failed; retrying");
            tokio::time::sleep(jittered.min(left)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Listens on `url` with the registry's settings.
    pub async fn listen(&self, url: &str) -> Result<Box<dyn Listener>, CommError> {
        self.listen_with(url, &self.config).await
    }

    /// Listens on `url` with `config`.
    pub async fn listen_with(&self, url: &str, config: &CommConfig) -> Result<Box<dyn Listener>, CommError> {
        let addr = Address::parse(url)?;
        self.transport(addr.scheme())?.listen(&addr, config).await
    }
}
