//! End-to-end tests of `handoffctl`: the real binary, the example daemon
//! `testd`, real sockets and signals. Every test is bounded in time and
//! cleans up its processes and files even when it fails (guards with Drop).

mod common;

mod admin;
mod adopt;
mod bad_input;
mod curl;
mod fdstore;
mod fleet;
mod foreign;
mod gateway;
mod health;
mod history;
mod hooks;
mod items;
mod lifecycle;
mod load;
mod metrics;
mod probation;
mod prometheus;
mod quickstart;
mod real_systemd;
mod reexec;
mod rolling;
mod systemd;
mod transit;
