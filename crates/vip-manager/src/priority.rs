//! Effective priority from weights (pure), with keepalived's rules.
//!
//! keepalived's `track_script`/`track_file` model, which users of the reference deployment
//! already know, applied to our inputs (the etcd leader key and local checks):
//! - weight > 0: added while the check is up;
//! - weight < 0: subtracted while the check is down;
//! - weight 0: the instance goes to FAULT while the check is down;
//! - a `file` check adds value × weight; with weight 0 a non-zero value is a FAULT;
//! - the sum is clamped to 1..254; an owner (255) stays 255 (only a fault takes it out).
//!
//! A check is down until its first result, like keepalived's `init_fail`: a node that has not
//! yet seen its checks pass must not win an election on a priority it may not deserve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What a track checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Up while a TCP connection to `address` succeeds within the timeout.
    Tcp { address: SocketAddr },
    /// Up while `GET path` answers `expect_status` (proxy-checker's or HAProxy's endpoints).
    Http { address: SocketAddr, path: String, expect_status: u16 },
    /// An integer read from the file (keepalived `track_file`).
    File { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub name: String,
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub weight: i32,
    pub rise: u32,
    pub fall: u32,
}

/// A track's current conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    Down,
    /// A `file` check's value.
    Value(i64),
}

/// One weighted input: its name (for the log line that explains a fault), weight and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input<'a> {
    pub name: &'a str,
    pub weight: i32,
    pub status: Status,
}

/// The effective priority, and the input that causes a fault, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub priority: u8,
    pub fault: Option<String>,
}

pub fn effective(base: u8, inputs: &[Input<'_>]) -> Verdict {
    let mut sum = i64::from(base);
    let mut fault = None;
    for i in inputs {
        let w = i64::from(i.weight);
        match (i.status, i.weight) {
            (Status::Down, 0) => fault = fault.or_else(|| Some(i.name.to_owned())),
            (Status::Up, w) if w > 0 => sum += i64::from(w),
            (Status::Down, w) if w < 0 => sum += i64::from(w),
            (Status::Value(v), 0) if v != 0 => fault = fault.or_else(|| Some(i.name.to_owned())),
            (Status::Value(v), _) => {
                let add = v.saturating_mul(w);
                // keepalived: a track_file result below -253 is a fault, not just a low priority.
                if add < -253 {
                    fault = fault.or_else(|| Some(i.name.to_owned()));
                }
                sum = sum.saturating_add(add);
            }
            _ => {}
        }
    }
    let priority = if base == 255 { 255 } else { sum.clamp(1, 254) as u8 };
    Verdict { priority, fault }
}

/// keepalived's `rise`/`fall`: a check changes state only after that many results in a row.
/// The very first result sets the state directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    up: Option<bool>,
    streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self { rise: rise.max(1), fall: fall.max(1), up: None, streak: 0 }
    }

    /// Records one result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        match self.up {
            None => {
                self.up = Some(ok);
                Some(ok)
            }
            Some(up) if up == ok => {
                self.streak = 0;
                None
            }
            Some(_) => {
                self.streak += 1;
                let need = if ok { self.rise } else { self.fall };
                if self.streak >= need {
                    self.streak = 0;
                    self.up = Some(ok);
                    Some(ok)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(name: &str, weight: i32, status: Status) -> Input<'_> {
        Input { name, weight, status }
    }

    #[test]
    fn keepalived_weight_rules() {
        use Status::*;
        // (name, base priority, inputs, expected priority, expected fault)
        type Case<'a> = (&'a str, u8, Vec<Input<'a>>, u8, Option<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            ("no inputs: base priority", 100, vec![], 100, None),
            ("positive weight added while up", 100, vec![i("leader", 50, Up)], 150, None),
            ("positive weight ignored while down", 100, vec![i("leader", 50, Down)], 100, None),
            ("negative weight subtracted while down", 100, vec![i("haproxy", -30, Down)], 70, None),
            ("negative weight ignored while up", 100, vec![i("haproxy", -30, Up)], 100, None),
            ("weight 0 down is a fault", 100, vec![i("leader", 0, Down)], 100, Some("leader")),
            ("weight 0 up is nothing", 100, vec![i("leader", 0, Up)], 100, None),
            ("clamped to 254", 200, vec![i("a", 100, Up)], 254, None),
            ("clamped to 1", 10, vec![i("a", -100, Down)], 1, None),
            ("owner is not moved by weights", 255, vec![i("a", -100, Down)], 255, None),
            ("owner still faults", 255, vec![i("a", 0, Down)], 255, Some("a")),
            ("file value times weight", 100, vec![i("f", 5, Value(3))], 115, None),
            ("file negative value", 100, vec![i("f", 5, Value(-4))], 80, None),
            ("file weight 0 non-zero is a fault", 100, vec![i("f", 0, Value(1))], 100, Some("f")),
            ("file weight 0 zero is fine", 100, vec![i("f", 0, Value(0))], 100, None),
            ("file below -253 is a fault", 100, vec![i("f", 1, Value(-254))], 1, Some("f")),
            ("first fault named", 100, vec![i("a", 0, Down), i("b", 0, Down)], 100, Some("a")),
            ("weights add up", 100, vec![i("leader", 50, Up), i("haproxy", -20, Down), i("x", 5, Up)], 135, None),
        ];
        for (name, base, inputs, prio, fault) in cases {
            let v = effective(base, &inputs);
            assert_eq!(v.priority, prio, "case {name:?}");
            assert_eq!(v.fault.as_deref(), fault, "case {name:?}");
        }
    }

    #[test]
    fn rise_and_fall_need_that_many_results_in_a_row() {
        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.observe(false), Some(false), "the first result counts at once");
        assert_eq!(rf.observe(true), None);
        assert_eq!(rf.observe(false), None, "a break resets the streak");
        assert_eq!(rf.observe(true), None);
        assert_eq!(rf.observe(true), Some(true));
        assert_eq!(rf.observe(false), None);
        assert_eq!(rf.observe(false), None);
        assert_eq!(rf.observe(false), Some(false));
        let mut one = RiseFall::new(1, 1);
        assert_eq!(one.observe(true), Some(true));
        assert_eq!(one.observe(false), Some(false));
    }
}
