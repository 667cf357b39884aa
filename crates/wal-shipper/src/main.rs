//! wal-shipper binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    wal_shipper::cli::main(wal_shipper::cli::Args::parse())
}
