//! Hardware detection over fake `/proc` and `/sys` trees: cgroup v2 and v1 limits (tightest
//! level wins, a container's view of its own group as root), the host fallback, and disk
//! types from sysfs.

// Helpers outside `#[test]` functions panic on purpose too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use tuner::detect::Probe;
use tuner::input::Disk;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn host(root: &Path) {
    write(root, "proc/meminfo", "MemTotal:       24684092 kB\n");
    write(root, "sys/devices/system/cpu/online", "0-15\n");
}

#[test]
fn cgroup_v2_limits_of_a_systemd_slice_win_over_the_host() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    host(r);
    write(r, "proc/self/cgroup", "0::/system.slice/postgresql.service\n");
    write(r, "proc/self/mountinfo", "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
    write(r, "sys/fs/cgroup/system.slice/cpu.max", "400000 100000\n");
    write(r, "sys/fs/cgroup/system.slice/memory.max", "8589934592\n");
    // The service's own limits are tighter for CPU, looser for memory: each takes the tightest.
    write(r, "sys/fs/cgroup/system.slice/postgresql.service/cpu.max", "150000 100000\n");
    write(r, "sys/fs/cgroup/system.slice/postgresql.service/memory.max", "max\n");
    let p = Probe::new(r);
    let cpu = p.cpus().unwrap();
    assert_eq!(cpu.value, 1.5);
    assert!(cpu.source.contains("/sys/fs/cgroup/system.slice/postgresql.service/cpu.max"), "{}", cpu.source);
    let ram = p.ram().unwrap();
    assert_eq!(ram.value, 8 << 30);
    assert!(ram.source.contains("system.slice/memory.max"), "{}", ram.source);
}

#[test]
fn a_docker_container_sees_its_own_group_as_the_cgroup_root() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    host(r);
    // Inside a container with a cgroup namespace the mount's root is the container's group.
    write(r, "proc/self/cgroup", "0::/\n");
    write(r, "proc/self/mountinfo", "30 23 0:27 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n");
    write(r, "sys/fs/cgroup/cpu.max", "200000 100000\n");
    write(r, "sys/fs/cgroup/memory.max", "4294967296\n");
    let p = Probe::new(r);
    assert_eq!(p.cpus().unwrap().value, 2.0);
    assert_eq!(p.ram().unwrap().value, 4 << 30);
}

#[test]
fn cgroup_v1_quota_and_limit_are_read_and_unlimited_means_the_host() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    host(r);
    write(r, "proc/self/cgroup", "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n");
    write(
        r,
        "proc/self/mountinfo",
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
         35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
    );
    write(r, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n");
    write(r, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    write(r, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
    let p = Probe::new(r);
    assert_eq!(p.cpus().unwrap().value, 3.0);
    let ram = p.ram().unwrap();
    assert_eq!(ram.value, 24_684_092 * 1024, "an unlimited v1 group falls back to the host");
    assert!(ram.source.starts_with("host"), "{}", ram.source);
}

#[test]
fn without_cgroups_the_host_totals_are_used() {
    let d = tempfile::tempdir().unwrap();
    host(d.path());
    let p = Probe::new(d.path());
    assert_eq!(p.cpus().unwrap().value, 16.0);
    assert_eq!(p.ram().unwrap().value, 24_684_092 * 1024);
}

/// Builds `sys/dev/block/M:m` for the real device of `dir`, pointing at a fake disk.
fn fake_disk(root: &Path, dir: &Path, disk: &str, rotational: &str, vendor: Option<&str>) {
    let dev = std::fs::metadata(dir).unwrap().dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let base = format!("sys/devices/pci0000:00/block/{disk}");
    write(root, &format!("{base}/queue/rotational"), rotational);
    if let Some(v) = vendor {
        write(root, &format!("{base}/device/vendor"), v);
    }
    write(root, &format!("{base}/{disk}1/partition"), "1\n");
    std::fs::create_dir_all(root.join("sys/dev/block")).unwrap();
    symlink(
        format!("../../devices/pci0000:00/block/{disk}/{disk}1"),
        root.join(format!("sys/dev/block/{major}:{minor}")),
    )
    .unwrap();
}

#[test]
fn disk_types_come_from_the_data_directorys_device() {
    for (name, rotational, vendor, want) in [
        ("nvme0n1", "0\n", None, Disk::Nvme),
        ("sda", "0\n", Some("ATA     \n"), Disk::Ssd),
        ("sdb", "1\n", Some("ATA     \n"), Disk::Sata),
        ("sdc", "1\n", Some("SEAGATE \n"), Disk::Sas),
        ("vda", "1\n", Some("0x1af4\n"), Disk::Ssd),
    ] {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("pgdata/does/not/exist/yet");
        fake_disk(d.path(), d.path(), name, rotational, vendor);
        let found = Probe::new(d.path()).disk_of_path(&data).unwrap_or_else(|| panic!("{name}: nothing detected"));
        assert_eq!(found.value, want, "{name}: {}", found.source);
        assert!(found.source.starts_with(name), "{}", found.source);
    }
}

#[test]
fn an_unknown_device_detects_nothing() {
    let d = tempfile::tempdir().unwrap();
    assert!(Probe::new(d.path()).disk_of_path(d.path()).is_none());
}

#[test]
fn a_device_mapper_volume_is_as_slow_as_its_slowest_disk() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "sys/devices/pci/block/nvme0n1/queue/rotational", "0\n");
    write(r, "sys/devices/pci/block/sdb/queue/rotational", "1\n");
    write(r, "sys/devices/pci/block/sdb/device/vendor", "ATA\n");
    write(r, "sys/devices/virtual/block/dm-0/queue/rotational", "0\n");
    std::fs::create_dir_all(r.join("sys/devices/virtual/block/dm-0/slaves")).unwrap();
    symlink("../../../../pci/block/nvme0n1", r.join("sys/devices/virtual/block/dm-0/slaves/nvme0n1")).unwrap();
    symlink("../../../../pci/block/sdb", r.join("sys/devices/virtual/block/dm-0/slaves/sdb")).unwrap();
    std::fs::create_dir_all(r.join("sys/dev/block")).unwrap();
    symlink("../../devices/virtual/block/dm-0", r.join("sys/dev/block/253:0")).unwrap();
    let found = Probe::new(r).disk_of_device(253, 0).unwrap();
    assert_eq!(found.value, Disk::Sata, "{}", found.source);
    assert!(found.source.starts_with("dm-0 on sdb"), "{}", found.source);
}
