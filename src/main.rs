//! `idforge`: build identity datasets, caption them, train adapters, benchmark methods.
//!
//! The binary only parses arguments, builds library objects and turns the outcome into an exit
//! code; the work lives in the stage crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// When this variable is set, idforge parses its command line — every subcommand, flag and value
/// checked exactly as for a real run — and exits 0 without running anything. It lets the
/// README's commands be tested against the real parser (`tests/readme_commands.rs`), and lets
/// scripts check a command line before a long job.
const CHECK_ARGS_ENV: &str = "IDFORGE_CHECK_ARGS";

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if std::env::var_os(CHECK_ARGS_ENV).is_some() {
        return ExitCode::SUCCESS;
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
