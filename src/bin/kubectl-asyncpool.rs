//! `kubectl-asyncpool`: the user's command line, a kubectl plugin (`kubectl asyncpool ...` once
//! it is on the PATH) that also runs on its own. See `docs/simulate.md`.

use std::process::ExitCode;

use asyncpool::simulate::command::{SimulateArgs, run};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kubectl-asyncpool",
    version,
    about = "asyncpool's command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Simulate(SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Simulate(args) => run(args, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kubectl-asyncpool: {error}");
            ExitCode::FAILURE
        }
    }
}
