//! The `blockyard` command.

mod bake;
mod cli;
mod commands;
mod image;
mod output;
mod pipeline;
mod settings;
mod units;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::Cli;

/// Exit code after Ctrl-C, as shells report a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.global.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = commands::run(cli) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Do not wait for blocking tasks still compressing blocks nobody will commit.
    runtime.shutdown_background();

    match outcome {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(error)) => report(&error),
        None => {
            eprintln!(
                "interrupted: nothing was committed; run the command again to finish, and the \
                 blocks already stored will be reused"
            );
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}

/// Prints an error chain on one line with a hint where there is one.
fn report(error: &anyhow::Error) -> ExitCode {
    // A closed pipe (`blockyard snapshot blocks X | head`) is a normal end.
    if let Some(io) = error.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    // Some libraries print their source inside their own message; say each part once.
    let mut line = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if line.contains(cause.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    let disk_full = error
        .chain()
        .filter_map(|e| e.downcast_ref::<blockyard_store::StoreError>())
        .any(blockyard_store::StoreError::is_disk_full);
    if disk_full {
        line.push_str(
            " (the disk is full: free space or use another location; nothing was committed, and \
             a rerun reuses the blocks already stored)",
        );
    }
    eprintln!("error: {line}");
    ExitCode::FAILURE
}
