use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Net, Proc, wait_ok};

/// Timing of the test etcd cluster. Short elections make lease expiry and leader changes fast
/// enough for tests; etcd's shortest lease is about 1.5 × the election timeout.
#[derive(Debug, Clone, Copy)]
pub struct EtcdOptions {
    pub heartbeat_ms: u32,
    pub election_ms: u32,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self { heartbeat_ms: 100, election_ms: 1000 }
    }
}

struct Member {
    name: String,
    host: usize,
    ip: std::net::Ipv4Addr,
    data: PathBuf,
    proc: Option<Proc>,
}

/// A real etcd cluster (Debian's `etcd`), one member per chosen host, data in the test folder.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    opts: EtcdOptions,
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
        let mut c = Self { members, initial_cluster, opts };
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
        let client = format!("http://{}:{CLIENT_PORT}", m.ip);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &format!("{client},http://127.0.0.1:{CLIENT_PORT}")])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &format!("http://{}:{PEER_PORT}", m.ip)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}:{PEER_PORT}", m.ip)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "otk"])
            .args(["--heartbeat-interval", &self.opts.heartbeat_ms.to_string()])
            .args(["--election-timeout", &self.opts.election_ms.to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let label = m.name.clone();
        let proc = host.spawn(&label, cmd)?;
        self.members[i].proc = Some(proc);
        Ok(())
    }

    /// `http://ip:2379` of every member, for daemons and clients inside the namespaces.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{}:{CLIENT_PORT}", m.ip)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.members[i].ip)
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
        let eps = self.endpoints().join(",");
        let mut full = vec!["etcdctl", "--command-timeout=5s", "--endpoints", eps.as_str()];
        full.extend_from_slice(args);
        net.host(self.members[i].host).exec(&full)
    }

    /// Runs `etcdctl` from member `i`'s host against member `i` only (etcdctl 3.4's balancer
    /// can stay pinned to a dead endpoint, so tests that kill members talk to a live one).
    pub fn etcdctl_at(&self, net: &Net, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let ep = self.endpoint(i);
        let mut full = vec!["etcdctl", "--command-timeout=5s", "--endpoints", ep.as_str()];
        full.extend_from_slice(args);
        net.host(self.members[i].host).exec(&full)
    }

    pub fn wait_healthy(&self, net: &Net, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let ep = self.endpoint(i);
        let host = net.host(self.members[i].host);
        wait_ok(timeout, &format!("etcd member {} to be healthy", self.members[i].name), || {
            host.exec(&["etcdctl", "--command-timeout=1s", "--endpoints", &ep, "endpoint", "health"]).map(drop)
        })
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill()?;
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
                    .position(|m| endpoint == format!("http://{}:{CLIENT_PORT}", m.ip))
                    .ok_or_else(|| anyhow::anyhow!("leader endpoint {endpoint} is not a member"));
            }
        }
        anyhow::bail!("no leader in etcdctl endpoint status: {out}")
    }
}
