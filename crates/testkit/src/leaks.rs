//! Finding what a test left behind: namespaces and processes whose test process is gone.

use crate::{NETNS_PREFIX, OWNER_ENV};

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Namespaces named by the kit whose creating test process no longer runs.
pub fn leaked_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix(NETNS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .collect()
}

/// Processes started by the kit (they carry `OUTRIGGER_TESTKIT_OWNER`) whose test process no
/// longer runs, as `(pid, command)`.
pub fn leaked_processes() -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let marker = format!("{OWNER_ENV}=");
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let owner = env
                .split(|b| *b == 0)
                .find_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix(&marker)?.parse::<i32>().ok())?;
            if alive(owner) {
                return None;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            Some((pid, comm.trim().to_owned()))
        })
        .collect()
}

/// Links in the root namespace that look like the kit's (it never creates any there).
pub fn root_namespace_links() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n == "br0" || (n.starts_with('p') && n[1..].parse::<u32>().is_ok()))
        .collect()
}
