use anyhow::Context as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Net, Proc, wait_ok};

/// Timing of the test etcd cluster. Short elections make lease expiry and leader changes fast
/// enough for tests; etcd's shortest lease is about 1.5 × the election timeout.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub heartbeat_ms: u32,
    pub election_ms: u32,
    /// Serve clients over TLS and require client certificates signed by the CA.
    pub client_tls: Option<EtcdTls>,
    /// `--pre-vote` (etcd 3.4 has it, off by default; on from 3.5): a member that comes back
    /// from a partition or a freeze does not force an election by bumping the term.
    pub pre_vote: bool,
    /// `--experimental-enable-lease-checkpoint` with `...-checkpoint-persist` (3.4.20+): a
    /// new raft leader keeps leases' remaining TTLs instead of restarting them (only for
    /// leases with more than 5 minutes left, see ARCHITECTURE.md).
    pub lease_checkpoint: bool,
}

/// PEM files for a TLS etcd: the CA, and the member's certificate (valid for the host's IP).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self { heartbeat_ms: 100, election_ms: 1000, client_tls: None, pre_vote: true, lease_checkpoint: false }
    }
}

struct Member {
    name: String,
    host: usize,
    ip: std::net::Ipv4Addr,
    data: PathBuf,
    proc: Option<Proc>,
}

impl Drop for Member {
    fn drop(&mut self) {
        // The process first (Proc's drop kills and reaps it), then its data.
        drop(self.proc.take());
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A real etcd cluster (Debian's `etcd`), one member per chosen host, data in the test folder
/// while it runs (removed on drop: etcd preallocates 64 MB per WAL file, and a suite's worth
/// of them would fill the disk; the members' logs stay).
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    opts: EtcdOptions,
    /// `--user` for etcdctl once auth is enabled.
    user: Option<String>,
}

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

impl EtcdCluster {
    /// Starts one member on each host in `hosts` (1-based indexes) and waits until every member
    /// answers `endpoint health`.
    pub fn start(net: &Net, hosts: &[usize], opts: EtcdOptions) -> anyhow::Result<Self> {
        let members: Vec<Member> = hosts
            .iter()
            .map(|&h| {
                let host = net.host(h);
                Ok(Member {
                    name: format!("etcd-{}", host.name()),
                    host: h,
                    ip: host.ip(),
                    data: net.dir().sub(&format!("etcd-{}-data", host.name()))?,
                    proc: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let initial_cluster =
            members.iter().map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.ip)).collect::<Vec<_>>().join(",");
        let mut c = Self { members, initial_cluster, opts, user: None };
        for i in 0..c.members.len() {
            c.spawn(net, i, "new")?;
        }
        for i in 0..c.members.len() {
            c.wait_healthy(net, i, Duration::from_secs(20))?;
        }
        Ok(c)
    }

    fn spawn(&mut self, net: &Net, i: usize, state: &str) -> anyhow::Result<()> {
        let m = &self.members[i];
        let host = net.host(m.host);
        let mut cmd = Command::new("etcd");
        let scheme = if self.opts.client_tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}:{CLIENT_PORT}", m.ip);
        if let Some(tls) = &self.opts.client_tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
        }
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &format!("{client},{scheme}://127.0.0.1:{CLIENT_PORT}")])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &format!("http://{}:{PEER_PORT}", m.ip)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}:{PEER_PORT}", m.ip)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "otk"])
            .args(["--heartbeat-interval", &self.opts.heartbeat_ms.to_string()])
            .args(["--election-timeout", &self.opts.election_ms.to_string()])
            .arg(format!("--pre-vote={}", self.opts.pre_vote))
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if self.opts.lease_checkpoint {
            cmd.args(["--experimental-enable-lease-checkpoint", "--experimental-enable-lease-checkpoint-persist"]);
        }
        let label = m.name.clone();
        let proc = host.spawn(&label, cmd)?;
        self.members[i].proc = Some(proc);
        Ok(())
    }

    /// `http://ip:2379` of every member, for daemons and clients inside the namespaces.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.opts.client_tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.members[i].ip)
    }

    /// etcdctl flags for TLS (the member's own certificate doubles as a client certificate).
    fn tls_flags(&self) -> Vec<String> {
        self.opts.client_tls.as_ref().map_or_else(Vec::new, |t| {
            vec![
                format!("--cacert={}", t.ca.display()),
                format!("--cert={}", t.cert.display()),
                format!("--key={}", t.key.display()),
            ]
        })
    }

    fn etcdctl_with(
        &self,
        net: &Net,
        i: usize,
        endpoints: &str,
        timeout: &str,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let mut tls = self.tls_flags();
        if let Some(u) = &self.user {
            tls.push(format!("--user={u}"));
        }
        let mut full = vec!["etcdctl", timeout, "--endpoints", endpoints];
        full.extend(tls.iter().map(String::as_str));
        full.extend_from_slice(args);
        net.host(self.members[i].host).exec(&full)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// 1-based host index that member `i` (0-based) runs on.
    pub fn host_of(&self, i: usize) -> usize {
        self.members[i].host
    }

    pub fn proc(&self, i: usize) -> Option<&Proc> {
        self.members[i].proc.as_ref()
    }

    /// Runs `etcdctl` from member `i`'s host against all endpoints.
    pub fn etcdctl(&self, net: &Net, i: usize, args: &[&str]) -> anyhow::Result<String> {
        self.etcdctl_with(net, i, &self.endpoints().join(","), "--command-timeout=5s", args)
    }

    /// Runs `etcdctl` from member `i`'s host against member `i` only (etcdctl 3.4's balancer
    /// can stay pinned to a dead endpoint, so tests that kill members talk to a live one).
    pub fn etcdctl_at(&self, net: &Net, i: usize, args: &[&str]) -> anyhow::Result<String> {
        self.etcdctl_with(net, i, &self.endpoint(i), "--command-timeout=5s", args)
    }

    /// Runs `etcdctl` from member `i`'s host against member `i` only, with a command timeout
    /// like `"1s"` (TLS and credentials as the cluster needs them).
    pub fn etcdctl_quick(&self, net: &Net, i: usize, timeout: &str, args: &[&str]) -> anyhow::Result<String> {
        let dial = format!("--dial-timeout={timeout}");
        let mut all = vec![dial.as_str()];
        all.extend_from_slice(args);
        self.etcdctl_with(net, i, &self.endpoint(i), &format!("--command-timeout={timeout}"), &all)
    }

    pub fn wait_healthy(&self, net: &Net, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let ep = self.endpoint(i);
        wait_ok(timeout, &format!("etcd member {} to be healthy", self.members[i].name), || {
            self.etcdctl_with(net, i, &ep, "--command-timeout=1s", &["endpoint", "health"]).map(drop)
        })
    }

    /// Adds user `root` with `password` and turns authentication on; etcdctl calls of the kit
    /// use those credentials from then on.
    pub fn enable_auth(&mut self, net: &Net, password: &str) -> anyhow::Result<()> {
        self.etcdctl(net, 0, &["user", "add", &format!("root:{password}")])?;
        self.etcdctl(net, 0, &["auth", "enable"])?;
        self.user = Some(format!("root:{password}"));
        Ok(())
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// SIGTERM member `i` and wait for it to exit (a clean stop).
    pub fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut p) = self.members[i].proc.take() {
            p.stop(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data (after `kill`), and waits until it is healthy.
    pub fn restart(&mut self, net: &Net, i: usize) -> anyhow::Result<()> {
        self.kill(i)?;
        self.spawn(net, i, "existing")?;
        self.wait_healthy(net, i, Duration::from_secs(20))
    }

    pub fn freeze(&self, i: usize) -> anyhow::Result<()> {
        self.members[i].proc.as_ref().map_or(Ok(()), Proc::freeze)
    }

    pub fn thaw(&self, i: usize) -> anyhow::Result<()> {
        self.members[i].proc.as_ref().map_or(Ok(()), Proc::thaw)
    }

    /// Index of the member that is raft leader now, asked from member `from`'s host.
    pub fn leader(&self, net: &Net, from: usize) -> anyhow::Result<usize> {
        let out = self.etcdctl(net, from, &["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        for ep in v.as_array().into_iter().flatten() {
            let member = &ep["Status"]["header"]["member_id"];
            if member.is_u64() && *member == ep["Status"]["leader"] {
                let endpoint = ep["Endpoint"].as_str().unwrap_or_default();
                return self
                    .members
                    .iter()
                    .position(|m| endpoint.ends_with(&format!("://{}:{CLIENT_PORT}", m.ip)))
                    .ok_or_else(|| anyhow::anyhow!("leader endpoint {endpoint} is not a member"));
            }
        }
        anyhow::bail!("no leader in etcdctl endpoint status: {out}")
    }

    /// Moves raft leadership off the member on `host` (1-based), if it has it, and waits until
    /// another member leads.
    pub fn move_leader_off_host(&self, net: &Net, host: usize) -> anyhow::Result<()> {
        let from = (0..self.len()).find(|m| self.host_of(*m) != host).unwrap_or(0);
        if self.host_of(self.leader(net, from)?) != host {
            return Ok(());
        }
        self.move_leader_to_host(net, self.host_of(from))
    }

    /// Moves raft leadership to the member on `host` (1-based) and waits until it leads.
    pub fn move_leader_to_host(&self, net: &Net, host: usize) -> anyhow::Result<()> {
        let target = (0..self.len()).find(|m| self.host_of(*m) == host).context("no etcd member on that host")?;
        let leader = self.leader(net, target)?;
        if leader == target {
            return Ok(());
        }
        let out = self.etcdctl(net, target, &["member", "list", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let name = &self.members[target].name;
        let id = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == name.as_str())
            .and_then(|m| m["ID"].as_u64())
            .ok_or_else(|| anyhow::anyhow!("no etcd member {name} in {out}"))?;
        self.etcdctl_at(net, leader, &["move-leader", &format!("{id:x}")])?;
        crate::wait_until(std::time::Duration::from_secs(10), "etcd's raft leader to move", || {
            self.leader(net, target).ok().filter(|m| *m == target).map(drop)
        })
    }
}

/// Makes a CA and a certificate for `ip` (server and client use) with `openssl`, in `dir`.
pub fn make_tls(dir: &std::path::Path, ip: std::net::Ipv4Addr) -> anyhow::Result<EtcdTls> {
    make_tls_for(dir, &[ip])
}

/// Makes a CA and one certificate for all of `ips` and 127.0.0.1 (server and client use) with
/// `openssl`, in `dir`: `ca.pem`, `member.pem`, `member.key`.
pub fn make_tls_for(dir: &std::path::Path, ips: &[std::net::Ipv4Addr]) -> anyhow::Result<EtcdTls> {
    let run = |args: &[&str]| crate::net::run(Command::new("openssl").current_dir(dir).args(args)).map(drop);
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"])?;
    run(&["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=outrigger-test-ca", "-days", "2", "-out", "ca.pem"])?;
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "member.key"])?;
    run(&["req", "-new", "-key", "member.key", "-subj", "/CN=member", "-out", "member.csr"])?;
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName={}IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n",
            ips.iter().map(|ip| format!("IP:{ip},")).collect::<String>()
        ),
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "member.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "member.pem",
    ])?;
    Ok(EtcdTls { ca: dir.join("ca.pem"), cert: dir.join("member.pem"), key: dir.join("member.key") })
}
