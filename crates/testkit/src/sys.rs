//! The few system calls the kit makes that need `unsafe` or root, in one place.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Makes the child get SIGKILL when the thread that spawned it exits (a test process that dies,
/// even by SIGKILL, then takes its daemons with it). Set after the uid/gid change, which
/// would otherwise clear it.
pub(crate) fn kill_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec; prctl and getppid are
    // async-signal-safe and touch no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would kill us.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
}

/// The uid and gid of the `postgres` system user.
pub(crate) fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let u = nix::unistd::User::from_name("postgres")?
        .ok_or_else(|| anyhow::anyhow!("no `postgres` user: install PostgreSQL (see README)"))?;
    Ok((u.uid.as_raw(), u.gid.as_raw()))
}

/// Lets the `postgres` user create files under a folder the (root) test made.
pub(crate) fn open_up(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(())
}

/// Gives a folder to the `postgres` user (PostgreSQL insists on owning its data directory).
pub(crate) fn give_to_postgres(path: &Path) -> anyhow::Result<()> {
    let (uid, gid) = postgres_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(())
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/<name>`).
pub(crate) fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path)?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// The nearest existing folder on the way to where the tests write (`dirs::root`).
fn logs_folder() -> std::path::PathBuf {
    let root = crate::dirs::root();
    root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/")).to_path_buf()
}

fn free_bytes(p: &Path) -> nix::Result<u64> {
    nix::sys::statvfs::statvfs(p).map(|s| s.blocks_available() * s.fragment_size())
}

/// A line on what this machine has left: free disk where the tests write, free memory, and
/// how many processes run (PostgreSQL's among them). Printed with a timed-out wait, so that a
/// failure caused by an exhausted machine can be told from a real one.
pub fn machine_state() -> String {
    let free = |p: &Path| match free_bytes(p) {
        Ok(b) => format!("{}: {} MiB free", p.display(), b >> 20),
        Err(e) => format!("{}: {e}", p.display()),
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or_else(|| "memory: unknown".to_owned(), |kb| format!("memory: {} MiB available", kb / 1024));
    let (mut procs, mut postgres) = (0, 0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            procs += 1;
            if std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres") {
                postgres += 1;
            }
        }
    }
    format!(
        "machine: {}; {}; {mem}; {procs} processes ({postgres} postgres)",
        free(&logs_folder()),
        free(Path::new("/tmp"))
    )
}

/// Refuses to start a test on a machine with less than 1 GiB free where tests write: its
/// PostgreSQL, etcd and SeaweedFS would fail in their own, confusing ways.
pub(crate) fn enough_disk() -> anyhow::Result<()> {
    let free = free_bytes(&logs_folder())?;
    anyhow::ensure!(free >= 1 << 30, "testkit: less than 1 GiB free; not starting a test [{}]", machine_state());
    Ok(())
}
