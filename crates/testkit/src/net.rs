use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{NETNS_PREFIX, OWNER_ENV, Proc, TestDir, sys, wait_until};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The test subnet. It exists only inside the namespaces of one [`Net`]; no route to it exists
/// in the root namespace, and the bridge lives in a namespace of its own.
pub const SUBNET_PREFIX: &str = "10.250.0";

/// Runs a command to completion and fails with its stderr if it fails.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.env(OWNER_ENV, std::process::id().to_string()).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed ({}): {}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// A set of hosts (network namespaces) on one bridge. Dropping it kills every process left in
/// its namespaces and deletes them.
pub struct Net {
    id: String,
    switch: String,
    hosts: Vec<Host>,
    dir: TestDir,
}

type Job = Box<dyn FnOnce() + Send>;

/// One host: a network namespace with `eth0` on the bridge, and a thread living inside it.
pub struct Host {
    name: String,
    netns: String,
    ip: Ipv4Addr,
    dir: TestDir,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Net {
    /// Creates hosts `n1..=n<count>` with addresses `10.250.0.1..`. `test` names the log folder.
    pub fn start(test: &str, count: usize) -> anyhow::Result<Self> {
        crate::sys::enough_disk()?;
        let dir = TestDir::new(test)?;
        let id = format!("{NETNS_PREFIX}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let switch = format!("{id}-sw");
        let mut net = Self { id, switch: switch.clone(), hosts: Vec::new(), dir };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for i in 1..=count {
            net.add_host(&format!("n{i}"))?;
        }
        Ok(net)
    }

    /// Adds one more host (a client, say) on the bridge, with the next free address.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<&Host> {
        let index = self.hosts.len() + 1;
        anyhow::ensure!(index < 250, "too many hosts");
        let netns = format!("{}-{name}", self.id);
        let port = format!("p{index}");
        ip(&["netns", "add", &netns])?;
        // Register the host before configuring it, so that a failure below still deletes it.
        let host = Host::new(name, &netns, format!("{SUBNET_PREFIX}.{index}").parse()?, self.dir.clone())?;
        self.hosts.push(host);
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &self.switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &self.switch, "link", "set", &port, "up"])?;
        ip(&["-n", &netns, "addr", "add", &format!("{SUBNET_PREFIX}.{index}/24"), "dev", "eth0"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        self.hosts.last().ok_or_else(|| anyhow::anyhow!("host just added"))
    }

    /// Host by 1-based index (`host(1)` is `n1`).
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index - 1]
    }

    pub fn by_name(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// Every namespace of this net, the switch's included.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        v.push(self.switch.clone());
        v
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            h.kill_everything();
        }
        for h in &mut self.hosts {
            h.stop_thread();
        }
        for ns in self.namespaces() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("testkit: could not delete namespace {ns}: {e:#}");
            }
        }
    }
}

impl Host {
    fn new(name: &str, netns: &str, ip: Ipv4Addr, dir: TestDir) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let path = Path::new("/run/netns").join(netns);
        let thread = std::thread::Builder::new().name(format!("host-{name}")).spawn(move || {
            let entered = sys::enter_netns(&path);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if ok {
                for job in rx {
                    job();
                }
            }
        })?;
        let mut host =
            Self { name: name.to_owned(), netns: netns.to_owned(), ip, dir, jobs: Some(tx), thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(host),
            Ok(Err(e)) => {
                host.stop_thread();
                Err(e.context(format!("enter namespace {netns}")))
            }
            Err(_) => anyhow::bail!("host thread for {netns} died"),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// Runs `f` on this host's thread, inside its namespace: sockets it opens belong to the
    /// host, and so do threads it starts. A panic in `f` is re-raised here.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        });
        let jobs = self.jobs.as_ref().ok_or_else(|| anyhow::anyhow!("host {} is shut down", self.name))?;
        jobs.send(job).map_err(|_| anyhow::anyhow!("host thread of {} is gone", self.name))?;
        match rx.recv()? {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// A tokio runtime whose threads live in this namespace: clients built on it (etcd,
    /// tokio-postgres, HTTP) talk from this host.
    pub fn runtime(&self) -> anyhow::Result<NsRuntime> {
        let rt =
            self.enter(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build())??;
        Ok(NsRuntime { rt, host: self.name.clone() })
    }

    /// Starts `cmd` on this host with its output in `<test dir>/<label>.log`. The process is
    /// killed if the test process dies.
    pub fn spawn(&self, label: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        self.spawn_with(label, &mut cmd, Signal::SIGTERM)
    }

    pub(crate) fn spawn_with(&self, label: &str, cmd: &mut Command, stop: Signal) -> anyhow::Result<Proc> {
        let log = self.dir.log(label);
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).env(OWNER_ENV, std::process::id().to_string());
        sys::kill_with_parent(cmd);
        // Command is not Send; hand it over by value inside the job and back as a Child.
        let cmd = std::mem::replace(cmd, Command::new("true"));
        let holder = SendCommand(cmd);
        let child = self.enter(move || {
            let mut holder = holder;
            holder.0.spawn()
        })??;
        Ok(Proc::new(label, child, log, stop))
    }

    /// Runs `cmd` to completion from this host (it may set uid/gid) and returns its stdout.
    pub fn run(&self, cmd: Command) -> anyhow::Result<String> {
        let holder = SendCommand(cmd);
        self.enter(move || {
            let mut holder = holder;
            run(&mut holder.0)
        })?
    }

    /// Runs a short command in this namespace (`ip netns exec`) and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").args(["netns", "exec", &self.netns]).args(args))
    }

    /// Applies an nft ruleset inside this namespace.
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().ok_or_else(|| anyhow::anyhow!("nft stdin"))?.write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "nft on {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Drops packets matching `input` rules on the way in and `output` rules on the way out,
    /// as table `inet otk_<name>`; [`Host::unblock`] removes it. Rules are nft expressions such
    /// as `ip saddr 10.250.0.2` or `tcp dport 2379`; `drop` is appended.
    pub fn block(&self, name: &str, input: &[&str], output: &[&str]) -> anyhow::Result<()> {
        let rules = |rs: &[&str]| rs.iter().map(|r| format!("    {r} drop\n")).collect::<String>();
        self.nft(&format!(
            "table inet otk_{name} {{\n  chain input {{ type filter hook input priority -10; policy accept;\n{}  }}\n  chain output {{ type filter hook output priority -10; policy accept;\n{}  }}\n}}\n",
            rules(input),
            rules(output)
        ))
    }

    pub fn unblock(&self, name: &str) -> anyhow::Result<()> {
        self.exec(&["nft", "delete", "table", "inet", &format!("otk_{name}")]).map(drop)
    }

    /// Cuts the host off the network (its loopback keeps working), as a pulled cable would:
    /// at the device too, not only in the IP hooks. The `inet` rules never see ARP or frames
    /// from packet sockets, so a cut-off VRRP master still answered ARP for its VIP and sent
    /// its gratuitous ARPs, and clients went back to it (the client bench through the VIP
    /// measured seconds of that).
    pub fn cut_off(&self) -> anyhow::Result<()> {
        self.block("cut", &["iifname \"eth0\""], &["oifname \"eth0\""])?;
        self.nft(
            "table netdev otk_cut {\n  chain in { type filter hook ingress device \"eth0\" priority 0; policy drop; }\n  \
             chain out { type filter hook egress device \"eth0\" priority 0; policy drop; }\n}\n",
        )
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        self.unblock("cut")?;
        self.exec(&["nft", "delete", "table", "netdev", "otk_cut"]).map(drop)
    }

    /// Pids of every process in this namespace.
    pub fn pids(&self) -> Vec<i32> {
        ip(&["netns", "pids", &self.netns])
            .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGSTOP to every process on the host: the whole machine hangs, sockets stay open.
    pub fn freeze_all(&self) -> anyhow::Result<()> {
        for p in self.pids() {
            let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
        }
        Ok(())
    }

    pub fn thaw_all(&self) -> anyhow::Result<()> {
        for p in self.pids() {
            let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
        }
        Ok(())
    }

    fn kill_everything(&self) {
        for p in self.pids() {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = wait_until(Duration::from_secs(5), "processes in the namespace to exit", || {
            self.pids().is_empty().then_some(())
        });
    }

    fn stop_thread(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct SendCommand(Command);
// Command holds raw pointers into its own argument storage only; moving it to another thread
// before spawning is sound (std just does not declare it).
#[allow(unsafe_code)]
// SAFETY: see above; the Command is used by exactly one thread at a time.
unsafe impl Send for SendCommand {}

/// A tokio runtime inside a host's namespace. Futures run on its worker threads, never on the
/// caller's thread: a socket opened while polling on the caller (root namespace) would send
/// test traffic out of the machine.
pub struct NsRuntime {
    rt: tokio::runtime::Runtime,
    host: String,
}

impl NsRuntime {
    /// Runs `fut` to completion on the runtime's workers (inside the namespace).
    pub fn block_on<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
        match self.rt.block_on(self.rt.spawn(fut)) {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task on host {} was cancelled: {e}", self.host),
        }
    }

    /// Starts `fut` in the background on this runtime.
    pub fn spawn<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.rt.spawn(fut)
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }
}
