//! Test-only crate; see the `[[test]]` targets.
