//! The `handoff` load benchmark as a library, shared by the `handoff-bench`
//! binary and the zero-loss integration test.
//!
//! A run starts `kvd` (exclusive mode), `echod` (overlap mode) or the
//! foreign Python daemon `examples/foreign/httpd.py` (`--protocol systemd`)
//! under a supervisor on loopback, drives open-loop HTTP load, upgrades the
//! daemon K times, each time to a fresh build put in place just before, as
//! a deploy does (or alternating two fixed builds: [`run::Builds`]), reads
//! every acknowledged write back, and reports exact loss counts and timing
//! figures ([`run::Observed::to_json`], [`run::Observed::to_table`]). One
//! predicate judges a run: [`report::Counts::zero_loss_violations`]. The
//! negative control runs the same load across naive restarts (close the
//! listener, bind again), which must show failures. With
//! [`run::Config::reexecs`], the supervisor itself is replaced too:
//! `handoffctl run` re-executes into other builds of handoffctl under the
//! load, then upgrades the daemon once more ([`reexec`]).
//!
//! ```no_run
//! use handoff_bench::run::{Config, Daemon, run};
//! let config = Config::new(Daemon::Kvd, "target/release/examples".into());
//! let observed = run(config).expect("run");
//! assert_eq!(observed.counts().zero_loss_violations(), Vec::<String>::new());
//! print!("{}\n{}", observed.title(), observed.to_table());
//! ```

pub mod client;
pub mod kernel;
pub mod load;
pub mod reexec;
pub mod report;
pub mod run;
pub mod scrape;
pub mod upgrade;
