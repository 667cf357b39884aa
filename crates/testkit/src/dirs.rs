use std::path::{Path, PathBuf};

/// A test's folder for logs and data: `<workspace>/target/test-logs/<name>/`, emptied when the
/// test starts and kept afterwards, so the logs of a failed test can be read. Override the root
/// with `OUTRIGGER_TEST_LOGS`.
/// Where every test's folder goes: `OUTRIGGER_TEST_LOGS`, else `<workspace>/target/test-logs`.
pub(crate) fn root() -> PathBuf {
    std::env::var_os("OUTRIGGER_TEST_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-logs"))
}

#[derive(Debug, Clone)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let path = root().join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        // PostgreSQL runs as `postgres` and must be able to write its data under here.
        crate::sys::open_up(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A sub-folder, created.
    pub fn sub(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p)?;
        crate::sys::open_up(&p)?;
        Ok(p)
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.log"))
    }
}
