//! The VRRP state machine (RFC 3768 §6.4, RFC 5798 §6.4) as a pure core.
//!
//! [`Instance::handle`] takes the current time and one [`Event`] and returns the [`Effect`]s the
//! shell must carry out, in order; [`Instance::next_deadline`] says when to call again with
//! [`Event::Timer`]. No socket, no clock: every rule is testable with made-up times.
//!
//! Where keepalived departs from the RFC in ways a mixed group can observe, we behave like
//! keepalived (its §2.4 behaviours in the reference):
//! - a master that hears a lower-priority advert answers with its own advert at once (so the
//!   other side yields without waiting for our next one) and re-sends gratuitous ARP (so
//!   clients that followed the other side come back). We send that ARP burst once more one
//!   advert interval later: two backups that time out at the same instant (equal priorities)
//!   both become master, and the one that yields may send its gratuitous ARPs after it sent
//!   the advert we answered, so that clients end up on the host that just dropped the VIP
//!   until keepalived's second burst 5 s later (the client bench measured that wait);
//! - `preempt_delay` starts when the first lower-priority advert is heard, and is restarted by
//!   every higher-priority one;
//! - a fault (a failing check without weight) makes a master resign with priority 0 and then
//!   ignore adverts until the fault clears.

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::packet::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Initialize,
    Backup,
    Master,
    /// keepalived's FAULT: a check without weight fails; we neither hold the VIP nor take part.
    Fault,
    /// After a shutdown: terminal.
    Stopped,
}

impl State {
    pub const ALL: [State; 5] = [State::Initialize, State::Backup, State::Master, State::Fault, State::Stopped];

    /// The name keepalived's `notify` scripts get, also used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
            State::Stopped => "STOP",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened: logged once with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Startup as a non-owner: wait a full Master_Down_Interval for a master to show itself.
    Startup,
    /// Priority 255 (address owner) takes over at once.
    Owner,
    /// No advert from a master for Master_Down_Interval (or Skew_Time after a priority 0).
    MasterDown,
    /// An advert with a higher priority, or the same priority from a higher address.
    HigherPriority {
        from: IpAddr,
        priority: u8,
    },
    Fault,
    FaultCleared,
    Shutdown,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Startup => f.write_str("startup, waiting for a master"),
            Why::Owner => f.write_str("priority 255: address owner"),
            Why::MasterDown => f.write_str("no advert from a master within the down interval"),
            Why::HigherPriority { from, priority } => write!(f, "advert from {from} with priority {priority} wins"),
            Why::Fault => f.write_str("a check without weight failed"),
            Why::FaultCleared => f.write_str("fault cleared"),
            Why::Shutdown => f.write_str("shutting down"),
        }
    }
}

/// Why an advert did not change anything (logged at debug, rate-limited by the shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Backup with preemption on hears a lower priority: it will take over when the timer fires.
    LowerPriority,
    /// Same priority and same address as ours: a misconfiguration or our own packet.
    SameAddress,
    /// In FAULT, INIT or STOP nothing is processed.
    NotRunning,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    SendAdvert {
        priority: u8,
    },
    AddVips,
    RemoveVips,
    /// `count` gratuitous ARPs (IPv6: unsolicited neighbour advertisements) per VIP.
    Garp {
        count: u32,
    },
    Transition {
        from: State,
        to: State,
        why: Why,
    },
    /// An advert we heard from a master whose priority is lower than ours while we are master:
    /// keepalived's `notify_master_rx_lower_pri` moment (split brain being resolved).
    LowerPriorityMaster {
        from: IpAddr,
        priority: u8,
    },
    Ignored(Ignored),
}

/// Gratuitous ARP schedule; defaults are keepalived's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarpSchedule {
    /// Sent at once on becoming master (`garp_master_repeat`, 5).
    pub master_repeat: u32,
    /// A second burst after this long (`garp_master_delay`, 5 s); zero for none.
    pub master_delay: Duration,
    /// Periodic refresh while master (`garp_master_refresh`, off); zero for none.
    pub refresh: Duration,
    pub refresh_repeat: u32,
    /// Sent when, as master, we hear a lower-priority advert (`garp_lower_prio_repeat`,
    /// defaults to `master_repeat`), and again after `lower_prio_delay`.
    pub lower_prio_repeat: u32,
    pub lower_prio_delay: Duration,
}

impl Default for GarpSchedule {
    fn default() -> Self {
        Self {
            master_repeat: 5,
            master_delay: Duration::from_secs(5),
            refresh: Duration::ZERO,
            refresh_repeat: 1,
            lower_prio_repeat: 5,
            lower_prio_delay: Duration::from_secs(5),
        }
    }
}

/// The instance's settings, from the validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub version: Version,
    /// Our advert interval in centiseconds (VRRPv2: a multiple of 100).
    pub interval_cs: u16,
    /// Preempt_Mode; false is keepalived's `nopreempt`.
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// Adverts missed before the master is declared down (RFC: 3; keepalived `down_timer_adverts`).
    pub down_timer_adverts: u32,
    /// keepalived `lower_prio_no_advert`: a master stays silent on a lower-priority advert.
    pub lower_prio_no_advert: bool,
    /// keepalived `higher_prio_send_advert`: send one last advert before yielding, so the winner
    /// re-sends gratuitous ARP.
    pub higher_prio_send_advert: bool,
    pub garp: GarpSchedule,
    /// Our source address: the tie-breaker on equal priority.
    pub local_addr: IpAddr,
}

/// One VRRP instance.
#[derive(Debug, Clone)]
pub struct Instance {
    params: Params,
    state: State,
    /// Effective priority (base plus weights); 255 only for the address owner.
    priority: u8,
    /// Master_Adver_Interval: learned from the master's adverts in VRRPv3.
    master_interval_cs: u16,
    master_down_at: Option<Instant>,
    adver_at: Option<Instant>,
    garp_delay_at: Option<Instant>,
    garp_refresh_at: Option<Instant>,
    lower_prio_garp_at: Option<Instant>,
    /// One advert interval after answering a lower-priority master: the ARP burst again, after
    /// any the other side sent on its way out.
    contested_garp_at: Option<Instant>,
    /// While `now` is before this, lower-priority adverts are accepted (keepalived's
    /// `preempt_time`); `None` until the first one is heard.
    preempt_until: Option<Instant>,
    /// A check without weight is failing: stay in (or go to) FAULT.
    fault: bool,
}

/// Numeric order of addresses, as keepalived compares them (host-order integers).
fn addr_cmp(a: IpAddr, b: IpAddr) -> Ordering {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a).cmp(&u32::from(b)),
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a).cmp(&u128::from(b)),
        // A group never mixes families; order them deterministically anyway.
        (IpAddr::V4(_), IpAddr::V6(_)) => Ordering::Less,
        (IpAddr::V6(_), IpAddr::V4(_)) => Ordering::Greater,
    }
}

/// Skew_Time for `priority` at `interval_cs`, in microseconds exactly as keepalived computes it
/// (`VRRP_TIMER_SKEW`): VRRPv2 ignores the interval, VRRPv3 scales with it.
pub fn skew(version: Version, priority: u8, interval_cs: u16) -> Duration {
    let p = 256 - u64::from(priority);
    let us = match version {
        Version::V2 => p * 1_000_000 / 256,
        Version::V3 => p * u64::from(interval_cs) * 625 / 16,
    };
    Duration::from_micros(us)
}

/// Master_Down_Interval: `adverts` × Master_Adver_Interval + Skew_Time.
pub fn master_down_interval(version: Version, priority: u8, interval_cs: u16, adverts: u32) -> Duration {
    centis(interval_cs) * adverts + skew(version, priority, interval_cs)
}

fn centis(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

impl Instance {
    /// A new instance in Initialize with effective priority `priority`.
    pub fn new(params: Params, priority: u8) -> Self {
        let master_interval_cs = params.interval_cs;
        Self {
            params,
            state: State::Initialize,
            priority,
            master_interval_cs,
            master_down_at: None,
            adver_at: None,
            garp_delay_at: None,
            garp_refresh_at: None,
            lower_prio_garp_at: None,
            contested_garp_at: None,
            preempt_until: None,
            fault: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// A config reload's new settings (preemption, GARP schedule, advert tie options). What
    /// defines the instance on the wire (version, interval, address) never changes while it
    /// runs: those keys need a restart, and are kept here whatever `params` says.
    pub fn reconfigure(&mut self, params: Params) {
        self.params = Params {
            version: self.params.version,
            interval_cs: self.params.interval_cs,
            down_timer_adverts: self.params.down_timer_adverts,
            local_addr: self.params.local_addr,
            ..params
        };
    }

    /// When [`Event::Timer`] is next due, if any timer runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.master_down_at,
            self.adver_at,
            self.garp_delay_at,
            self.garp_refresh_at,
            self.lower_prio_garp_at,
            self.contested_garp_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn down_interval(&self) -> Duration {
        master_down_interval(
            self.params.version,
            self.priority,
            self.master_interval_cs,
            self.params.down_timer_adverts,
        )
    }

    /// Applies one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::Start => self.start(now, &mut fx),
            Event::Advert { from, priority, interval_cs } => self.advert(now, from, priority, interval_cs, &mut fx),
            Event::Timer => self.timer(now, &mut fx),
            Event::Priority(p) => self.priority = p,
            Event::Fault(on) => self.set_fault(now, on, &mut fx),
            Event::Shutdown => self.shutdown(&mut fx),
        }
        fx
    }

    fn start(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.state != State::Initialize {
            return;
        }
        if self.fault {
            self.go(State::Fault, Why::Fault, fx);
        } else if self.priority == 255 {
            self.become_master(now, Why::Owner, fx);
        } else {
            self.become_backup(now, Why::Startup, fx);
        }
    }

    fn set_fault(&mut self, now: Instant, on: bool, fx: &mut Vec<Effect>) {
        self.fault = on;
        match (on, self.state) {
            (true, State::Master) => {
                self.resign(fx);
                self.go(State::Fault, Why::Fault, fx);
            }
            (true, State::Backup) => {
                self.clear_timers();
                self.go(State::Fault, Why::Fault, fx);
            }
            (false, State::Fault) if self.priority == 255 => self.become_master(now, Why::FaultCleared, fx),
            (false, State::Fault) => self.become_backup(now, Why::FaultCleared, fx),
            _ => {}
        }
    }

    fn shutdown(&mut self, fx: &mut Vec<Effect>) {
        match self.state {
            State::Master => self.resign(fx),
            State::Stopped => return,
            _ => self.clear_timers(),
        }
        self.go(State::Stopped, Why::Shutdown, fx);
    }

    /// Leave Master without a successor in sight: priority 0 tells backups to take over after
    /// Skew_Time instead of the whole down interval.
    fn resign(&mut self, fx: &mut Vec<Effect>) {
        self.clear_timers();
        fx.push(Effect::SendAdvert { priority: 0 });
        fx.push(Effect::RemoveVips);
    }

    fn clear_timers(&mut self) {
        self.master_down_at = None;
        self.adver_at = None;
        self.garp_delay_at = None;
        self.garp_refresh_at = None;
        self.lower_prio_garp_at = None;
        self.contested_garp_at = None;
    }

    fn go(&mut self, to: State, why: Why, fx: &mut Vec<Effect>) {
        let from = self.state;
        self.state = to;
        fx.push(Effect::Transition { from, to, why });
    }

    fn become_backup(&mut self, now: Instant, why: Why, fx: &mut Vec<Effect>) {
        self.clear_timers();
        self.preempt_until = None;
        self.master_down_at = Some(now + self.down_interval());
        self.go(State::Backup, why, fx);
    }

    /// keepalived's order: the advert first, so that the old master drops the VIP before our
    /// gratuitous ARPs go out; then the addresses; then the ARPs.
    fn become_master(&mut self, now: Instant, why: Why, fx: &mut Vec<Effect>) {
        self.clear_timers();
        self.master_interval_cs = self.params.interval_cs;
        fx.push(Effect::SendAdvert { priority: self.priority });
        fx.push(Effect::AddVips);
        let g = self.params.garp;
        if g.master_repeat > 0 {
            fx.push(Effect::Garp { count: g.master_repeat });
        }
        self.adver_at = Some(now + centis(self.params.interval_cs));
        self.garp_delay_at = (!g.master_delay.is_zero() && g.master_repeat > 0).then(|| now + g.master_delay);
        self.garp_refresh_at = (!g.refresh.is_zero()).then(|| now + g.refresh);
        self.go(State::Master, why, fx);
    }

    fn timer(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        match self.state {
            State::Backup if due(self.master_down_at) => self.become_master(now, Why::MasterDown, fx),
            State::Master => {
                if due(self.adver_at) {
                    fx.push(Effect::SendAdvert { priority: self.priority });
                    // From now, not from the missed deadline: after a stall, one advert, no burst.
                    self.adver_at = Some(now + centis(self.params.interval_cs));
                }
                let g = self.params.garp;
                if due(self.garp_delay_at) {
                    fx.push(Effect::Garp { count: g.master_repeat });
                    self.garp_delay_at = None;
                }
                if due(self.lower_prio_garp_at) {
                    fx.push(Effect::Garp { count: g.lower_prio_repeat });
                    self.lower_prio_garp_at = None;
                }
                if due(self.contested_garp_at) {
                    fx.push(Effect::Garp { count: g.lower_prio_repeat });
                    self.contested_garp_at = None;
                }
                if due(self.garp_refresh_at) {
                    fx.push(Effect::Garp { count: g.refresh_repeat });
                    self.garp_refresh_at = Some(now + g.refresh);
                }
            }
            _ => {}
        }
    }

    fn advert(&mut self, now: Instant, from: IpAddr, priority: u8, interval_cs: u16, fx: &mut Vec<Effect>) {
        match self.state {
            State::Backup => self.advert_as_backup(now, priority, interval_cs, fx),
            State::Master => self.advert_as_master(now, from, priority, interval_cs, fx),
            State::Initialize | State::Fault | State::Stopped => fx.push(Effect::Ignored(Ignored::NotRunning)),
        }
    }

    fn advert_as_backup(&mut self, now: Instant, priority: u8, interval_cs: u16, fx: &mut Vec<Effect>) {
        if priority == 0 {
            // The master resigned: take over after Skew_Time, so that the highest-priority
            // backup (shortest skew) wins the race.
            self.master_down_at = Some(now + skew(self.params.version, self.priority, self.master_interval_cs));
            return;
        }
        let delay = self.params.preempt_delay;
        let delaying = !delay.is_zero() && self.preempt_until.is_none_or(|t| now < t);
        if !self.params.preempt || priority >= self.priority || delaying {
            // The delay starts with the first lower-priority advert and restarts with every
            // higher-priority one (keepalived's "start preempt delay").
            if !delay.is_zero() && (priority > self.priority || self.preempt_until.is_none()) {
                self.preempt_until = Some(now + delay);
            }
            if self.params.version == Version::V3 {
                self.master_interval_cs = interval_cs;
            }
            self.master_down_at = Some(now + self.down_interval());
        } else {
            // Not resetting the timer is how a higher-priority backup preempts: it fires.
            fx.push(Effect::Ignored(Ignored::LowerPriority));
        }
    }

    fn advert_as_master(&mut self, now: Instant, from: IpAddr, priority: u8, interval_cs: u16, fx: &mut Vec<Effect>) {
        if priority == 0 {
            // Another master resigned (split brain ending): make sure backups hear us now.
            fx.push(Effect::SendAdvert { priority: self.priority });
            self.adver_at = Some(now + centis(self.params.interval_cs));
            return;
        }
        let order = priority.cmp(&self.priority).then_with(|| addr_cmp(from, self.params.local_addr));
        match order {
            Ordering::Greater => {
                if self.params.higher_prio_send_advert {
                    fx.push(Effect::SendAdvert { priority: self.priority });
                }
                self.clear_timers();
                fx.push(Effect::RemoveVips);
                if self.params.version == Version::V3 {
                    self.master_interval_cs = interval_cs;
                }
                self.preempt_until = None;
                self.master_down_at = Some(now + self.down_interval());
                self.go(State::Backup, Why::HigherPriority { from, priority }, fx);
            }
            Ordering::Equal => fx.push(Effect::Ignored(Ignored::SameAddress)),
            Ordering::Less => {
                fx.push(Effect::LowerPriorityMaster { from, priority });
                if !self.params.lower_prio_no_advert {
                    fx.push(Effect::SendAdvert { priority: self.priority });
                }
                let g = self.params.garp;
                if g.lower_prio_repeat > 0 {
                    fx.push(Effect::Garp { count: g.lower_prio_repeat });
                    self.contested_garp_at = Some(now + centis(self.params.interval_cs));
                    if !g.lower_prio_delay.is_zero() {
                        self.lower_prio_garp_at = Some(now + g.lower_prio_delay);
                    }
                }
            }
        }
    }
}

/// Inputs to the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Leave Initialize (after the sockets are open and stale VIPs removed).
    Start,
    /// A validated advert for our VRID.
    Advert { from: IpAddr, priority: u8, interval_cs: u16 },
    /// `next_deadline` has passed.
    Timer,
    /// The effective priority changed (weights from checks or the etcd leader key).
    Priority(u8),
    /// A check without weight started (true) or stopped (false) failing.
    Fault(bool),
    /// SIGTERM/SIGINT or a fatal error: release everything.
    Shutdown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::*;
    use State::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        Ipv4Addr::new(10, 0, 0, last).into()
    }

    /// Our address is .2, so peers .1 (lower) and .3 (higher) bracket it.
    const US: u8 = 2;

    fn params(version: Version) -> Params {
        Params {
            version,
            interval_cs: 100,
            preempt: true,
            preempt_delay: Duration::ZERO,
            down_timer_adverts: 3,
            lower_prio_no_advert: false,
            higher_prio_send_advert: false,
            garp: GarpSchedule::default(),
            local_addr: ip(US),
        }
    }

    /// A test-side step: at `ms` milliseconds after t0, apply an event and expect exactly these
    /// effects and then this state.
    #[derive(Clone, Copy)]
    enum Ev {
        Start,
        /// priority, sender's last octet, interval in cs
        Adv(u8, u8, u16),
        Tick,
        Prio(u8),
        Fault(bool),
        Stop,
    }

    struct Case {
        name: &'static str,
        version: Version,
        priority: u8,
        tweak: fn(&mut Params),
        steps: Vec<(u64, Ev, Vec<Effect>, State)>,
    }

    fn none(_: &mut Params) {}

    fn tr(from: State, to: State, why: Why) -> Effect {
        Transition { from, to, why }
    }

    fn higher(prio: u8, last: u8) -> Why {
        Why::HigherPriority { from: ip(last), priority: prio }
    }

    fn become_master(prio: u8, why: Why) -> Vec<Effect> {
        vec![SendAdvert { priority: prio }, AddVips, Garp { count: 5 }, tr(Backup, Master, why)]
    }

    fn owner_start() -> Vec<Effect> {
        vec![SendAdvert { priority: 255 }, AddVips, Garp { count: 5 }, tr(Initialize, Master, Why::Owner)]
    }

    fn run(case: &Case) {
        let t0 = Instant::now();
        let mut p = params(case.version);
        (case.tweak)(&mut p);
        let mut i = Instance::new(p, case.priority);
        for (n, (ms, ev, want, state)) in case.steps.iter().enumerate() {
            let now = t0 + Duration::from_millis(*ms);
            let ev = match *ev {
                Ev::Start => Event::Start,
                Ev::Adv(priority, last, interval_cs) => Event::Advert { from: ip(last), priority, interval_cs },
                Ev::Tick => Event::Timer,
                Ev::Prio(p) => Event::Priority(p),
                Ev::Fault(f) => Event::Fault(f),
                Ev::Stop => Event::Shutdown,
            };
            let got = i.handle(now, ev);
            assert_eq!(&got, want, "case {:?}, step {n} at {ms} ms", case.name);
            assert_eq!(i.state(), *state, "case {:?}, state after step {n} at {ms} ms", case.name);
        }
    }

    #[test]
    fn skew_and_down_interval_match_keepalived() {
        // Published numbers: v2 priority 100 at 1 s is 3.609375 s; v3 priority 200 at 1 s has a
        // skew of 218.75 ms (FRR truncates to 210 ms in centiseconds).
        assert_eq!(master_down_interval(Version::V2, 100, 100, 3), Duration::from_micros(3_609_375));
        assert_eq!(skew(Version::V3, 200, 100), Duration::from_micros(218_750));
        assert_eq!(skew(Version::V3, 100, 10), Duration::from_micros(60_937));
        assert_eq!(master_down_interval(Version::V3, 100, 10, 3), Duration::from_micros(360_937));
        assert_eq!(skew(Version::V2, 255, 100), Duration::from_micros(3_906));
        assert_eq!(skew(Version::V2, 1, 500), Duration::from_micros(996_093), "v2 skew ignores the interval");
    }

    #[test]
    fn rules() {
        let cases = vec![
            Case {
                name: "a non-owner starts as backup and takes over after 3 intervals plus skew",
                version: Version::V2,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3609, Ev::Tick, vec![], Backup),
                    (3610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "priority 255 (owner) goes master at once",
                version: Version::V3,
                priority: 255,
                tweak: none,
                steps: vec![(0, Ev::Start, owner_start(), Master)],
            },
            Case {
                name: "an advert from a master resets the backup's down timer",
                version: Version::V2,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3000, Ev::Adv(150, 1, 100), vec![], Backup),
                    (6000, Ev::Tick, vec![], Backup),
                    (6610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "preempt: a lower-priority advert does not reset the backup's timer",
                version: Version::V2,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3000, Ev::Adv(50, 3, 100), vec![Ignored(super::Ignored::LowerPriority)], Backup),
                    (3610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "nopreempt: a lower-priority master keeps the backup waiting",
                version: Version::V2,
                priority: 100,
                tweak: |p| p.preempt = false,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3000, Ev::Adv(50, 3, 100), vec![], Backup),
                    (3610, Ev::Tick, vec![], Backup),
                    (6000, Ev::Adv(50, 3, 100), vec![], Backup),
                    (9610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "preempt_delay: lower adverts are accepted until the delay from the first one runs out",
                version: Version::V2,
                priority: 100,
                tweak: |p| p.preempt_delay = Duration::from_secs(5),
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (1000, Ev::Adv(50, 3, 100), vec![], Backup),
                    (4000, Ev::Adv(50, 3, 100), vec![], Backup),
                    (5990, Ev::Adv(50, 3, 100), vec![], Backup),
                    (6000, Ev::Adv(50, 3, 100), vec![Ignored(super::Ignored::LowerPriority)], Backup),
                    (9599, Ev::Tick, vec![], Backup),
                    (9600, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "preempt_delay restarts with every higher-priority advert",
                version: Version::V2,
                priority: 100,
                tweak: |p| p.preempt_delay = Duration::from_secs(2),
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (1000, Ev::Adv(150, 3, 100), vec![], Backup),
                    (2000, Ev::Adv(150, 3, 100), vec![], Backup),
                    (3000, Ev::Adv(50, 1, 100), vec![], Backup),
                    (4000, Ev::Adv(50, 1, 100), vec![Ignored(super::Ignored::LowerPriority)], Backup),
                ],
            },
            Case {
                name: "priority 0 from the master: take over after skew time only",
                version: Version::V2,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (1000, Ev::Adv(150, 3, 100), vec![], Backup),
                    (1500, Ev::Adv(0, 3, 100), vec![], Backup),
                    (2109, Ev::Tick, vec![], Backup),
                    (2110, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "v3 backup learns the master's interval and times out on it",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (100, Ev::Adv(200, 3, 10), vec![], Backup),
                    // 3 × 100 ms + (156 × 10 cs × 625 / 16) µs = 360.9 ms
                    (460, Ev::Tick, vec![], Backup),
                    (461, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "v2 backup keeps its own interval (mismatches never get this far)",
                version: Version::V2,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (100, Ev::Adv(200, 3, 200), vec![], Backup),
                    (3709, Ev::Tick, vec![], Backup),
                    (3710, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "master sends an advert each interval",
                version: Version::V3,
                priority: 255,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, owner_start(), Master),
                    (999, Ev::Tick, vec![], Master),
                    (1000, Ev::Tick, vec![SendAdvert { priority: 255 }], Master),
                    (2000, Ev::Tick, vec![SendAdvert { priority: 255 }], Master),
                ],
            },
            Case {
                name: "master yields to a higher priority and drops the VIP",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                    (4000, Ev::Adv(101, 1, 100), vec![RemoveVips, tr(Master, Backup, higher(101, 1))], Backup),
                ],
            },
            Case {
                name: "equal priority: the higher address wins",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                    (
                        3620,
                        Ev::Adv(100, 1, 100),
                        vec![
                            LowerPriorityMaster { from: ip(1), priority: 100 },
                            SendAdvert { priority: 100 },
                            Garp { count: 5 },
                        ],
                        Master,
                    ),
                    (3630, Ev::Adv(100, 3, 100), vec![RemoveVips, tr(Master, Backup, higher(100, 3))], Backup),
                ],
            },
            Case {
                name: "equal priority: a backup with a higher address does not preempt",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3000, Ev::Adv(100, 1, 100), vec![], Backup),
                    (6000, Ev::Adv(100, 1, 100), vec![], Backup),
                    (6100, Ev::Tick, vec![], Backup),
                ],
            },
            Case {
                name: "keepalived interop: a master answers a lower-priority advert at once and re-sends GARP",
                version: Version::V2,
                priority: 255,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, owner_start(), Master),
                    (
                        500,
                        Ev::Adv(100, 3, 100),
                        vec![
                            LowerPriorityMaster { from: ip(3), priority: 100 },
                            SendAdvert { priority: 255 },
                            Garp { count: 5 },
                        ],
                        Master,
                    ),
                    // The advert due at 1 s, and the burst again one interval after the answer.
                    (1000, Ev::Tick, vec![SendAdvert { priority: 255 }], Master),
                    (1500, Ev::Tick, vec![Garp { count: 5 }], Master),
                    // The advert due at 2 s and the second GARP burst of the takeover.
                    (5000, Ev::Tick, vec![SendAdvert { priority: 255 }, Garp { count: 5 }], Master),
                    // The second burst after the lower-priority advert.
                    (5500, Ev::Tick, vec![Garp { count: 5 }], Master),
                ],
            },
            Case {
                name: "lower_prio_no_advert: the RFC's silent master",
                version: Version::V2,
                priority: 200,
                tweak: |p| {
                    p.lower_prio_no_advert = true;
                    p.garp.lower_prio_repeat = 0;
                },
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3300, Ev::Tick, become_master(200, Why::MasterDown), Master),
                    (3400, Ev::Adv(100, 3, 100), vec![LowerPriorityMaster { from: ip(3), priority: 100 }], Master),
                ],
            },
            Case {
                name: "higher_prio_send_advert: one last advert before yielding",
                version: Version::V3,
                priority: 100,
                tweak: |p| p.higher_prio_send_advert = true,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                    (
                        3700,
                        Ev::Adv(150, 1, 100),
                        vec![SendAdvert { priority: 100 }, RemoveVips, tr(Master, Backup, higher(150, 1))],
                        Backup,
                    ),
                ],
            },
            Case {
                name: "a master that hears priority 0 answers at once",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                    (3700, Ev::Adv(0, 3, 100), vec![SendAdvert { priority: 100 }], Master),
                    (4610, Ev::Tick, vec![], Master),
                    (4700, Ev::Tick, vec![SendAdvert { priority: 100 }], Master),
                ],
            },
            Case {
                name: "shutdown as master sends priority 0 and removes the VIP",
                version: Version::V3,
                priority: 255,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, owner_start(), Master),
                    (
                        100,
                        Ev::Stop,
                        vec![SendAdvert { priority: 0 }, RemoveVips, tr(Master, Stopped, Why::Shutdown)],
                        Stopped,
                    ),
                    (1000, Ev::Tick, vec![], Stopped),
                    (1100, Ev::Adv(100, 3, 100), vec![Ignored(super::Ignored::NotRunning)], Stopped),
                ],
            },
            Case {
                name: "shutdown as backup sends nothing",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (100, Ev::Stop, vec![tr(Backup, Stopped, Why::Shutdown)], Stopped),
                    (5000, Ev::Tick, vec![], Stopped),
                ],
            },
            Case {
                name: "fault: a master resigns with priority 0, ignores adverts, and comes back as backup",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                    (
                        4000,
                        Ev::Fault(true),
                        vec![SendAdvert { priority: 0 }, RemoveVips, tr(Master, Fault, Why::Fault)],
                        Fault,
                    ),
                    (4100, Ev::Adv(50, 3, 100), vec![Ignored(super::Ignored::NotRunning)], Fault),
                    (9000, Ev::Tick, vec![], Fault),
                    (9000, Ev::Fault(false), vec![tr(Fault, Backup, Why::FaultCleared)], Backup),
                    (12_610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "a fault present at startup keeps the instance out",
                version: Version::V3,
                priority: 255,
                tweak: none,
                steps: vec![
                    (0, Ev::Fault(true), vec![], Initialize),
                    (0, Ev::Start, vec![tr(Initialize, Fault, Why::Fault)], Fault),
                ],
            },
            Case {
                name: "a lowered priority goes out in the next advert",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (3610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                    (3700, Ev::Prio(80), vec![], Master),
                    (4610, Ev::Tick, vec![SendAdvert { priority: 80 }], Master),
                ],
            },
            Case {
                name: "a raised priority lets a backup preempt the master it was following",
                version: Version::V3,
                priority: 100,
                tweak: none,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (1000, Ev::Adv(120, 3, 100), vec![], Backup),
                    (1500, Ev::Prio(150), vec![], Backup),
                    (2000, Ev::Adv(120, 3, 100), vec![Ignored(super::Ignored::LowerPriority)], Backup),
                    (3000, Ev::Adv(120, 3, 100), vec![Ignored(super::Ignored::LowerPriority)], Backup),
                    // Timer set at 1000 with priority 100: 3 s + 609 ms.
                    (4610, Ev::Tick, become_master(150, Why::MasterDown), Master),
                ],
            },
            Case {
                name: "garp: second burst after the delay, then a refresh when configured",
                version: Version::V3,
                priority: 255,
                tweak: |p| {
                    p.garp.master_delay = Duration::from_millis(500);
                    p.garp.refresh = Duration::from_millis(3000);
                    p.garp.refresh_repeat = 2;
                    p.interval_cs = 400;
                },
                steps: vec![
                    (0, Ev::Start, owner_start(), Master),
                    (500, Ev::Tick, vec![Garp { count: 5 }], Master),
                    (3000, Ev::Tick, vec![Garp { count: 2 }], Master),
                    (4000, Ev::Tick, vec![SendAdvert { priority: 255 }], Master),
                    (6000, Ev::Tick, vec![Garp { count: 2 }], Master),
                ],
            },
            Case {
                name: "a stalled master sends one advert, not a burst",
                version: Version::V3,
                priority: 255,
                tweak: |p| p.garp.master_delay = Duration::ZERO,
                steps: vec![
                    (0, Ev::Start, owner_start(), Master),
                    (10_000, Ev::Tick, vec![SendAdvert { priority: 255 }], Master),
                    (10_999, Ev::Tick, vec![], Master),
                    (11_000, Ev::Tick, vec![SendAdvert { priority: 255 }], Master),
                ],
            },
            Case {
                name: "down_timer_adverts changes how many adverts may be missed",
                version: Version::V2,
                priority: 100,
                tweak: |p| p.down_timer_adverts = 1,
                steps: vec![
                    (0, Ev::Start, vec![tr(Initialize, Backup, Why::Startup)], Backup),
                    (1610, Ev::Tick, become_master(100, Why::MasterDown), Master),
                ],
            },
        ];
        for c in &cases {
            run(c);
        }
    }

    #[test]
    fn next_deadline_is_the_earliest_running_timer() {
        let t0 = Instant::now();
        let mut i = Instance::new(params(Version::V3), 100);
        assert_eq!(i.next_deadline(), None);
        i.handle(t0, Event::Start);
        assert_eq!(i.next_deadline(), Some(t0 + Duration::from_micros(3_609_375)));
        i.handle(t0 + Duration::from_secs(4), Event::Timer);
        assert_eq!(i.next_deadline(), Some(t0 + Duration::from_secs(5)), "advert before the GARP burst at 9 s");
        i.handle(t0 + Duration::from_secs(5), Event::Shutdown);
        assert_eq!(i.next_deadline(), None);
    }

    /// Two instances wired back to back elect the same master whatever the start order, and
    /// never both stay master once they hear each other.
    #[test]
    fn two_instances_converge_to_one_master() {
        for (pa, pb) in [(100u8, 100u8), (100, 150), (150, 100), (255, 100)] {
            let t0 = Instant::now();
            let mut a = Instance::new(Params { local_addr: ip(1), ..params(Version::V3) }, pa);
            let mut b = Instance::new(Params { local_addr: ip(3), ..params(Version::V3) }, pb);
            let mut queue: Vec<(bool, Effect)> = Vec::new();
            queue.extend(a.handle(t0, Event::Start).into_iter().map(|e| (true, e)));
            queue.extend(b.handle(t0, Event::Start).into_iter().map(|e| (false, e)));
            let mut now = t0;
            for _ in 0..2000 {
                while let Some((from_a, e)) = queue.pop() {
                    if let SendAdvert { priority } = e {
                        let (src, dst) = if from_a { (ip(1), &mut b) } else { (ip(3), &mut a) };
                        let ev = Event::Advert { from: src, priority, interval_cs: 100 };
                        queue.extend(dst.handle(now, ev).into_iter().map(|e| (!from_a, e)));
                    }
                }
                now += Duration::from_millis(10);
                for (is_a, inst) in [(true, &mut a), (false, &mut b)] {
                    if inst.next_deadline().is_some_and(|d| d <= now) {
                        queue.extend(inst.handle(now, Event::Timer).into_iter().map(|e| (is_a, e)));
                    }
                }
            }
            let masters = [a.state(), b.state()].iter().filter(|s| **s == Master).count();
            assert_eq!(masters, 1, "priorities {pa}/{pb}");
            let want_a = pa > pb;
            assert_eq!(a.state() == Master, want_a, "priorities {pa}/{pb}: higher priority, then higher address");
        }
    }
}
