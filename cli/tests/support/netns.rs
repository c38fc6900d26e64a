//! Test hosts on one machine: network namespaces joined by a bridge, made and torn down by
//! `scripts/netns.sh` (the one place that knows the commands).
//!
//! [`Hosts::up`] needs root and `ip netns`. Where they are missing it prints why and returns
//! `None` (the test then passes without running), unless `COURIER_NETNS_TEST=require`, which
//! CI sets where it can make namespaces, turns the skip into a failure. Dropping [`Hosts`]
//! (also while a failing test unwinds) kills everything running in the hosts and deletes them;
//! a test killed outright leaves its hosts to the next `netns.sh sweep`, which every `up` runs.

use std::path::PathBuf;
use std::process::Command as StdCommand;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::process::Command;

pub(crate) fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns.sh")
}

fn netns(args: &[&str]) -> Result<String, String> {
    let out = StdCommand::new(script()).args(args).output().map_err(|e| format!("netns.sh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("netns.sh {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Hosts `0..n` in their own network namespaces, at `NET.1` … `NET.n`; this process is at
/// `NET.254`.
#[derive(Debug)]
pub(crate) struct Hosts {
    prefix: String,
    net: String,
    n: usize,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Hosts {
    /// `n` hosts whose links are shaped to `rate` (tc syntax: `1gbit`), or `None` (with the
    /// reason printed) where this machine cannot make namespaces.
    pub(crate) fn up(n: usize, rate: Option<&str>) -> Option<Hosts> {
        if let Err(why) = netns(&["check"]) {
            assert!(
                std::env::var("COURIER_NETNS_TEST").as_deref() != Ok("require"),
                "COURIER_NETNS_TEST=require, but {why}"
            );
            eprintln!("skipped: this test needs network namespaces ({why})");
            return None;
        }
        let _ = netns(&["sweep"]);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // At most 8 characters; the subnet is unique per process and host set.
        let prefix = format!("cr{:04x}{:02x}", pid & 0xffff, k & 0xff);
        let net = format!("10.{}.{}", 100 + (pid % 100), k % 250);
        let hosts = Hosts { prefix, net, n };
        let mut args = vec!["up".to_owned(), hosts.prefix.clone(), n.to_string(), hosts.net.clone()];
        args.extend(rate.map(str::to_owned));
        let owner = pid.to_string();
        let out = StdCommand::new(script()).args(&args).env("NETNS_OWNER", &owner).output().expect("netns.sh up");
        assert!(out.status.success(), "netns.sh up: {}", String::from_utf8_lossy(&out.stderr));
        Some(hosts)
    }

    /// The namespace prefix (host `i` is namespace `{prefix}{i}`).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Host `i`'s address.
    pub(crate) fn addr(&self, i: usize) -> String {
        assert!(i < self.n, "host {i} of {}", self.n);
        format!("{}.{}", self.net, i + 1)
    }

    /// `program` run on host `i`, killed when dropped.
    pub(crate) fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}{i}", self.prefix)]).arg(program).kill_on_drop(true);
        c
    }

    /// Takes host `i`'s link down (a pulled cable) or up again.
    pub(crate) fn set_link(&self, i: usize, up: bool) {
        netns(&["link", &self.prefix, &i.to_string(), if up { "up" } else { "down" }]).unwrap();
    }

    /// Whether host `i`'s link is up on either end (its bridge port or its own interface).
    pub(crate) fn link_is_up(&self, i: usize) -> bool {
        let flags = |args: &[&str]| {
            let out = StdCommand::new("ip").args(args).output().expect("ip link show");
            String::from_utf8_lossy(&out.stdout)
                .split_once('<')
                .map(|(_, f)| f.split('>').next().unwrap_or("").split(',').any(|f| f == "UP"))
                .unwrap_or(false)
        };
        let host = format!("{}{i}", self.prefix);
        flags(&["-o", "link", "show", &format!("{}h{i}", self.prefix)])
            || flags(&["-n", &host, "-o", "link", "show", "eth0"])
    }

    /// Namespaces and links of these hosts still present (empty once dropped).
    pub(crate) fn leftovers(prefix: &str) -> String {
        netns(&["leftovers", prefix]).unwrap()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Err(e) = netns(&["down", &self.prefix]) {
            eprintln!("tearing down test hosts: {e}");
        }
    }
}
