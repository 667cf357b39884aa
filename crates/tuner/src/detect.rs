//! Hardware detection for the options the operator leaves out: CPUs and RAM from the cgroup
//! limits (v2, then v1) when the process runs in a container or a systemd slice, else from the
//! host; the disk type from sysfs for the data directory's device.
//!
//! pg_configurator reads the host's totals (psutil), so in Docker every container sizes for
//! the whole machine; the reference deployment's three co-located PostgreSQL instances each
//! took 70 % of the host's RAM. Reading the cgroup limit is the fix.
//!
//! Everything is read under a root directory (`/` normally, `--host-root` to read a host's
//! `/proc` and `/sys` mounted elsewhere, a fake tree in tests). The parsers are pure functions;
//! [`Probe`] only walks files.

use std::path::{Path, PathBuf};

use crate::input::Disk;

/// What was detected, and from where (for `--explain`).
#[derive(Debug, Clone, PartialEq)]
pub struct Found<T> {
    pub value: T,
    pub source: String,
}

/// `cpu.max` (v2): `max 100000` or `<quota> <period>` → cores, `None` when unlimited.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next().and_then(|p| p.parse().ok()).unwrap_or(100_000.0);
    if quota == "max" {
        return None;
    }
    let q: f64 = quota.parse().ok()?;
    (q > 0.0 && period > 0.0).then(|| q / period)
}

/// `memory.max` (v2) or `memory.limit_in_bytes` (v1) → bytes, `None` when unlimited. v1
/// writes "unlimited" as a huge page-aligned number (9223372036854771712).
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v: u64 = t.parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// `/sys/devices/system/cpu/online`: `0-3,8-11` → 8.
pub fn parse_cpu_list(text: &str) -> Option<u32> {
    let mut n = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.trim().parse::<u32>().ok()?.checked_sub(a.trim().parse::<u32>().ok()?)? + 1,
            None => {
                part.trim().parse::<u32>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// `MemTotal:` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One line of `/proc/self/cgroup`: hierarchy id, controllers, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctl = it.next()?;
            let path = it.next()?;
            Some(CgroupLine {
                controllers: ctl.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// A cgroup mount from `/proc/self/mountinfo`: where it is mounted, which part of the
/// hierarchy it shows, and its filesystem type and super options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub root: String,
    pub mount_point: String,
    /// `cgroup2` or `cgroup`.
    pub fstype: String,
    pub super_options: Vec<String>,
}

pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split_whitespace().collect();
            let r: Vec<&str> = right.split_whitespace().collect();
            let fstype = *r.first()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgroupMount {
                root: unescape(f.get(3)?),
                mount_point: unescape(f.get(4)?),
                fstype: fstype.to_owned(),
                super_options: r.get(2).map_or(vec![], |o| o.split(',').map(str::to_owned).collect()),
            })
        })
        .collect()
}

/// mountinfo escapes spaces and a few other bytes as `\040`-style octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the machine under `root`.
#[derive(Debug, Clone)]
pub struct Probe {
    pub root: PathBuf,
}

/// A cgroup directory to read limits from, from the process's own group up to the mount.
struct CgroupDir {
    v2: bool,
    /// Directories from the process's group up to the hierarchy's mount point, innermost first.
    levels: Vec<PathBuf>,
}

impl Probe {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &Path) -> Option<String> {
        std::fs::read_to_string(p).ok()
    }

    /// The cgroup directories that hold `controller`'s limits for this process.
    fn cgroup_dirs(&self, controller: &str) -> Option<CgroupDir> {
        let groups = parse_proc_cgroup(&self.read(&self.path("proc/self/cgroup"))?);
        let mounts = parse_mountinfo(&self.read(&self.path("proc/self/mountinfo"))?);
        // v1 first when the controller has its own hierarchy (a hybrid host mounts v2 without
        // controllers); else the unified v2 hierarchy.
        let v1 = groups.iter().filter(|g| g.controllers.iter().any(|c| c == controller)).find_map(|g| {
            let m = mounts.iter().find(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == controller))?;
            Some((g, m, false))
        });
        let (line, mount, v2) = v1.or_else(|| {
            let g = groups.iter().find(|g| g.controllers.is_empty())?;
            let m = mounts.iter().find(|m| m.fstype == "cgroup2")?;
            Some((g, m, true))
        })?;
        // The mount shows the hierarchy from `mount.root`; a container usually sees its own
        // group as the root, so strip that prefix from the path the kernel reports.
        let rel = line.path.strip_prefix(mount.root.as_str()).unwrap_or(&line.path);
        let top = self.path(&mount.mount_point);
        let mut dir = top.join(rel.trim_start_matches('/'));
        let mut levels = vec![dir.clone()];
        while dir != top && dir.pop() && dir.starts_with(&top) {
            levels.push(dir.clone());
        }
        Some(CgroupDir { v2, levels })
    }

    /// The tightest CPU quota over the cgroup levels, in cores.
    fn cgroup_cpus(&self) -> Option<Found<f64>> {
        let g = self.cgroup_dirs("cpu")?;
        let mut best: Option<Found<f64>> = None;
        for dir in &g.levels {
            let (cores, file) = if g.v2 {
                let f = dir.join("cpu.max");
                (self.read(&f).and_then(|t| parse_cpu_max(&t)), f)
            } else {
                let q = dir.join("cpu.cfs_quota_us");
                let quota: Option<f64> = self.read(&q).and_then(|t| t.trim().parse().ok()).filter(|q: &f64| *q > 0.0);
                let period: Option<f64> = self.read(&dir.join("cpu.cfs_period_us")).and_then(|t| t.trim().parse().ok());
                (quota.zip(period).filter(|(_, p)| *p > 0.0).map(|(q, p)| q / p), q)
            };
            if let Some(c) = cores
                && best.as_ref().is_none_or(|b| c < b.value)
            {
                best = Some(Found { value: c, source: format!("cgroup {} quota", self.shown(&file)) });
            }
        }
        best
    }

    /// The tightest memory limit over the cgroup levels.
    fn cgroup_memory(&self) -> Option<Found<u64>> {
        let g = self.cgroup_dirs("memory")?;
        let name = if g.v2 { "memory.max" } else { "memory.limit_in_bytes" };
        let mut best: Option<Found<u64>> = None;
        for dir in &g.levels {
            let f = dir.join(name);
            if let Some(b) = self.read(&f).and_then(|t| parse_memory_limit(&t))
                && best.as_ref().is_none_or(|x| b < x.value)
            {
                best = Some(Found { value: b, source: format!("cgroup limit {}", self.shown(&f)) });
            }
        }
        best
    }

    fn shown(&self, p: &Path) -> String {
        match p.strip_prefix(&self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => p.display().to_string(),
        }
    }

    /// CPUs: the cgroup quota if it is below the host's online CPUs, else the host's.
    pub fn cpus(&self) -> Option<Found<f64>> {
        let online = self.path("sys/devices/system/cpu/online");
        let host = self
            .read(&online)
            .and_then(|t| parse_cpu_list(&t))
            .map(|n| Found { value: n as f64, source: format!("host, {}", self.shown(&online)) });
        match (self.cgroup_cpus(), host) {
            (Some(c), Some(h)) if c.value < h.value => Some(c),
            (Some(c), None) => Some(c),
            (_, h) => h,
        }
    }

    /// RAM: the cgroup limit if it is below the host's total, else the host's.
    pub fn ram(&self) -> Option<Found<u64>> {
        let meminfo = self.path("proc/meminfo");
        let host = self
            .read(&meminfo)
            .and_then(|t| parse_meminfo_total(&t))
            .map(|b| Found { value: b, source: format!("host, {} MemTotal", self.shown(&meminfo)) });
        match (self.cgroup_memory(), host) {
            (Some(c), Some(h)) if c.value < h.value => Some(c),
            (Some(c), None) => Some(c),
            (_, h) => h,
        }
    }

    /// The disk type of block device `major:minor`, from sysfs.
    pub fn disk_of_device(&self, major: u64, minor: u64) -> Option<Found<Disk>> {
        let link = self.path(&format!("sys/dev/block/{major}:{minor}"));
        let dir = std::fs::canonicalize(&link).ok()?;
        self.classify(&dir, 0)
    }

    fn classify(&self, dir: &Path, depth: u32) -> Option<Found<Disk>> {
        // A partition has no queue/ of its own: its disk is the parent directory.
        let disk = if dir.join("partition").exists() { dir.parent()?.to_path_buf() } else { dir.to_path_buf() };
        let name = disk.file_name()?.to_string_lossy().into_owned();
        // Device-mapper and md devices sit on other devices: the slowest of those decides.
        if depth < 8
            && let Ok(entries) = std::fs::read_dir(disk.join("slaves"))
        {
            let mut slaves: Vec<Found<Disk>> = entries
                .filter_map(|e| std::fs::canonicalize(e.ok()?.path()).ok())
                .filter_map(|p| self.classify(&p, depth + 1))
                .collect();
            slaves.sort_by_key(|f| speed_rank(f.value));
            if let Some(slowest) = slaves.into_iter().next() {
                return Some(Found { value: slowest.value, source: format!("{name} on {}", slowest.source) });
            }
        }
        let rotational = self.read(&disk.join("queue/rotational"))?.trim() == "1";
        let what = |d: Disk, why: &str| Some(Found { value: d, source: format!("{name}: {why}") });
        if !rotational {
            return if name.starts_with("nvme") {
                what(Disk::Nvme, "non-rotational NVMe")
            } else {
                what(Disk::Ssd, "non-rotational")
            };
        }
        if name.starts_with("vd") || name.starts_with("xvd") {
            // virtio and Xen disks report rotational=1 unless the hypervisor says otherwise;
            // cloud volumes behind them are SSD-backed almost everywhere.
            return what(Disk::Ssd, "virtual disk (its rotational flag is the hypervisor's default), taken as SSD");
        }
        let vendor = self.read(&disk.join("device/vendor")).unwrap_or_default();
        if vendor.trim() == "ATA" {
            what(Disk::Sata, "rotational, ATA")
        } else {
            what(Disk::Sas, "rotational, SCSI/SAS")
        }
    }

    /// The disk type under `data_dir` (or its nearest existing parent).
    pub fn disk_of_path(&self, data_dir: &Path) -> Option<Found<Disk>> {
        use std::os::unix::fs::MetadataExt;
        let mut p = data_dir.to_path_buf();
        let meta = loop {
            match std::fs::metadata(&p) {
                Ok(m) => break m,
                Err(_) if p.pop() => continue,
                Err(_) => return None,
            }
        };
        let dev = meta.dev();
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        self.disk_of_device(major, minor).map(|f| Found { source: format!("{} ({})", f.source, p.display()), ..f })
    }
}

fn speed_rank(d: Disk) -> u8 {
    match d {
        Disk::Sata => 0,
        Disk::Sas => 1,
        Disk::San => 2,
        Disk::Ssd => 3,
        Disk::Nvme => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_files_parse() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("4294967296\n"), Some(4 << 30));
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cpu_list("0-3,8-11\n"), Some(8));
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_meminfo_total("MemTotal:       24684092 kB\nMemFree: 1 kB\n"), Some(24_684_092 * 1024));
    }

    #[test]
    fn cgroup_and_mountinfo_lines_parse() {
        let g = parse_proc_cgroup("4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/system.slice/x.service\n");
        assert_eq!(g[1].controllers, vec!["cpu", "cpuacct"]);
        assert!(g[2].controllers.is_empty());
        assert_eq!(g[2].path, "/system.slice/x.service");
        let m = parse_mountinfo(
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             30 23 0:27 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n\
             22 1 254:0 / / rw - ext4 /dev/vda rw\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].super_options, vec!["rw", "memory"]);
        assert_eq!(m[1].root, "/docker/abc");
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
