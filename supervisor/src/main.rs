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
mod socket_file;
mod systemd;
mod verdict;
mod wait;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return refuse_usage(&error),
    };
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

/// A command line clap refuses: its text on stderr (help and version on
/// stdout, exit 0, as clap does), and under `--json` one JSON object on
/// stdout too, as every other error gives (exit 2).
fn refuse_usage(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    if matches!(error.kind(), Clap::DisplayHelp | Clap::DisplayVersion) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let _ = error.print();
    let json = std::env::args_os()
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    if json {
        // The complaint is the text before the first blank line (then
        // come the usage and the pointer to --help).
        let text = error.to_string();
        let complaint: Vec<&str> = text
            .lines()
            .take_while(|line| !line.trim().is_empty())
            .map(str::trim)
            .collect();
        let line = complaint.join(" ");
        let failure = error::Failure::usage(line.trim_start_matches("error: ").to_owned());
        let _ = writeln!(std::io::stdout(), "{}", failure.to_json());
    }
    ExitCode::from(error::Exit::Usage as u8)
}
