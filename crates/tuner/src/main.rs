//! tuner binary: see [`tuner::cli`] for the options and exit codes.
//!
//! Lifecycle: parse the command line → `--check-config FILE` validates the config file and
//! exits → otherwise resolve the inputs (flags, then detection for what they leave out), run
//! the pure rules, and write the chosen output format.

fn main() -> std::process::ExitCode {
    tuner::cli::main()
}
