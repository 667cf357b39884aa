//! Run last by the README's test command: nothing a finished test started may remain.

use outrigger_testkit::leaks;

#[test]
fn no_namespaces_bridges_veths_or_processes_remain_after_the_suite() {
    let ns = leaks::leaked_namespaces();
    let procs = leaks::leaked_processes();
    let links = leaks::root_namespace_links();
    assert!(ns.is_empty(), "namespaces left behind: {ns:?}");
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    assert!(links.is_empty(), "links left in the root namespace: {links:?}");
}
