//! vip-manager against real keepalived (Debian's 2.2.7) in network namespaces on one bridge.
//!
//! Each test builds a group of hosts, starts vip-manager or keepalived on each, and checks who
//! holds the VIP by reading the hosts' addresses (not the daemons' logs). Faults are injected
//! as in production: SIGKILL, SIGSTOP (a hung host), a switch port that drops every frame (a
//! host cut off: nothing in or out, ARP and gratuitous ARP included), SIGTERM (a clean stop).
//! A client host connects to the VIP to check that it reaches the new owner after a takeover,
//! which only works if the gratuitous ARPs went out.
//!
//! Timings are short (VRRPv3 at 100 ms, VRRPv2 at its minimum of 1 s) so the file runs in a
//! couple of minutes; waits are on conditions with deadlines, and the time a takeover took is
//! printed, not asserted (the figures are measured by `bench/vip-manager`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outrigger_testkit::{EtcdCluster, EtcdOptions, Net, Proc, hold_for, wait_until};

const VIP: &str = "10.250.0.100";
/// The VIP of the IPv6 group; every host also gets `fd00::<index>/64` so the client has a route.
const VIP6: &str = "fd00::100";
/// Each host answers TCP connections on this port with its name: the client's probe.
const NAME_PORT: u16 = 7070;
const METRICS: &str = "127.0.0.1:9802";
const VRID: u8 = 51;

/// The vip-manager binary, built once per test run.
fn vip_manager_bin() -> PathBuf {
    outrigger_testkit::bin::daemon("vip-manager")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    VipManager,
    Keepalived,
}

/// What every member of a group shares.
#[derive(Debug, Clone)]
struct Proto {
    version: u8,
    interval: Duration,
    auth: Option<&'static str>,
    unicast: bool,
}

impl Proto {
    fn v3(interval_ms: u64) -> Self {
        Self { version: 3, interval: Duration::from_millis(interval_ms), auth: None, unicast: false }
    }

    fn v2() -> Self {
        Self { version: 2, interval: Duration::from_secs(1), auth: None, unicast: false }
    }
}

/// Per-member settings.
#[derive(Debug, Clone)]
struct Opts {
    priority: u8,
    preempt: bool,
    preempt_delay_s: u64,
    /// Overrides the group's password (for the mismatch test).
    auth: Option<&'static str>,
    /// More vip-manager config (sections such as `[leader]`).
    extra: String,
}

fn prio(priority: u8) -> Opts {
    Opts { priority, preempt: true, preempt_delay_s: 0, auth: None, extra: String::new() }
}

struct Member {
    imp: Impl,
    proc: Proc,
    /// Its config file (a reload test rewrites it).
    conf: PathBuf,
}

/// A VRRP group: `hosts` hosts (n1..) plus a client host, each host answering on
/// [`NAME_PORT`] with its name.
struct Group {
    net: Net,
    proto: Proto,
    hosts: usize,
    members: Vec<Option<Member>>,
    client: usize,
    starts: usize,
    vip: &'static str,
    /// ERROR lines a test provokes on purpose (substrings).
    expected_errors: Vec<&'static str>,
}

impl Group {
    fn new(test: &str, hosts: usize, proto: Proto) -> Self {
        // Before any member starts: the build may wait for cargo's lock.
        vip_manager_bin();
        let mut net = Net::start(test, hosts).expect("create namespaces");
        net.add_host("client").expect("add the client host");
        let client = hosts + 1;
        for i in 1..=hosts {
            let name = net.host(i).name().to_owned();
            net.host(i)
                .enter(move || {
                    // Dual-stack: answers over IPv4 and IPv6.
                    let l = TcpListener::bind(("::", NAME_PORT)).expect("bind the name responder");
                    // Threads started here live in the host's namespace; the test process
                    // ends them when it exits.
                    std::thread::spawn(move || {
                        for mut s in l.incoming().flatten() {
                            let _ = s.write_all(name.as_bytes());
                        }
                    });
                })
                .expect("start the name responder");
        }
        Self {
            net,
            proto,
            hosts,
            members: (0..hosts).map(|_| None).collect(),
            client,
            starts: 0,
            vip: VIP,
            expected_errors: vec![],
        }
    }

    /// The same over IPv6 (VRRPv3 only): link-local sources, ff02::12, unsolicited NAs.
    fn new_v6(test: &str, hosts: usize, proto: Proto) -> Self {
        let mut g = Self::new(test, hosts, proto);
        g.vip = VIP6;
        for h in 1..=g.client {
            let addr = format!("fd00::{h}/64");
            g.net.host(h).exec(&["ip", "-6", "addr", "add", &addr, "dev", "eth0", "nodad"]).expect("add IPv6 address");
        }
        // VRRP over IPv6 is sent from the link-local address, which must have passed DAD.
        for h in 1..=g.client {
            wait_until(Duration::from_secs(10), "link-local addresses to leave DAD", || {
                let out = g.net.host(h).exec(&["ip", "-6", "addr", "show", "dev", "eth0", "tentative"]).ok()?;
                out.trim().is_empty().then_some(())
            })
            .unwrap();
        }
        g
    }

    fn ip(&self, host: usize) -> String {
        self.net.host(host).ip().to_string()
    }

    fn peers(&self) -> Vec<String> {
        (1..=self.hosts).map(|h| self.ip(h)).collect()
    }

    fn start(&mut self, host: usize, imp: Impl, o: Opts) {
        // A directory per start: a killed keepalived leaves zombie pids in its pid files, and a
        // new one refuses to start while they look alive.
        let starts = self.starts;
        self.starts += 1;
        let dir = self.net.dir().sub(&format!("{}-n{host}-{starts}", label(imp))).expect("member dir");
        let (conf_name, text) = match imp {
            Impl::VipManager => ("vip-manager.toml", self.vm_config(host, &o)),
            Impl::Keepalived => ("keepalived.conf", self.ka_config(host, &o)),
        };
        let conf = dir.join(conf_name);
        std::fs::write(&conf, text).expect("write config");
        let cmd = match imp {
            Impl::VipManager => {
                let mut c = Command::new(vip_manager_bin());
                // Plain text logs, so that ERROR lines can be found.
                c.arg("--config").arg(&conf).env("NO_COLOR", "1");
                c
            }
            Impl::Keepalived => {
                let mut c = Command::new("/usr/sbin/keepalived");
                c.args(["-n", "-l", "-D", "-P", "-f"])
                    .arg(&conf)
                    .arg("-p")
                    .arg(dir.join("keepalived.pid"))
                    .arg("-r")
                    .arg(dir.join("vrrp.pid"))
                    .arg("-c")
                    .arg(dir.join("checkers.pid"));
                c
            }
        };
        let proc = self.net.host(host).spawn(&format!("{}-n{host}-{starts}", label(imp)), cmd).expect("spawn member");
        self.members[host - 1] = Some(Member { imp, proc, conf });
    }

    /// Rewrites the member's config file with `o` (or `text` as given) and sends SIGHUP, as
    /// `systemctl reload` does, to vip-manager or keepalived's parent.
    fn reload(&self, host: usize, o: &Opts, text: Option<&str>) {
        let m = self.members[host - 1].as_ref().expect("a member runs there");
        let text = match (text, m.imp) {
            (Some(t), _) => t.to_owned(),
            (None, Impl::VipManager) => self.vm_config(host, o),
            (None, Impl::Keepalived) => self.ka_config(host, o),
        };
        std::fs::write(&m.conf, text).expect("rewrite config");
        m.proc.signal(Signal::SIGHUP).expect("SIGHUP");
    }

    fn vm_config(&self, host: usize, o: &Opts) -> String {
        let p = &self.proto;
        let interval =
            if p.version == 2 { format!("{}s", p.interval.as_secs()) } else { format!("{}ms", p.interval.as_millis()) };
        let mut s = format!(
            "interface = \"eth0\"\nvip = \"{}\"\n[vrrp]\nversion = {}\nvrid = {VRID}\npriority = {}\n\
             advert_interval = \"{interval}\"\npreempt = {}\npreempt_delay = \"{}s\"\n",
            self.vip, p.version, o.priority, o.preempt, o.preempt_delay_s
        );
        if let Some(pass) = o.auth.or(p.auth) {
            s += &format!("auth_pass = \"{pass}\"\n");
        }
        if p.unicast {
            let peers: Vec<String> = self.peers().iter().map(|a| format!("\"{a}\"")).collect();
            s += &format!("source = \"{}\"\nunicast_peers = [{}]\n", self.ip(host), peers.join(", "));
        }
        s += &format!("[metrics]\nlisten = \"{METRICS}\"\n");
        s += &o.extra;
        s
    }

    fn ka_config(&self, host: usize, o: &Opts) -> String {
        let p = &self.proto;
        let mut s = format!(
            "global_defs {{\n  router_id n{host}\n  vrrp_version {}\n}}\nvrrp_instance VI_1 {{\n  interface eth0\n  \
             state BACKUP\n  virtual_router_id {VRID}\n  priority {}\n  advert_int {}\n",
            p.version,
            o.priority,
            p.interval.as_secs_f64()
        );
        if !o.preempt {
            s += "  nopreempt\n";
        }
        if o.preempt_delay_s > 0 {
            s += &format!("  preempt_delay {}\n", o.preempt_delay_s);
        }
        if let Some(pass) = o.auth.or(p.auth) {
            s += &format!("  authentication {{\n    auth_type PASS\n    auth_pass {pass}\n  }}\n");
        }
        if p.unicast {
            s += &format!("  unicast_src_ip {}\n  unicast_peer {{\n", self.ip(host));
            for peer in self.peers() {
                s += &format!("    {peer}\n");
            }
            s += "  }\n";
        }
        let plen = if self.vip.contains(':') { 128 } else { 32 };
        s += &format!("  virtual_ipaddress {{\n    {}/{plen}\n  }}\n}}\n", self.vip);
        s
    }

    /// SIGKILL to everything on the host (keepalived is two processes): a crash. The VIP stays
    /// configured on the host, as it would after a real crash.
    fn kill(&mut self, host: usize) {
        let h = self.net.host(host);
        let pids = h.pids();
        // Stop them all first, so keepalived's parent cannot restart its child in between.
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        if let Some(mut m) = self.members[host - 1].take() {
            let _ = m.proc.kill();
            self.check_errors(&m);
        }
    }

    /// SIGTERM and wait for the exit: a clean stop.
    fn stop(&mut self, host: usize) {
        if let Some(mut m) = self.members[host - 1].take() {
            m.proc.stop(Duration::from_secs(10)).expect("stop member");
            self.check_errors(&m);
        }
    }

    /// SIGSTOP to every process on the host: it hangs with its sockets and addresses.
    fn freeze(&self, host: usize) {
        self.net.host(host).freeze_all().expect("freeze");
    }

    fn thaw(&self, host: usize) {
        self.net.host(host).thaw_all().expect("thaw");
    }

    /// Drops every frame to and from the host's switch port: nothing in or out, ARP and
    /// gratuitous ARP included (a host-side nft rule would let AF_PACKET frames through).
    fn isolate(&self, host: usize) {
        let rules = format!(
            "table bridge otk_cut_{host} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
             iifname \"p{host}\" drop\n    oifname \"p{host}\" drop\n  }}\n}}\n"
        );
        self.switch_nft(&["-f", "-"], Some(&rules));
    }

    fn rejoin(&self, host: usize) {
        self.switch_nft(&["delete", "table", "bridge", &format!("otk_cut_{host}")], None);
    }

    fn switch_nft(&self, args: &[&str], stdin: Option<&str>) {
        let switch = self.net.namespaces().pop().expect("switch namespace");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &switch, "nft"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        let mut input = child.stdin.take().expect("nft stdin");
        input.write_all(stdin.unwrap_or("").as_bytes()).expect("write nft rules");
        drop(input);
        assert!(child.wait().expect("nft").success(), "nft {args:?} in the switch namespace");
    }

    /// Hosts that have the VIP configured, read from their addresses.
    fn holders(&self) -> Vec<usize> {
        (1..=self.hosts)
            .filter(|&h| {
                let out = self.net.host(h).exec(&["ip", "-o", "addr", "show", "dev", "eth0"]).unwrap_or_default();
                out.contains(&format!(" {}/", self.vip))
            })
            .collect()
    }

    /// Waits until `host` is the only host with the VIP; returns how long that took.
    fn wait_sole_holder(&self, host: usize, timeout: Duration, what: &str) -> Duration {
        let t0 = Instant::now();
        let r = wait_until(timeout, &format!("n{host} alone to hold the VIP ({what})"), || {
            (self.holders() == [host]).then_some(())
        });
        if let Err(e) = r {
            panic!("{e:#}; holders now {:?}; logs in {}", self.holders(), self.net.dir().path().display());
        }
        let took = t0.elapsed();
        eprintln!("{what}: n{host} alone holds the VIP after {took:?}");
        took
    }

    /// Waits until `host` holds the VIP (others may too: a host cut off keeps its own).
    fn wait_holder(&self, host: usize, timeout: Duration, what: &str) -> Duration {
        let t0 = Instant::now();
        let r = wait_until(timeout, &format!("n{host} to hold the VIP ({what})"), || {
            self.holders().contains(&host).then_some(())
        });
        if let Err(e) = r {
            panic!("{e:#}; holders now {:?}; logs in {}", self.holders(), self.net.dir().path().display());
        }
        let took = t0.elapsed();
        eprintln!("{what}: n{host} holds the VIP after {took:?}");
        took
    }

    /// Asserts that `host` keeps the VIP alone for `period` (nothing preempts it).
    fn stays_sole_holder(&self, host: usize, period: Duration, what: &str) {
        let end = Instant::now() + period;
        while Instant::now() < end {
            assert_eq!(self.holders(), [host], "{what}: n{host} should keep the VIP alone");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The name of the host that answers on VIP:NAME_PORT from the client host.
    fn client_reaches(&self) -> Option<String> {
        let addr: SocketAddr = match self.vip.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, NAME_PORT),
            Err(_) => return None,
        };
        self.net
            .host(self.client)
            .enter(move || {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
                s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
                let mut name = String::new();
                s.read_to_string(&mut name).ok()?;
                Some(name)
            })
            .ok()
            .flatten()
    }

    fn wait_client_reaches(&self, host: usize, timeout: Duration) -> Duration {
        let want = self.net.host(host).name().to_owned();
        let t0 = Instant::now();
        let r = wait_until(timeout, &format!("the client to reach {want} at the VIP"), || {
            (self.client_reaches().as_deref() == Some(want.as_str())).then_some(())
        });
        if let Err(e) = r {
            panic!("{e:#}; it reaches {:?}; holders {:?}", self.client_reaches(), self.holders());
        }
        t0.elapsed()
    }

    /// vip-manager's metrics, fetched from inside its host.
    fn metrics(&self, host: usize) -> String {
        self.net
            .host(host)
            .enter(|| {
                let mut s = TcpStream::connect(METRICS).ok()?;
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out)
            })
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn check_errors(&self, m: &Member) {
        if m.imp == Impl::VipManager {
            let errors = m.proc.unexpected_errors(&self.expected_errors);
            assert!(errors.is_empty(), "vip-manager logged errors:\n{}", errors.join("\n"));
        }
    }

    /// Ends the test: every vip-manager stops cleanly without an unexpected ERROR.
    fn finish(mut self) {
        for h in 1..=self.hosts {
            self.stop(h);
        }
    }
}

fn label(imp: Impl) -> &'static str {
    match imp {
        Impl::VipManager => "vm",
        Impl::Keepalived => "ka",
    }
}

/// Generous deadlines: several down intervals, for a loaded 2-core CI machine.
const FAST: Duration = Duration::from_secs(5);
const SLOW_V2: Duration = Duration::from_secs(12);

use Impl::{Keepalived as Ka, VipManager as Vm};

#[test]
fn v3_highest_priority_wins_and_a_killed_master_hands_over_both_ways() {
    let mut g = Group::new("v3_highest_priority_wins_and_a_killed_master_hands_over_both_ways", 3, Proto::v3(100));
    g.start(1, Ka, prio(150));
    g.start(2, Vm, prio(200));
    g.start(3, Vm, prio(100));
    g.wait_sole_holder(2, FAST, "vip-manager 200 over keepalived 150 and vip-manager 100");

    g.kill(2);
    g.wait_holder(1, FAST, "vip-manager master killed: keepalived takes over");
    g.kill(1);
    g.wait_holder(3, FAST, "keepalived master killed: vip-manager takes over");

    // Restarted, each removes the VIP its crash left behind; the 200 preempts again.
    g.start(1, Ka, prio(150));
    g.start(2, Vm, prio(200));
    g.wait_sole_holder(2, FAST, "after restarts, the highest priority alone holds the VIP");
    g.finish();
}

#[test]
fn v3_keepalived_wins_when_it_has_the_highest_priority() {
    let mut g = Group::new("v3_keepalived_wins_when_it_has_the_highest_priority", 3, Proto::v3(100));
    g.start(1, Vm, prio(150));
    g.start(2, Vm, prio(100));
    g.start(3, Ka, prio(200));
    g.wait_sole_holder(3, FAST, "keepalived 200 over two vip-managers");
    g.stays_sole_holder(3, Duration::from_millis(500), "a stable election");
    g.finish();
}

#[test]
fn v2_with_pass_auth_and_unicast_peers_hands_over_from_a_frozen_master_and_back() {
    let proto = Proto { auth: Some("password"), unicast: true, ..Proto::v2() };
    let mut g = Group::new("v2_with_pass_auth_and_unicast_peers_hands_over_from_a_frozen_master_and_back", 3, proto);
    g.start(1, Ka, prio(150));
    g.start(2, Vm, prio(200));
    g.start(3, Vm, prio(100));
    g.wait_sole_holder(2, SLOW_V2, "vip-manager 200 over keepalived 150");

    // A hung vip-manager: keepalived takes over; thawed, the 200 preempts it back.
    g.freeze(2);
    g.wait_holder(1, SLOW_V2, "vip-manager frozen: keepalived takes over");
    g.thaw(2);
    g.wait_sole_holder(2, SLOW_V2, "vip-manager thawed: it takes the VIP back");

    // A hung keepalived master: the next vip-manager takes over.
    g.stop(2);
    g.wait_sole_holder(1, SLOW_V2, "vip-manager stopped: keepalived holds the VIP");
    g.freeze(1);
    g.wait_holder(3, SLOW_V2, "keepalived frozen: vip-manager takes over");
    g.thaw(1);
    g.wait_sole_holder(1, SLOW_V2, "keepalived thawed: it takes the VIP back");
    g.finish();
}

#[test]
fn v2_pass_auth_mismatch_is_rejected_and_counted() {
    let proto = Proto { auth: Some("secret"), ..Proto::v2() };
    let mut g = Group::new("v2_pass_auth_mismatch_is_rejected_and_counted", 2, proto);
    g.start(1, Ka, prio(100));
    g.start(2, Vm, Opts { auth: Some("wrong"), ..prio(200) });
    // Neither accepts the other's adverts, so each becomes master on its own: the classic
    // misconfiguration, and the reason the rejects are counted.
    wait_until(SLOW_V2, "both to hold the VIP", || (g.holders() == [1, 2]).then_some(())).unwrap();
    let m = g.metrics(2);
    let line = m.lines().find(|l| l.starts_with("vip_manager_rejected_packets_total{reason=\"auth_pass\"}"));
    let count: u64 = line.and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(0);
    assert!(count > 0, "auth_pass rejects should be counted:\n{m}");
    g.finish();
}

#[test]
fn v3_cut_off_master_is_replaced_the_client_follows_and_after_healing_one_master_remains() {
    let mut g = Group::new(
        "v3_cut_off_master_is_replaced_the_client_follows_and_after_healing_one_master_remains",
        2,
        Proto::v3(100),
    );
    g.start(1, Ka, prio(200));
    g.start(2, Vm, prio(150));
    g.wait_sole_holder(1, FAST, "keepalived 200 over vip-manager 150");
    // The client learns the VIP's MAC from the current holder.
    g.wait_client_reaches(1, FAST);

    g.isolate(1);
    g.wait_holder(2, FAST, "keepalived cut off: vip-manager takes over");
    let took = g.wait_client_reaches(2, FAST);
    eprintln!("the client reached the new owner {took:?} after it held the VIP (gratuitous ARP)");

    // Both are master now (the cut-off one cannot know better). After healing, the lower one
    // yields at the first advert it hears: one master, one VIP.
    assert_eq!(g.holders(), [1, 2], "the cut-off host keeps its VIP while alone");
    g.rejoin(1);
    g.wait_sole_holder(1, FAST, "partition healed: one master, one VIP");
    g.wait_client_reaches(1, FAST);

    // And the other way round: vip-manager's side cut off after it preempts.
    g.stop(1);
    g.wait_sole_holder(2, FAST, "keepalived stopped");
    g.start(1, Ka, prio(100));
    g.stays_sole_holder(2, Duration::from_millis(600), "a lower keepalived joins");
    g.wait_client_reaches(2, FAST);
    g.isolate(2);
    g.wait_holder(1, FAST, "vip-manager cut off: keepalived takes over");
    g.wait_client_reaches(1, FAST);
    g.rejoin(2);
    g.wait_sole_holder(2, FAST, "partition healed: the higher vip-manager alone holds it");
    g.wait_client_reaches(2, FAST);
    g.finish();
}

#[test]
fn v3_nopreempt_and_preempt_delay_are_honoured() {
    let mut g = Group::new("v3_nopreempt_and_preempt_delay_are_honoured", 3, Proto::v3(100));
    g.start(1, Ka, prio(100));
    g.wait_sole_holder(1, FAST, "keepalived alone");
    // A higher vip-manager with nopreempt leaves the running master alone.
    g.start(2, Vm, Opts { preempt: false, ..prio(200) });
    g.stays_sole_holder(1, Duration::from_secs(1), "vip-manager 200 with nopreempt joined");
    // A higher vip-manager with a preempt delay takes over, but only after the delay.
    let joined = Instant::now();
    g.start(3, Vm, Opts { preempt_delay_s: 2, ..prio(150) });
    g.stays_sole_holder(1, Duration::from_millis(1200), "within vip-manager 150's preempt delay");
    g.wait_sole_holder(3, FAST, "vip-manager 150's preempt delay is over");
    eprintln!("preempted {:?} after joining (delay 2 s)", joined.elapsed());
    // The nopreempt member still does not preempt the new (lower) master.
    g.stays_sole_holder(3, Duration::from_millis(500), "nopreempt member stays backup");

    // keepalived with nopreempt behaves the same towards a vip-manager master.
    g.stop(2);
    g.stop(1);
    g.start(1, Ka, Opts { preempt: false, ..prio(250) });
    g.stays_sole_holder(3, Duration::from_secs(1), "keepalived 250 with nopreempt joined");
    g.stop(3);
    g.wait_sole_holder(1, FAST, "the vip-manager master stopped: keepalived takes over");
    g.finish();
}

/// Equal priorities never preempt (the first master stays), so the tie-break only shows when
/// two masters meet: after a partition heals. Every member starts cut off, becomes master
/// alone, and the highest address must win when they meet, whichever implementation it runs.
#[test]
fn v3_equal_priorities_are_resolved_by_the_higher_address_in_both_implementations() {
    let mut g =
        Group::new("v3_equal_priorities_are_resolved_by_the_higher_address_in_both_implementations", 3, Proto::v3(100));
    for h in 1..=3 {
        g.isolate(h);
    }
    g.start(1, Vm, prio(100));
    g.start(2, Vm, prio(100));
    g.start(3, Ka, prio(100));
    wait_until(FAST, "every isolated member to be master", || (g.holders() == [1, 2, 3]).then_some(())).unwrap();
    for h in 1..=3 {
        g.rejoin(h);
    }
    g.wait_sole_holder(3, FAST, "healed: keepalived .3 has the highest address");
    g.stays_sole_holder(3, Duration::from_millis(500), "a stable tie-break");

    // The other way round: keepalived .2 must yield to vip-manager .3.
    g.stop(3);
    g.stop(2);
    g.wait_sole_holder(1, FAST, "vip-manager .1 alone");
    g.start(2, Ka, prio(100));
    g.start(3, Vm, prio(100));
    // Joining members with the same priority do not preempt the running master.
    g.stays_sole_holder(1, Duration::from_secs(1), "equal priority does not preempt");
    for h in 1..=3 {
        g.isolate(h);
    }
    wait_until(FAST, "every isolated member to be master", || (g.holders() == [1, 2, 3]).then_some(())).unwrap();
    for h in 1..=3 {
        g.rejoin(h);
    }
    g.wait_sole_holder(3, FAST, "healed: vip-manager .3 over keepalived .2 and vip-manager .1");
    g.finish();
}

#[test]
fn a_clean_stop_hands_over_within_about_the_skew_time_in_both_directions() {
    // 1 s adverts make the difference plain: the down interval is over 3 s, the skew of the
    // next priority a fraction of a second.
    let mut g = Group::new("a_clean_stop_hands_over_within_about_the_skew_time_in_both_directions", 3, Proto::v3(1000));
    g.start(1, Vm, prio(200));
    g.start(2, Ka, prio(150));
    g.start(3, Vm, prio(100));
    g.wait_sole_holder(1, Duration::from_secs(10), "vip-manager 200");
    let t0 = Instant::now();
    g.stop(1);
    g.wait_sole_holder(2, Duration::from_secs(10), "vip-manager stopped: priority 0 to keepalived");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}: the priority 0 advert was not acted on");
    let t0 = Instant::now();
    g.stop(2);
    g.wait_sole_holder(3, Duration::from_secs(10), "keepalived stopped: priority 0 to vip-manager");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}: keepalived's priority 0 advert was not acted on");
    g.finish();
}

#[test]
fn etcd_follow_moves_the_vip_with_the_leader_key() {
    let net = Net::start("etcd_follow_moves_the_vip_with_the_leader_key", 3).expect("namespaces");
    let etcd = EtcdCluster::start(&net, &[3], EtcdOptions::default()).expect("etcd");
    let endpoints = etcd.endpoints();
    let key = "/service/pg/leader";
    let mut procs = Vec::new();
    for (host, policy) in [(1, "keep"), (2, "release")] {
        let dir = net.dir().sub(&format!("vm-n{host}")).expect("dir");
        let conf = dir.join("vip-manager.toml");
        std::fs::write(
            &conf,
            format!(
                "interface = \"eth0\"\nvip = \"{VIP}\"\nmode = \"etcd-follow\"\n[leader]\nscope = \"pg\"\n\
                 member = \"n{host}\"\non_etcd_unreachable = \"{policy}\"\n[etcd]\nendpoints = {endpoints:?}\n"
            ),
        )
        .expect("config");
        let mut cmd = Command::new(vip_manager_bin());
        cmd.arg("--config").arg(&conf).env("NO_COLOR", "1");
        procs.push(net.host(host).spawn(&format!("vm-n{host}"), cmd).expect("spawn"));
    }
    let holders = |net: &Net| -> Vec<usize> {
        (1..=2)
            .filter(|&h| {
                net.host(h).exec(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).unwrap_or_default().contains(VIP)
            })
            .collect()
    };
    let wait = |net: &Net, want: &[usize], what: &str| {
        let t0 = Instant::now();
        wait_until(Duration::from_secs(10), what, || (holders(net) == want).then_some(()))
            .unwrap_or_else(|e| panic!("{e:#}; holders {:?}", holders(net)));
        eprintln!("{what}: {:?}", t0.elapsed());
    };
    hold_for(Duration::from_millis(500), "nobody holds the VIP without a leader key", || {
        let h = holders(&net);
        anyhow::ensure!(h.is_empty(), "held by {h:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    etcd.etcdctl(&net, 0, &["put", key, "n1"]).expect("put");
    wait(&net, &[1], "leader n1");
    etcd.etcdctl(&net, 0, &["put", key, "n2"]).expect("put");
    wait(&net, &[2], "leader n2");
    etcd.etcdctl(&net, 0, &["del", key]).expect("del");
    wait(&net, &[], "no leader");
    etcd.etcdctl(&net, 0, &["put", key, "n2"]).expect("put");
    wait(&net, &[2], "leader n2 again");

    // Cut off from etcd, n2 (policy release) drops the VIP; reachable again, it takes it back.
    let etcd_ip = net.host(3).ip().to_string();
    net.host(2).block("etcd", &[&format!("ip saddr {etcd_ip}")], &[&format!("ip daddr {etcd_ip}")]).expect("block");
    wait(&net, &[], "n2 cut off from etcd with policy release");
    net.host(2).unblock("etcd").expect("unblock");
    wait(&net, &[2], "n2 reaches etcd again");

    // n1 (policy keep) holds on through an etcd outage.
    etcd.etcdctl(&net, 0, &["put", key, "n1"]).expect("put");
    wait(&net, &[1], "leader n1");
    net.host(1).block("etcd", &[&format!("ip saddr {etcd_ip}")], &[&format!("ip daddr {etcd_ip}")]).expect("block");
    hold_for(Duration::from_secs(3), "policy keep rides out the outage", || {
        let h = holders(&net);
        anyhow::ensure!(h == [1], "holders {h:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    net.host(1).unblock("etcd").expect("unblock");

    for mut p in procs.drain(..) {
        p.stop(Duration::from_secs(10)).expect("stop");
        let errors = p.unexpected_errors(&[]);
        assert!(errors.is_empty(), "vip-manager logged errors:\n{}", errors.join("\n"));
    }
    assert_eq!(holders(&net), Vec::<usize>::new(), "a clean stop releases the VIP");
    drop(etcd);
}

#[test]
fn v3_over_ipv6_interoperates_and_the_client_follows_unsolicited_neighbour_advertisements() {
    let mut g = Group::new_v6(
        "v3_over_ipv6_interoperates_and_the_client_follows_unsolicited_neighbour_advertisements",
        2,
        Proto::v3(100),
    );
    g.start(1, Ka, prio(200));
    g.start(2, Vm, prio(150));
    g.wait_sole_holder(1, FAST, "IPv6: keepalived 200 over vip-manager 150");
    g.wait_client_reaches(1, FAST);
    g.isolate(1);
    g.wait_holder(2, FAST, "IPv6: keepalived cut off, vip-manager takes over");
    let took = g.wait_client_reaches(2, FAST);
    eprintln!("the client reached the new owner {took:?} after it held the VIP (unsolicited NA)");
    g.rejoin(1);
    g.wait_sole_holder(1, FAST, "IPv6: healed, one master");

    g.stop(1);
    g.wait_sole_holder(2, FAST, "IPv6: keepalived stopped (priority 0)");
    g.start(1, Ka, prio(100));
    g.stays_sole_holder(2, Duration::from_millis(600), "IPv6: a lower keepalived joins");
    g.kill(2);
    g.wait_holder(1, FAST, "IPv6: vip-manager killed, keepalived takes over");
    g.finish();
}

#[test]
fn vrrp_priority_follows_the_etcd_leader_key_and_notify_reports_each_state() {
    let mut g =
        Group::new("vrrp_priority_follows_the_etcd_leader_key_and_notify_reports_each_state", 3, Proto::v3(100));
    let etcd = EtcdCluster::start(&g.net, &[g.client], EtcdOptions::default()).expect("etcd");
    let key = "/service/pg/leader";
    let notify_dir = g.net.dir().sub("notify").expect("dir");
    let script = notify_dir.join("notify.sh");
    // Arguments: our host name, then keepalived's four: INSTANCE <name> <state> <priority>.
    std::fs::write(&script, "#!/bin/sh\necho \"$4 $5\" >> \"$(dirname \"$0\")/$1.log\"\n").expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let extra = |h: usize| {
        format!(
            "[leader]\nscope = \"pg\"\nmember = \"n{h}\"\nweight = 50\n[etcd]\nendpoints = {:?}\n\
             [notify]\ncommand = [\"{}\", \"n{h}\"]\n",
            etcd.endpoints(),
            script.display()
        )
    };
    g.start(1, Vm, Opts { extra: extra(1), ..prio(100) });
    g.start(2, Vm, Opts { extra: extra(2), ..prio(100) });
    g.start(3, Ka, prio(120));
    g.wait_sole_holder(3, FAST, "no leader key: keepalived 120 over two vip-managers at 100");

    etcd.etcdctl(&g.net, 0, &["put", key, "n1"]).expect("put");
    g.wait_sole_holder(1, FAST, "n1 leads: 100 + 50 preempts keepalived's 120");
    etcd.etcdctl(&g.net, 0, &["put", key, "n2"]).expect("put");
    g.wait_sole_holder(2, FAST, "n2 leads: the VIP follows");
    etcd.etcdctl(&g.net, 0, &["del", key]).expect("del");
    g.wait_sole_holder(3, FAST, "no leader: keepalived's 120 is the highest again");

    let n2 = std::fs::read_to_string(notify_dir.join("n2.log")).unwrap_or_default();
    let states: Vec<&str> = n2.lines().collect();
    assert_eq!(states.first(), Some(&"BACKUP 100"), "notify lines of n2: {states:?}");
    assert!(states.contains(&"MASTER 150"), "notify lines of n2: {states:?}");
    assert_eq!(states.last(), Some(&"BACKUP 100"), "notify lines of n2: {states:?}");
    g.finish();
}

/// `vip_manager_rejected_packets_total{reason}` on host `h`.
fn rejected(g: &Group, h: usize, reason: &str) -> u64 {
    counter(g, h, &format!("vip_manager_rejected_packets_total{{reason=\"{reason}\"}}"))
}

/// The value of the series `series` in host `h`'s metrics (0 when absent).
fn counter(g: &Group, h: usize, series: &str) -> u64 {
    let m = g.metrics(h);
    m.lines().find(|l| l.starts_with(series)).and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(0)
}

/// `systemctl reload` as keepalived users know it, in a group with keepalived: SIGHUP re-reads
/// the file and a new priority applies to the running instance (a lower one hands the VIP
/// over, a higher one takes it back), keepalived's own reload does the same to us, and an
/// invalid file changes nothing (counted, the instance keeps running).
#[test]
fn sighup_applies_a_new_priority_in_a_group_with_keepalived_and_an_invalid_file_changes_nothing() {
    let mut g = Group::new(
        "sighup_applies_a_new_priority_in_a_group_with_keepalived_and_an_invalid_file_changes_nothing",
        2,
        Proto::v3(100),
    );
    g.expected_errors = vec!["config reload refused"];
    let reloads =
        |g: &Group, result: &str| counter(g, 1, &format!("vip_manager_config_reloads_total{{result=\"{result}\"}}"));
    g.start(1, Vm, prio(150));
    g.start(2, Ka, prio(100));
    g.wait_sole_holder(1, FAST, "vip-manager at 150 over keepalived at 100");

    g.reload(1, &prio(50), None);
    g.wait_sole_holder(2, FAST, "vip-manager reloaded at 50: keepalived's 100 preempts");
    assert_eq!(reloads(&g, "applied"), 1);

    g.reload(1, &prio(200), Some("interface = \"eth0\"\nvip = \"nonsense\"\n[vrrp]\npriority = 200\n"));
    wait_until(FAST, "the invalid file to be counted", || (reloads(&g, "invalid") == 1).then_some(())).unwrap();
    g.stays_sole_holder(2, Duration::from_secs(1), "an invalid file applies nothing (still 50)");

    g.reload(1, &prio(200), None);
    g.wait_sole_holder(1, FAST, "vip-manager reloaded at 200 preempts keepalived");
    g.reload(2, &prio(250), None);
    g.wait_sole_holder(2, FAST, "keepalived reloaded at 250 preempts vip-manager");
    assert_eq!((reloads(&g, "applied"), reloads(&g, "invalid")), (2, 1));
    assert!(g.members[0].as_mut().is_some_and(|m| m.proc.is_running()), "vip-manager kept running through its reloads");
    g.finish();
}

/// Hostile input: an IPv6 VRRP datagram longer than any VRRP message (5000 bytes, sent in
/// fragments and reassembled by the kernel) comes back from `recvmsg` with its real length
/// although only the buffer's worth was copied. vip-manager once sliced past its buffer on it,
/// panicked and dropped the VIP. It is refused and counted, and the master keeps the VIP.
#[test]
fn an_oversized_ipv6_vrrp_datagram_is_counted_and_the_master_keeps_the_vip() {
    let mut g =
        Group::new_v6("an_oversized_ipv6_vrrp_datagram_is_counted_and_the_master_keeps_the_vip", 2, Proto::v3(100));
    g.start(1, Vm, prio(200));
    g.start(2, Vm, prio(100));
    g.wait_sole_holder(1, FAST, "IPv6: vip-manager 200 over vip-manager 100");
    let before = rejected(&g, 1, "length");
    // From host 2: raw IPv6, protocol 112, to the VRRP group on eth0, hop limit 255, with the
    // checksum the kernel computes (the receiving socket drops a wrong one before anything).
    let send = "import socket\n\
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 112)\n\
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)\n\
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 6)\n\
                i = socket.if_nametoindex('eth0')\n\
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, i)\n\
                for _ in range(3):\n    s.sendto(bytes([0x31, 1, 200, 1]) + bytes(4996), ('ff02::12', 0, 0, i))\n";
    g.net.host(2).exec(&["python3", "-c", send]).expect("send the oversized datagrams");
    wait_until(FAST, "host 1 to count the oversized datagrams", || (rejected(&g, 1, "length") > before).then_some(()))
        .unwrap();
    g.stays_sole_holder(1, Duration::from_millis(1500), "IPv6: the master keeps the VIP");
    g.finish();
}

/// One etcd member frozen (each in turn, raft leadership moved off it first) breaks the leader
/// key's watch of whichever vip-manager uses it; the others still answer, so the leader's
/// bonus must hold: keepalived at 120 would take the VIP from the leader's 100 + 50 the moment
/// it dropped. (The client bench saw the leader's priority flap every 2 s during a cut-off.)
#[test]
fn a_frozen_etcd_member_never_drops_the_leaders_bonus() {
    let mut g = Group::new("a_frozen_etcd_member_never_drops_the_leaders_bonus", 3, Proto::v3(100));
    let etcd = EtcdCluster::start(&g.net, &[1, 2, 3], EtcdOptions::default()).expect("etcd");
    let key = "/service/pg/leader";
    let extra = |h: usize| {
        format!(
            "[leader]\nscope = \"pg\"\nmember = \"n{h}\"\nweight = 50\n[etcd]\nendpoints = {:?}\n",
            etcd.endpoints()
        )
    };
    g.start(1, Vm, Opts { extra: extra(1), ..prio(100) });
    g.start(2, Vm, Opts { extra: extra(2), ..prio(100) });
    g.start(3, Ka, prio(120));
    etcd.etcdctl(&g.net, 0, &["put", key, "n1"]).expect("put");
    g.wait_sole_holder(1, FAST, "n1 leads: 100 + 50 over keepalived's 120");
    for m in 0..etcd.len() {
        etcd.move_leader_off_host(&g.net, etcd.host_of(m)).expect("move etcd's raft leader");
        etcd.freeze(m).expect("freeze an etcd member");
        g.stays_sole_holder(1, Duration::from_secs(6), &format!("etcd member {m} frozen: n1 keeps its bonus"));
        etcd.thaw(m).expect("thaw");
        etcd.wait_healthy(&g.net, m, Duration::from_secs(30)).expect("etcd member back");
    }
    g.finish();
}

/// The periodic check (every 5 s) puts the VIP back in line with the state: removed by hand
/// from the master, it comes back; added by hand on the backup, it goes.
#[test]
fn a_vip_removed_from_the_master_or_added_on_the_backup_by_hand_is_put_right() {
    let mut g =
        Group::new("a_vip_removed_from_the_master_or_added_on_the_backup_by_hand_is_put_right", 2, Proto::v3(100));
    g.start(1, Vm, prio(200));
    g.start(2, Vm, prio(100));
    g.wait_sole_holder(1, FAST, "vip-manager 200 over vip-manager 100");
    let (held, stray) = (format!("{}/32", g.vip), format!("{}/24", g.vip));
    g.net.host(1).exec(&["ip", "addr", "del", &held, "dev", "eth0"]).expect("remove the VIP by hand");
    wait_until(FAST, "the VIP gone from n1", || g.holders().is_empty().then_some(())).unwrap();
    g.wait_sole_holder(1, Duration::from_secs(15), "the master put the VIP back");
    // Under another prefix than vip-manager's own: it goes all the same.
    g.net.host(2).exec(&["ip", "addr", "add", &stray, "dev", "eth0"]).expect("add the VIP on the backup by hand");
    wait_until(FAST, "the VIP on both", || (g.holders() == [1, 2]).then_some(())).unwrap();
    g.wait_sole_holder(1, Duration::from_secs(15), "the backup removed the stray VIP");
    g.finish();
}
