//! `leaderless`: a process whose main thread ends (`pthread_exit`) while
//! another thread runs on for 30 s. Its `/proc/PID/stat` shows the leader
//! as a zombie (`Z`) although the process is alive: the tests of process
//! identity use it. No Rust runtime frame is between `main` and the C
//! library (`no_main`): the exit's forced unwind meets no `catch_unwind`.
#![no_main]
#![allow(
    unsafe_code,
    reason = "a C main, and pthread_exit on the main thread, have no safe form"
)]

/// The C entry point.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(30)));
    // SAFETY: ends the main thread only; this frame holds nothing with a
    // destructor, and the process lives on in the spawned thread.
    unsafe { nix::libc::pthread_exit(std::ptr::null_mut()) }
}
