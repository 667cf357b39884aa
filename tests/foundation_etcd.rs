//! A real 3-member etcd cluster across 3 namespaces, and `outrigger-etcd` against it.

use std::time::{Duration, Instant};

use outrigger_etcd::{Change, ConnectOptions, Etcd, EtcdError, TlsFiles, WatchUpdate};
use outrigger_testkit::{EtcdCluster, EtcdOptions, Net, make_tls, wait_ok, wait_until};

fn cluster(test: &str) -> (Net, EtcdCluster) {
    let net = Net::start(test, 3).expect("create namespaces");
    let etcd = EtcdCluster::start(&net, &[1, 2, 3], EtcdOptions::default()).expect("start etcd");
    (net, etcd)
}

fn opts(endpoints: Vec<String>) -> ConnectOptions {
    let mut o = ConnectOptions::new(endpoints);
    o.request_timeout = Duration::from_secs(2);
    o
}

#[test]
fn leased_key_expires_within_its_ttl_after_its_holder_is_frozen() {
    let (net, etcd) = cluster("leased_key_expires_within_its_ttl_after_its_holder_is_frozen");
    let ttl = Duration::from_secs(2);
    let granted = etcd.etcdctl(&net, 1, &["lease", "grant", "2"]).unwrap();
    // "lease 694d7a1c5e1e0b0a granted with TTL(2s)"
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_owned();
    etcd.etcdctl(&net, 1, &["put", "--lease", &lease, "/t/held", "v"]).unwrap();

    let eps = etcd.endpoints().join(",");
    let mut cmd = std::process::Command::new("etcdctl");
    cmd.args(["--endpoints", &eps, "lease", "keep-alive", &lease]);
    let holder = net.host(2).spawn("lease-holder", cmd).unwrap();
    // The holder keeps the key alive well past its TTL...
    wait_until(Duration::from_secs(10), "three keep-alives from the holder", || {
        (holder.log_text().matches("keepalived with TTL").count() >= 3).then_some(())
    })
    .unwrap();
    assert_eq!(etcd.etcdctl(&net, 0, &["get", "--print-value-only", "/t/held"]).unwrap().trim(), "v");

    // ...and once it hangs, the key is gone within the TTL (plus etcd's 500 ms expiry sweep).
    holder.freeze().unwrap();
    let frozen_at = Instant::now();
    wait_until(ttl + Duration::from_secs(3), "the leased key to expire", || {
        etcd.etcdctl(&net, 0, &["get", "--print-value-only", "/t/held"]).ok().filter(|v| v.trim().is_empty())
    })
    .unwrap();
    let took = frozen_at.elapsed();
    eprintln!("leased key expired {took:?} after its holder froze (ttl {ttl:?})");
    assert!(took <= ttl + Duration::from_millis(1000), "expired only after {took:?}");
    holder.thaw().unwrap();
}

#[test]
fn cluster_keeps_serving_writes_after_one_member_is_killed() {
    let (net, mut etcd) = cluster("cluster_keeps_serving_writes_after_one_member_is_killed");
    etcd.kill(0).unwrap();
    // etcdctl, and our client given all three endpoints (one of them dead), both still write.
    // If the killed member was the raft leader, the others need an election first.
    wait_ok(Duration::from_secs(15), "a write through a surviving member", || {
        etcd.etcdctl_at(&net, 1, &["put", "/t/after-kill", "1"])
    })
    .unwrap();
    let rt = net.host(2).runtime().unwrap();
    let eps = etcd.endpoints();
    let got = rt.block_on(async move {
        let etcd = Etcd::connect(&opts(eps)).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match etcd.put("/t/ours", "2", None).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => eprintln!("retrying put: {e}"),
                Err(e) => return Err(e),
            }
        }
        etcd.get("/t/after-kill").await
    });
    assert_eq!(got.unwrap().map(|kv| kv.value), Some(b"1".to_vec()));
    assert_eq!(etcd.etcdctl_at(&net, 2, &["get", "--print-value-only", "/t/ours"]).unwrap().trim(), "2");
}

#[test]
fn watch_sees_every_change_across_a_member_restart() {
    let (net, mut etcd) = cluster("watch_sees_every_change_across_a_member_restart");
    let rt = net.host(3).runtime().unwrap();
    // The watcher knows only member 0, so its connection breaks when that member restarts.
    let only_first = vec![etcd.endpoint(0)];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<WatchUpdate, String>>();
    let watcher = rt.spawn(async move {
        let etcd = match Etcd::connect(&opts(only_first)).await {
            Ok(e) => e,
            Err(e) => return drop(tx.send(Err(e.to_string()))),
        };
        let start = match etcd.get_prefix("/w/").await {
            Ok(s) => s.revision,
            Err(e) => return drop(tx.send(Err(e.to_string()))),
        };
        let _ = tx.send(Ok(WatchUpdate::Changes { changes: vec![], revision: start }));
        let mut w = etcd.watch_prefix("/w/", start);
        while !tx.is_closed() {
            match w.next().await {
                Ok(u) => drop(tx.send(Ok(u))),
                Err(e) => eprintln!("watch error (will resume): {e}"),
            }
        }
    });
    // Wait until the watch is set up.
    let first = wait_until(Duration::from_secs(10), "the watcher to start", || rx.try_recv().ok()).unwrap();
    assert!(first.is_ok(), "{first:?}");

    let mut written = Vec::new();
    for i in 0..5 {
        etcd.etcdctl(&net, 1, &["put", &format!("/w/k{i}"), &format!("before-{i}")]).unwrap();
        written.push(format!("/w/k{i}=before-{i}"));
    }
    etcd.kill(0).unwrap();
    for i in 0..5 {
        put_once(&net, &etcd, 1, &format!("/w/k{i}"), &format!("during-{i}"));
        written.push(format!("/w/k{i}=during-{i}"));
    }
    wait_ok(Duration::from_secs(15), "delete /w/k0", || {
        let left = etcd.etcdctl_at(&net, 1, &["get", "--print-value-only", "/w/k0"])?;
        if left.trim().is_empty() { Ok(()) } else { etcd.etcdctl_at(&net, 1, &["del", "/w/k0"]).map(drop) }
    })
    .unwrap();
    written.push("/w/k0 deleted".to_owned());
    etcd.restart(&net, 0).unwrap();
    for i in 0..3 {
        put_once(&net, &etcd, 1, &format!("/w/k{i}"), &format!("after-{i}"));
        written.push(format!("/w/k{i}=after-{i}"));
    }

    let mut seen = Vec::new();
    wait_until(Duration::from_secs(20), "the watcher to see every change", || {
        while let Ok(u) = rx.try_recv() {
            match u.expect("watch update") {
                WatchUpdate::Changes { changes, .. } => {
                    for c in changes {
                        seen.push(match c {
                            Change::Put(kv) => format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)),
                            Change::Delete { key, .. } => format!("{key} deleted"),
                        });
                    }
                }
                WatchUpdate::Resync(s) => panic!("no compaction happened, yet the watch resynced at {}", s.revision),
            }
        }
        (seen.len() >= written.len()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: saw {seen:?}"));
    assert_eq!(seen, written, "every change, in order, exactly once");
    drop(rx);
    watcher.abort();
}

/// Puts through member `i`, retrying while an election is under way, without writing twice
/// (a retried put whose first attempt had landed would show up as a second event).
fn put_once(net: &Net, etcd: &EtcdCluster, i: usize, key: &str, value: &str) {
    wait_ok(Duration::from_secs(15), &format!("put {key}={value}"), || {
        let now = etcd.etcdctl_at(net, i, &["get", "--print-value-only", key])?;
        if now.trim() == value { Ok(()) } else { etcd.etcdctl_at(net, i, &["put", key, value]).map(drop) }
    })
    .unwrap();
}

#[test]
fn watch_resyncs_from_a_full_read_when_its_revision_was_compacted() {
    let (net, etcd) = cluster("watch_resyncs_from_a_full_read_when_its_revision_was_compacted");
    let rt = net.host(1).runtime().unwrap();
    let eps = etcd.endpoints();
    let update = rt.block_on(async move {
        let etcd = Etcd::connect(&opts(eps)).await.unwrap();
        let start = etcd.put("/c/a", "1", None).await.unwrap();
        etcd.put("/c/a", "2", None).await.unwrap();
        let last = etcd.put("/c/b", "3", None).await.unwrap();
        let mut client = etcd_client::Client::connect([etcd_endpoint_for_compact()], None).await.unwrap();
        client.compact(last, None).await.unwrap();
        let mut w = etcd.watch_prefix("/c/", start - 1);
        tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("watch answered")
    });
    match update.unwrap() {
        WatchUpdate::Resync(snap) => {
            let vals: Vec<_> = snap.kvs.iter().map(|kv| (kv.key.as_str(), kv.value.clone())).collect();
            assert_eq!(vals, vec![("/c/a", b"2".to_vec()), ("/c/b", b"3".to_vec())]);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
}

/// Compaction goes through the member on the same host, over its loopback.
fn etcd_endpoint_for_compact() -> String {
    "http://127.0.0.1:2379".to_owned()
}

#[test]
fn compare_and_swap_and_lease_errors_are_typed() {
    let (net, etcd) = cluster("compare_and_swap_and_lease_errors_are_typed");
    let rt = net.host(1).runtime().unwrap();
    let eps = etcd.endpoints();
    rt.block_on(async move {
        let etcd = Etcd::connect(&opts(eps)).await.unwrap();
        let (lease, ttl) = etcd.grant_lease(Duration::from_secs(2)).await.unwrap();
        assert_eq!(ttl, Duration::from_secs(2));

        // The leader race: the first create wins, the second sees who holds the key.
        etcd.create_if_absent("/s/leader", "n1", Some(lease)).await.unwrap();
        match etcd.create_if_absent("/s/leader", "n2", None).await {
            Err(EtcdError::CompareFailed { current: Some(kv), .. }) => {
                assert_eq!(kv.value, b"n1");
                assert_eq!(kv.lease, lease);
            }
            other => panic!("expected CompareFailed with the holder, got {other:?}"),
        }
        // Only the holder's name releases it.
        assert!(matches!(etcd.delete_if_value("/s/leader", b"n2").await, Err(EtcdError::CompareFailed { .. })));
        etcd.put_if_value("/s/leader", b"n1", "n1", Some(lease)).await.unwrap();

        // Read-modify-write on mod_revision.
        let rev = etcd.put("/s/config", "{}", None).await.unwrap();
        etcd.put_if_mod_revision("/s/config", rev, "{\"ttl\":5}").await.unwrap();
        assert!(matches!(
            etcd.put_if_mod_revision("/s/config", rev, "{\"ttl\":6}").await,
            Err(EtcdError::CompareFailed { .. })
        ));

        // Renewal keeps the lease; revocation loses it, and the key with it.
        let mut renewer = etcd.lease_renewer(lease);
        assert!(renewer.renew().await.unwrap() > Duration::ZERO);
        etcd.revoke_lease(lease).await.unwrap();
        assert!(matches!(renewer.renew().await, Err(EtcdError::LeaseLost { .. })), "renew after revoke");
        assert!(etcd.get("/s/leader").await.unwrap().is_none());
        assert!(matches!(etcd.put("/s/x", "v", Some(lease)).await, Err(EtcdError::LeaseLost { .. })));
    });
}

#[test]
fn unreachable_cluster_is_reported_as_unavailable_within_the_timeout() {
    let (net, mut etcd) = cluster("unreachable_cluster_is_reported_as_unavailable_within_the_timeout");
    for i in 0..3 {
        etcd.kill(i).unwrap();
    }
    let rt = net.host(1).runtime().unwrap();
    let eps = etcd.endpoints();
    let (res, took) = rt.block_on(async move {
        let started = Instant::now();
        let res = match Etcd::connect(&opts(eps)).await {
            Ok(etcd) => etcd.get("/x").await.map(drop),
            Err(e) => Err(e),
        };
        (res, started.elapsed())
    });
    assert!(matches!(res, Err(ref e) if e.is_unavailable()), "{res:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn tls_with_client_certificates_works_and_a_client_without_one_is_refused() {
    let net = Net::start("tls_with_client_certificates_works_and_a_client_without_one_is_refused", 2).unwrap();
    let tls = make_tls(&net.dir().sub("tls").unwrap(), net.host(1).ip()).unwrap();
    let opts_tls = EtcdOptions { client_tls: Some(tls.clone()), ..EtcdOptions::default() };
    let etcd = EtcdCluster::start(&net, &[1], opts_tls).unwrap();
    let rt = net.host(2).runtime().unwrap();
    let eps = etcd.endpoints();
    assert!(eps[0].starts_with("https://"), "{eps:?}");
    let (with_cert, without_cert) = rt.block_on(async move {
        let mut o = opts(eps.clone());
        o.tls = Some(TlsFiles { ca_file: Some(tls.ca.clone()), cert_file: Some(tls.cert), key_file: Some(tls.key) });
        let with_cert = async {
            let etcd = Etcd::connect(&o).await?;
            etcd.put("/tls/k", "v", None).await?;
            etcd.get("/tls/k").await
        }
        .await;
        let mut o = opts(eps);
        o.tls = Some(TlsFiles { ca_file: Some(tls.ca), cert_file: None, key_file: None });
        let without_cert = async { Etcd::connect(&o).await?.get("/tls/k").await }.await;
        (with_cert, without_cert)
    });
    assert_eq!(with_cert.unwrap().map(|kv| kv.value), Some(b"v".to_vec()));
    assert!(without_cert.is_err(), "a client without a certificate was served: {without_cert:?}");
}

#[test]
fn user_and_password_are_used_and_a_wrong_password_is_rejected() {
    let net = Net::start("user_and_password_are_used_and_a_wrong_password_is_rejected", 2).unwrap();
    let etcd = EtcdCluster::start(&net, &[1], EtcdOptions::default()).unwrap();
    etcd.etcdctl(&net, 0, &["user", "add", "root:s3cret"]).unwrap();
    etcd.etcdctl(&net, 0, &["auth", "enable"]).unwrap();
    let rt = net.host(2).runtime().unwrap();
    let eps = etcd.endpoints();
    let (good, bad) = rt.block_on(async move {
        let mut o = opts(eps.clone());
        o.user = Some(("root".into(), "s3cret".into()));
        let good = async {
            let etcd = Etcd::connect(&o).await?;
            etcd.put("/auth/k", "v", None).await?;
            etcd.get("/auth/k").await
        }
        .await;
        o.user = Some(("root".into(), "wrong".into()));
        let bad = async { Etcd::connect(&o).await?.get("/auth/k").await }.await;
        (good, bad)
    });
    assert_eq!(good.unwrap().map(|kv| kv.value), Some(b"v".to_vec()));
    assert!(matches!(bad, Err(EtcdError::Rejected { .. })), "wrong password must be rejected, not retried: {bad:?}");
}
