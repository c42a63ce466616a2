//! `handoffctl`: the supervisor and its remote control, thin glue over the
//! `handoff` library.
//!
//! `handoffctl run ... -- BINARY` runs the supervisor in the foreground;
//! `upgrade`, `status`, `stop`, `history`, `rollback`, `reexec` and `wait`
//! talk to it over its admin socket (see `admin/wire.rs` for the wire
//! form). Exit codes are a contract (`error::Exit`): 0 success, 1 rolled
//! back or failed, 2 usage or connection error, 3 busy, 4 rolled back with
//! nobody serving.

mod admin;
mod cli;
mod client;
mod config;
mod error;
mod events;
mod history;
mod identity;
mod metrics;
mod orphan;
mod recorder;
mod reexec;
mod run;
mod signals;
mod systemd;
mod verdict;
mod wait;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let json = cli.command.wants_json();
    let result = match cli.command {
        cli::Command::Run(args) => run::run(*args),
        cli::Command::Upgrade(args) => client::upgrade(args).map(|()| 0),
        cli::Command::Status(args) => client::status(args).map(|()| 0),
        cli::Command::Stop(target) => client::stop(target).map(|()| 0),
        cli::Command::History(args) => client::history(args).map(|()| 0),
        cli::Command::Rollback(args) => client::rollback(args).map(|()| 0),
        cli::Command::Reexec(args) => client::reexec(args).map(|()| 0),
        cli::Command::SelfCheck => reexec::self_check().map(|()| 0),
        cli::Command::Wait(args) => wait::wait(args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            // Unwritable (a reader gone): the exit code still says it.
            let _ = writeln!(std::io::stderr(), "handoffctl: {}", failure.message);
            // A --json caller always gets one JSON object on stdout.
            if json && !failure.printed {
                let _ = writeln!(std::io::stdout(), "{}", failure.to_json());
            }
            ExitCode::from(failure.exit as u8)
        }
    }
}
