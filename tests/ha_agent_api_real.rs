//! ha-agent's Patroni REST API on a live 3-host cluster (`ha_agent_harness.rs`): the status
//! codes of the health endpoints in each role, `PATCH /config` applied by the members, a
//! switchover to a named candidate through `POST /switchover` and through an unmodified
//! `patronictl` from PyPI, and Basic auth plus TLS on the live port.
//!
//! Every client runs inside a host's namespace (`curl` and `patronictl` through
//! `ip netns exec`), so no test traffic leaves the machine.

#[path = "ha_agent_harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{Cluster, Opts, SCOPE};
use outrigger_testkit::{wait_ok, wait_until};

const UP: Duration = Duration::from_secs(90);
const SETTLE: Duration = Duration::from_secs(20);

fn others(p: usize) -> Vec<usize> {
    (1..=3).filter(|&i| i != p).collect()
}

/// `curl` from host `from`; `args` after the common options. Returns stdout.
fn curl(c: &Cluster, from: usize, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["curl", "-s", "--max-time", "60"];
    all.extend_from_slice(args);
    c.net.host(from).exec(&all)
}

/// The status code of `method url` from host `from` (`extra`: more curl options).
fn code(c: &Cluster, from: usize, method: &str, url: &str, extra: &[&str]) -> anyhow::Result<u16> {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}", "-X", method];
    if method == "HEAD" {
        args = vec!["-o", "/dev/null", "-w", "%{http_code}", "-I"];
    }
    args.extend_from_slice(extra);
    args.push(url);
    Ok(curl(c, from, &args)?.trim().parse()?)
}

fn api(c: &Cluster, i: usize, path: &str) -> String {
    format!("http://{}:8008{path}", c.net.host(i).ip())
}

/// Waits until every health path answers `want(member)` on every member.
fn wait_codes(c: &Cluster, p: usize, scheme_extra: &[&str], url: impl Fn(usize, &str) -> String) -> anyhow::Result<()> {
    // (path, method, on the primary, on a replica)
    let table: [(&str, &str, u16, u16); 14] = [
        ("/", "OPTIONS", 200, 503),
        ("/primary", "GET", 200, 503),
        ("/primary", "HEAD", 200, 503),
        ("/read-write", "GET", 200, 503),
        ("/leader", "GET", 200, 503),
        ("/standby-leader", "GET", 503, 503),
        ("/replica", "GET", 503, 200),
        ("/replica?lag=16MB", "GET", 503, 200),
        ("/replica?replication_state=streaming", "HEAD", 503, 200),
        ("/read-only", "GET", 200, 200),
        ("/async", "GET", 503, 200),
        ("/health", "GET", 200, 200),
        ("/liveness", "GET", 200, 200),
        ("/readiness", "GET", 200, 200),
    ];
    for i in 1..=3 {
        for (path, method, on_primary, on_replica) in table {
            let want = if i == p { on_primary } else { on_replica };
            let u = url(i, path);
            wait_ok(SETTLE, &format!("{method} {path} on n{i} to answer {want}"), || {
                let got = code(c, i, method, &u, scheme_extra)?;
                anyhow::ensure!(got == want, "got {got}");
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// A patronictl config for the test cluster.
fn patronictl_config(c: &Cluster, dir: &Path, extra: &str) -> anyhow::Result<PathBuf> {
    let hosts = (1..=3).map(|i| format!("{}:2379", c.net.host(i).ip())).collect::<Vec<_>>().join(",");
    let path = dir.join("patronictl.yml");
    std::fs::write(&path, format!("scope: {SCOPE}\nnamespace: /service/\netcd3:\n  hosts: {hosts}\n{extra}"))?;
    Ok(path)
}

fn patronictl(c: &Cluster, from: usize, config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let bin = outrigger_testkit::python::patroni_bin()?.join("patronictl");
    let mut all = vec![bin.to_str().unwrap_or("patronictl"), "-c", config.to_str().unwrap_or("")];
    all.extend_from_slice(args);
    c.net.host(from).exec(&all)
}

#[test]
fn endpoints_answer_by_role_config_patches_apply_and_switchovers_complete() -> anyhow::Result<()> {
    let c = Cluster::start("api_roles", Opts { sync: false, ..Opts::default() })?;
    let p = c.wait_primary(UP, &[])?;
    c.wait_streaming(p, &others(p), UP)?;
    wait_codes(&c, p, &[], |i, path| api(&c, i, path))?;

    // GET /cluster from a replica shows the leader and every member.
    let q = others(p)[0];
    let cluster: serde_json::Value = serde_json::from_str(&curl(&c, q, &[&api(&c, q, "/cluster")])?)?;
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{cluster}");
    let leader = members.iter().find(|m| m["role"] == "leader").map(|m| m["name"].clone());
    assert_eq!(leader, Some(serde_json::json!(format!("n{p}"))), "{cluster}");

    // PATCH /config: every member applies the parameter.
    let patch = r#"{"postgresql":{"parameters":{"work_mem":"7MB"}}}"#;
    let url = api(&c, q, "/config");
    let got = code(&c, q, "PATCH", &url, &["-H", "Content-Type: application/json", "-d", patch])?;
    assert_eq!(got, 200);
    for i in 1..=3 {
        wait_until(SETTLE, &format!("n{i} to apply work_mem = 7MB"), || {
            c.sql(i, "show work_mem").ok().filter(|v| v == "7MB")
        })?;
    }

    // POST /switchover to a named candidate answers 200 once it is done.
    let body = format!(r#"{{"leader":"n{p}","candidate":"n{q}"}}"#);
    let url = api(&c, p, "/switchover");
    let out =
        curl(&c, p, &["-X", "POST", "-H", "Content-Type: application/json", "-d", &body, "-w", " %{http_code}", &url])?;
    assert_eq!(out.trim(), format!("Successfully switched over to \"n{q}\" 200"));
    assert_eq!(c.leader_key().as_deref(), Some(format!("n{q}").as_str()));
    let q = c.wait_primary(UP, &[p])?;
    c.wait_streaming(q, &others(q), UP)?;
    wait_codes(&c, q, &[], |i, path| api(&c, i, path))?;

    // An unmodified patronictl: version, list, and a switchover back.
    let dir = tempfile::tempdir()?;
    let cfg = patronictl_config(&c, dir.path(), "")?;
    let version = patronictl(&c, q, &cfg, &["version", SCOPE])?;
    assert!(version.contains("4.1.4"), "{version}");
    let list = patronictl(&c, q, &cfg, &["list", SCOPE])?;
    assert!(list.contains(&format!("n{q}")) && list.contains("Leader") && list.contains("streaming"), "{list}");
    let out = patronictl(
        &c,
        q,
        &cfg,
        &["switchover", SCOPE, "--leader", &format!("n{q}"), "--candidate", &format!("n{p}"), "--force"],
    )?;
    assert!(out.contains(&format!("Successfully switched over to \"n{p}\"")), "{out}");
    c.wait_primary(UP, &[q])?;

    // At once back again: the old leader has only just begun to follow and may still report
    // the previous timeline; the request waits for it to catch up instead of failing.
    let body = format!(r#"{{"leader":"n{p}","candidate":"n{q}"}}"#);
    let url = api(&c, p, "/switchover");
    let out =
        curl(&c, p, &["-X", "POST", "-H", "Content-Type: application/json", "-d", &body, "-w", " %{http_code}", &url])?;
    assert_eq!(out.trim(), format!("Successfully switched over to \"n{q}\" 200"), "back-to-back switchover");
    c.wait_primary(UP, &[p])?;
    let errors = c.unexpected_errors(&[]);
    anyhow::ensure!(errors.is_empty(), "unexpected errors: {errors:?}");
    Ok(())
}

#[test]
fn basic_auth_and_tls_guard_the_live_port() -> anyhow::Result<()> {
    // The addresses are fixed by the harness (10.250.0.<i>), so the certificate can be made
    // before the cluster starts.
    let dir = tempfile::tempdir()?;
    let tls = dir.path().to_path_buf();
    let restapi = format!(
        "certfile = \"{d}/member.pem\"\nkeyfile = \"{d}/member.key\"\ncafile = \"{d}/ca.pem\"\nverify_client = \"optional\"\n\
         [restapi.authentication]\nusername = \"admin\"\npassword = \"s3cret\"\n",
        d = tls.display()
    );
    let mut c = Cluster::start("api_auth_tls", Opts { sync: false, agents: 0, restapi, ..Opts::default() })?;
    // One certificate for all three hosts' addresses.
    outrigger_testkit::make_tls_for(&tls, &(1..=3).map(|i| c.net.host(i).ip()).collect::<Vec<_>>())?;
    for i in 1..=3 {
        c.start_agent(i)?;
    }
    let p = c.wait_primary(UP, &[])?;
    c.wait_streaming(p, &others(p), UP)?;
    let ca = format!("{}/ca.pem", tls.display());
    let https = |i: usize, path: &str| format!("https://{}:8008{path}", c.net.host(i).ip());
    wait_codes(&c, p, &["--cacert", &ca], https)?;
    // Plain HTTP on the TLS port gets no answer.
    assert!(code(&c, p, "GET", &api(&c, p, "/primary"), &[]).map_or(true, |s| s == 0 || s == 400));

    // Unsafe endpoints: a client certificate (verify_client optional), then credentials.
    let cert = ["--cert", &format!("{}/member.pem", tls.display()), "--key", &format!("{}/member.key", tls.display())]
        .map(str::to_owned);
    let reload = https(p, "/reload");
    assert_eq!(code(&c, p, "POST", &reload, &["--cacert", &ca])?, 403, "no client certificate");
    let with_cert: Vec<&str> = ["--cacert", ca.as_str()].into_iter().chain(cert.iter().map(String::as_str)).collect();
    assert_eq!(code(&c, p, "POST", &reload, &with_cert)?, 401, "no credentials");
    let mut wrong = with_cert.clone();
    wrong.extend(["-u", "admin:guess"]);
    assert_eq!(code(&c, p, "POST", &reload, &wrong)?, 401, "wrong password");
    let mut right = with_cert.clone();
    right.extend([
        "-u",
        "admin:s3cret",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"postgresql":{"parameters":{"work_mem":"5MB"}}}"#,
    ]);
    assert_eq!(code(&c, p, "PATCH", &https(p, "/config"), &right)?, 200, "authorised config patch");
    let errors = c.unexpected_errors(&[]);
    anyhow::ensure!(errors.is_empty(), "unexpected errors: {errors:?}");
    Ok(())
}

/// The lines member `i`'s callbacks and scripts wrote (`<action> <role> <scope>` each).
fn callback_lines(c: &Cluster, i: usize) -> Vec<String> {
    let log = c.data_dir(i).parent().expect("a host directory").join("callbacks.log");
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Patroni's `postgresql.callbacks`, `pre_promote` and `before_stop`, each with Patroni's
/// arguments, through a bootstrap, a replica's restart and reload, a switchover, and a
/// promotion that `pre_promote` refuses.
#[test]
fn callbacks_and_scripts_run_with_patronis_arguments_and_a_refusing_pre_promote_cancels_the_promotion() {
    // One script for every hook; run as the PostgreSQL user with HOME at the host's directory.
    let scripts = tempfile::Builder::new().prefix("otk-callbacks-").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(scripts.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let cb = scripts.path().join("cb.sh");
    std::fs::write(
        &cb,
        "#!/bin/sh\necho \"$*\" >> \"$HOME/callbacks.log\"\n\
         if [ \"$1\" = pre_promote ] && [ -e \"$HOME/refuse-promote\" ]; then exit 3; fi\n",
    )
    .expect("write cb.sh");
    std::fs::set_permissions(&cb, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let cb = cb.display();
    let opts = Opts {
        sync: false,
        agents: 0,
        postgresql: format!(
            "callbacks = {{ on_start = \"{cb}\", on_stop = \"{cb}\", on_restart = \"{cb}\", on_reload = \"{cb}\", on_role_change = \"{cb}\" }}\n\
             pre_promote = \"{cb} pre_promote\"\nbefore_stop = \"{cb} before_stop\"\n"
        ),
        ..Opts::default()
    };
    let mut c = Cluster::start("callbacks_and_scripts", opts).expect("cluster");
    for i in 1..=3 {
        let log = c.data_dir(i).parent().expect("host dir").join("callbacks.log");
        std::fs::write(&log, "").expect("create callbacks.log");
        std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666)).expect("chmod");
    }
    c.start_agent(1).expect("start n1");
    let p = c.wait_primary(UP, &[]).expect("n1 bootstraps");
    assert_eq!(p, 1);
    for i in 2..=3 {
        c.start_agent(i).expect("start replica");
    }
    c.wait_streaming(1, &[2, 3], UP).expect("replicas streaming");
    let has = |i: usize, line: &str| callback_lines(&c, i).iter().any(|l| l == line);
    let wait_line = |i: usize, line: &str| {
        wait_until(SETTLE, &format!("n{i}'s callbacks to log {line:?}"), || has(i, line).then_some(()))
            .unwrap_or_else(|e| panic!("{e}: n{i} logged {:?}", callback_lines(&c, i)))
    };
    // The bootstrap runs no callback until the cluster is made, then on_start.
    wait_line(1, &format!("on_start primary {SCOPE}"));
    assert_eq!(callback_lines(&c, 1)[0], format!("on_start primary {SCOPE}"), "nothing before the bootstrap ends");
    wait_line(2, &format!("on_start replica {SCOPE}"));

    // A replica restarted through the REST API: before_stop, then on_restart (no on_stop or
    // on_start); a reload: on_reload.
    let before = callback_lines(&c, 2).len();
    let out =
        curl(&c, 2, &["-X", "POST", "-d", "{}", "-w", " %{http_code}", &api(&c, 2, "/restart")]).expect("restart");
    assert!(out.ends_with(" 200"), "{out}");
    wait_line(2, &format!("on_restart replica {SCOPE}"));
    assert_eq!(
        callback_lines(&c, 2)[before..].to_vec(),
        vec!["before_stop".to_owned(), format!("on_restart replica {SCOPE}")],
        "a restart is before_stop then on_restart"
    );
    let out = curl(&c, 2, &["-X", "POST", "-w", " %{http_code}", &api(&c, 2, "/reload")]).expect("reload");
    assert!(out.ends_with(" 202") || out.ends_with(" 200"), "{out}");
    wait_line(2, &format!("on_reload replica {SCOPE}"));

    // A switchover to n2: the old primary runs before_stop, on_stop primary, then
    // on_role_change replica when it follows; n2 runs pre_promote, then on_role_change primary.
    let body = format!("{{\"leader\":\"{}\",\"candidate\":\"{}\"}}", Cluster::name(1), Cluster::name(2));
    let out = curl(&c, 1, &["-X", "POST", "-d", &body, "-w", " %{http_code}", &api(&c, 1, "/switchover")])
        .expect("switchover");
    assert!(out.ends_with(" 200"), "{out}");
    assert_eq!(c.wait_primary(UP, &[1]).expect("n2 leads"), 2);
    wait_line(2, &format!("on_role_change primary {SCOPE}"));
    let n2 = callback_lines(&c, 2);
    let pre = n2.iter().rposition(|l| l == "pre_promote").expect("pre_promote ran");
    let promoted = n2.iter().rposition(|l| *l == format!("on_role_change primary {SCOPE}")).expect("promoted");
    assert!(pre < promoted, "pre_promote before the promotion: {n2:?}");
    wait_line(1, &format!("on_role_change replica {SCOPE}"));
    let n1 = callback_lines(&c, 1);
    let stop = n1.iter().position(|l| *l == format!("on_stop primary {SCOPE}")).expect("on_stop primary");
    assert_eq!(n1[stop - 1], "before_stop", "{n1:?}");
    assert!(!n1.iter().any(|l| *l == format!("on_start replica {SCOPE}")), "a role change, not a start: {n1:?}");

    // n3 refuses to promote: a switchover to it ends with another primary, never n3.
    c.wait_streaming(2, &[1, 3], UP).expect("both follow n2");
    let refuse = c.data_dir(3).parent().expect("host dir").join("refuse-promote");
    std::fs::write(&refuse, "").expect("refuse-promote");
    let body = format!("{{\"leader\":\"{}\",\"candidate\":\"{}\"}}", Cluster::name(2), Cluster::name(3));
    let _ = curl(&c, 2, &["-X", "POST", "-d", &body, &api(&c, 2, "/switchover")]);
    wait_line(3, "pre_promote");
    let next = c.wait_primary(UP, &[3]).expect("another member takes over");
    assert_ne!(next, 3);
    assert!(!has(3, &format!("on_role_change primary {SCOPE}")), "n3 never promoted: {:?}", callback_lines(&c, 3));
    assert!(!c.writable(3), "n3 is not a primary");
    let errors = c.unexpected_errors(&["pre_promote failed"]);
    assert!(errors.is_empty(), "unexpected ERROR lines: {errors:#?}");
}

/// The reference deployment's `patroni.yml` shape (TLS and credentials to etcd, REST
/// authentication, Patroni's log, pgpass and socket settings) run as is by three agents: they
/// bootstrap and replicate, the REST API wants the credentials on unsafe endpoints, and a
/// switchover with them moves the leader.
#[test]
fn three_agents_run_from_patroni_yml_files_of_the_reference_deployments_shape() {
    let opts = Opts { sync: false, etcd_secure: true, patroni_yaml: true, ..Opts::default() };
    let c = Cluster::start("patroni_yml", opts).expect("cluster");
    let p = c.wait_primary(UP, &[]).expect("a primary");
    c.wait_streaming(p, &others(p), UP).expect("replicas streaming");
    assert!(c.agent_log(p).contains("log.dir is not used"), "the unused Patroni settings are named");
    // The unsafe endpoints want the credentials.
    let to = others(p)[0];
    let body = format!("{{\"leader\":\"{}\",\"candidate\":\"{}\"}}", Cluster::name(p), Cluster::name(to));
    let url = api(&c, p, "/switchover");
    assert_eq!(code(&c, p, "POST", &url, &["-d", &body]).expect("curl"), 401);
    let creds = format!("{}:{}", harness::REST_USER, harness::REST_PASSWORD);
    let out = curl(&c, p, &["-u", &creds, "-X", "POST", "-d", &body, "-w", " %{http_code}", &url]).expect("switchover");
    assert!(out.ends_with(" 200"), "{out}");
    assert_eq!(c.wait_primary(UP, &[p]).expect("new primary"), to);
    c.wait_streaming(to, &[p], UP).expect("the old primary follows");
    let errors = c.unexpected_errors(&[]);
    assert!(errors.is_empty(), "unexpected ERROR lines: {errors:#?}");
}
