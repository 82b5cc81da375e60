//! asyncpool-sidecar: see `docs/sidecar.md`.

use std::process::ExitCode;

use asyncpool_sidecar::config::{Args, LogFormat};
use asyncpool_sidecar::{Outcome, run};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // clap prints its own errors (naming the flag) and exits with status 2.
    let args = Args::parse();
    let config = match args.validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("asyncpool-sidecar: {error}");
            return ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_env("ASYNCPOOL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("asyncpool-sidecar: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(Outcome::Drained) => ExitCode::SUCCESS,
        Ok(Outcome::TimedOut) => ExitCode::FAILURE,
        Err(error) => {
            tracing::error!(%error, "sidecar failed");
            ExitCode::FAILURE
        }
    }
}
