//! `idforge`: build identity datasets, caption them, train adapters, benchmark methods.
//!
//! The binary only parses arguments, builds library objects and turns the outcome into an exit
//! code; the work lives in the stage crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
