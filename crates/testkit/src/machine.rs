//! A machine that boots systemd as PID 1, for testing the shipped packages and units under a
//! real service manager (the test machines' PID 1 is not systemd).
//!
//! `systemd-nspawn --boot` runs over a copy-on-write view of this machine's own root: an
//! overlay whose upper layer is a tmpfs, both mounted in a private mount namespace
//! (`unshare -m`), so nothing the machine writes (packages, data, users) reaches the real
//! root, and both disappear with its last process. The machine shares one test host's network
//! namespace (`--network-namespace-path`), so it is that host on the test bridge; dropping the
//! host's [`crate::Net`] kills whatever the machine left running. systemd-nspawn keeps
//! CAP_NET_ADMIN out of the machine unless it made the network namespace itself, so it is
//! granted explicitly: the namespace is the test's own host.
//!
//! It boots `basic.target`, not the default target: this machine's root has services enabled
//! (PostgreSQL's Debian cluster, etcd, HAProxy, keepalived) that a test must not find running.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Host, Proc, wait_until};

pub struct Machine {
    nspawn: Proc,
    init: i32,
    host: String,
}

impl Machine {
    /// Boots a machine on `host`'s network namespace and waits until systemd says it is up.
    /// `upper_size` bounds what the machine may write (a tmpfs size such as `"6g"`).
    pub fn boot(host: &Host, upper_size: &str, timeout: Duration) -> anyhow::Result<Self> {
        let dir: PathBuf = host.dir().sub(&format!("machine-{}", host.name()))?;
        let script = format!(
            "set -e\n\
             d='{dir}'\n\
             mount -t tmpfs -o size={upper_size},mode=0755 outrigger-machine \"$d\"\n\
             mkdir \"$d/upper\" \"$d/work\" \"$d/root\"\n\
             mount -t overlay outrigger-machine -o \"lowerdir=/,upperdir=$d/upper,workdir=$d/work\" \"$d/root\"\n\
             exec systemd-nspawn --quiet --register=no --keep-unit --console=pipe -D \"$d/root\" \
               --machine='{name}' --network-namespace-path=/run/netns/{netns} --capability=CAP_NET_ADMIN \
               --boot systemd.unit=basic.target systemd.firstboot=off",
            dir = dir.display(),
            name = host.name(),
            netns = host.netns(),
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        let mut nspawn = host.spawn(&format!("machine-{}", host.name()), cmd)?;
        let pid = nspawn.pid().ok_or_else(|| anyhow::anyhow!("systemd-nspawn has no pid"))?;
        let init = wait_until(Duration::from_secs(20), "the machine's init process", || {
            if !nspawn.is_running() {
                return Some(Err(anyhow::anyhow!("systemd-nspawn exited: {}", nspawn.log_text())));
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
            let init: i32 = children.split_whitespace().next()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{init}/comm")).ok()?;
            (comm.trim() == "systemd").then_some(Ok(init))
        })??;
        let m = Self { nspawn, init, host: host.name().to_owned() };
        wait_until(timeout, "systemd in the machine to finish booting", || {
            let state = m.sh("systemctl is-system-running || true").ok()?;
            match state.trim() {
                "running" | "degraded" => Some(()),
                _ => None,
            }
        })?;
        Ok(m)
    }

    /// Runs `script` with `sh -c` inside the machine (all its namespaces) and returns its
    /// stdout; fails with its output when it exits non-zero.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        let out = Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a", "sh", "-c", script])
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "in machine {}: `{script}` failed ({}): {}{}",
                self.host,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Copies a file of this machine into the machine (through a pipe: the machine's root is
    /// only `/` of this one, so a file on another mount, a checkout say, is not in it).
    pub fn copy_in(&self, from: &std::path::Path, to: &str) -> anyhow::Result<()> {
        let file = std::fs::File::open(from)?;
        let out = Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a", "sh", "-c", &format!("cat > '{to}'")])
            .stdin(file)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "copy {} into machine {}: {}",
            from.display(),
            self.host,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// One property of a unit (`systemctl show -P`).
    pub fn unit_property(&self, unit: &str, property: &str) -> anyhow::Result<String> {
        Ok(self.sh(&format!("systemctl show -P {property} {unit}"))?.trim().to_owned())
    }

    /// A unit's journal, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl --no-pager -o short-monotonic -u {unit} | tail -n 60"))
            .unwrap_or_else(|e| format!("(no journal: {e:#})"))
    }

    /// Halts the machine (systemd stops every unit) and waits for systemd-nspawn to exit.
    pub fn halt(mut self, grace: Duration) -> anyhow::Result<()> {
        self.nspawn.stop(grace)?;
        Ok(())
    }
}
