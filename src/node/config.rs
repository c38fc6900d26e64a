//! `courier.toml`: settings for the scheduler, workers and TLS. Precedence: command-line
//! flags, then environment variables, then this file, then built-in defaults.
//!
//! ```toml
//! [scheduler]
//! listen = "tcp://0.0.0.0:8786"
//! worker_timeout = 30      # seconds a silent worker is tolerated
//! worker_saturation = 1.1  # root tasks a worker holds per thread ("inf": no queuing)
//!
//! [worker]
//! scheduler = "tcp://10.0.0.5:8786"
//! listen = "tcp://0.0.0.0:0"
//! nthreads = 2
//! name = "alice"
//! shm = true                # peers and clients on this host fetch through shared memory
//! memory_limit = "4GiB"     # or a fraction of the machine ("0.5"), "auto", "none"
//! memory_target = 0.6       # spill least recently used results above this (managed)
//! memory_spill = 0.7        # spill until under target above this (process RSS)
//! memory_pause = 0.8        # start no task above this
//! memory_terminate = 0.95   # restart the worker at this
//! spill_dir = "/scratch"    # where spilled results go
//!
//! [tls]
//! ca = "ca.pem"
//! cert = "node.pem"
//! key = "node.key"
//! require_client_cert = true
//!
//! [comm]
//! compression = "auto"      # none, snappy, lz4 or auto
//! recv_budget = "2GiB"      # bytes a listener's comms may hold while receiving
//!
//! [auth]
//! token_file = "/run/secrets/courier-token"         # the cluster's secret
//! client_token_file = "/run/secrets/courier-client" # optional: admits clients only
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::NodeError;

/// The whole file; every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub(crate) scheduler: SchedulerSection,
    #[serde(default)]
    pub(crate) worker: WorkerSection,
    #[serde(default)]
    pub(crate) tls: TlsSection,
    #[serde(default)]
    pub(crate) auth: AuthSection,
    #[serde(default)]
    pub(crate) comm: CommSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommSection {
    pub(crate) compression: Option<String>,
    pub(crate) recv_budget: Option<String>,
}

/// Secrets may be given inline (`token`) but files keep them out of the configuration.
/// `Debug` prints only which are set.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthSection {
    pub(crate) token: Option<String>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) client_token: Option<String>,
    pub(crate) client_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchedulerSection {
    pub(crate) listen: Option<String>,
    pub(crate) worker_timeout: Option<f64>,
    pub(crate) worker_saturation: Option<f64>,
    pub(crate) dashboard: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerSection {
    pub(crate) scheduler: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) nthreads: Option<u32>,
    pub(crate) name: Option<String>,
    pub(crate) shm: Option<bool>,
    pub(crate) memory_limit: Option<String>,
    pub(crate) memory_target: Option<f64>,
    pub(crate) memory_spill: Option<f64>,
    pub(crate) memory_pause: Option<f64>,
    pub(crate) memory_terminate: Option<f64>,
    pub(crate) spill_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) require_client_cert: Option<bool>,
}

impl std::fmt::Debug for AuthSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<redacted>" } else { "none" };
        f.debug_struct("AuthSection")
            .field("token", &set(&self.token))
            .field("token_file", &self.token_file)
            .field("client_token", &set(&self.client_token))
            .field("client_token_file", &self.client_token_file)
            .finish()
    }
}

impl FileConfig {
    /// Reads `path`, or returns the empty configuration when there is none.
    pub(crate) fn load(path: Option<&Path>) -> Result<FileConfig, NodeError> {
        let Some(path) = path else { return Ok(FileConfig::default()) };
        let text =
            std::fs::read_to_string(path).map_err(|e| NodeError::Config(format!("reading {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| NodeError::Config(format!("parsing {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section_and_rejects_unknown_keys() {
        let c: FileConfig = toml::from_str(
            "[scheduler]\nlisten = \"zmq://0.0.0.0:1\"\n[worker]\nnthreads = 4\n[tls]\nca = \"ca.pem\"\nrequire_client_cert = true\n",
        )
        .unwrap();
        assert_eq!(c.scheduler.listen.as_deref(), Some("zmq://0.0.0.0:1"));
        assert_eq!(c.worker.nthreads, Some(4));
        assert_eq!(c.tls.require_client_cert, Some(true));
        assert!(toml::from_str::<FileConfig>("[worker]\nthreads = 4\n").is_err(), "typos are errors");
    }
}
