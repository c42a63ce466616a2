//! Fixtures of the CLI tests: the supervisor as a child process (stopped on
//! drop), bounded runs of the client, status and log waits, shell scripts
//! and testd's pid. The helpers every test crate shares (temp dirs, bounds,
//! `example`, `run_bounded`, the one-line client, `alive`, `wait_gone`)
//! come from `testkit`.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Instant;

use handoff::os::Sig;
use serde_json::Value;
pub use testkit::{IO, TempDir, WAIT, alive, example, request, run_bounded, wait_gone};

pub fn handoffctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handoffctl"))
}

/// `target/debug/examples/testd`, built by `cargo test --workspace`.
pub fn testd() -> PathBuf {
    example("testd")
}

/// Writes an executable shell script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// What a client run printed.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Ran {
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Ran {
    /// The error line: exactly one line, our prefix, never a panic.
    pub fn one_error_line(&self) -> &str {
        let line = self.stderr.trim_end();
        assert!(
            !line.contains('\n') && line.starts_with("handoffctl: "),
            "expected one error line, got {self:?}"
        );
        assert!(!line.contains("panicked"), "{self:?}");
        line
    }
}

/// `handoffctl ARGS` within `WAIT`.
pub fn ctl(args: &[&str]) -> Ran {
    let mut command = Command::new(handoffctl());
    command.args(args);
    run_bounded(command).into()
}

/// A supervisor (`handoffctl run`) as a child process: SIGTERM then SIGKILL
/// on drop; its stderr goes to a log file.
pub struct Supervisor {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Removed with the supervisor (its socket and log live there).
    _dir: TempDir,
}

/// How to start one.
pub struct Start {
    /// Flags after `run` (besides `--socket`).
    pub flags: Vec<String>,
    /// The daemon (default: testd).
    pub program: Option<PathBuf>,
    /// The daemon's arguments.
    pub testd_args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Another daemon (program and arguments) instead of testd.
    pub daemon: Option<Vec<String>>,
    /// Replaces the whole command (socket activation): given the command
    /// that would run, returns the one to run.
    pub wrap: Option<Box<dyn FnOnce(Command) -> Command>>,
    /// The admin socket (default: in a directory of the supervisor's own).
    pub socket: Option<PathBuf>,
}

impl Default for Start {
    fn default() -> Start {
        Start {
            flags: [
                "--listen",
                "main=127.0.0.1:0",
                "--deadline",
                "20s",
                "--drain-timeout",
                "5s",
            ]
            .map(String::from)
            .to_vec(),
            program: None,
            testd_args: Vec::new(),
            env: Vec::new(),
            daemon: None,
            wrap: None,
            socket: None,
        }
    }
}

impl Supervisor {
    /// Starts `handoffctl run` with the default flags and waits until a
    /// generation serves.
    pub fn start() -> Supervisor {
        Supervisor::start_with(Start::default())
    }

    pub fn start_with(start: Start) -> Supervisor {
        let supervisor = Supervisor::spawn(start);
        supervisor.wait_serving();
        supervisor
    }

    /// Starts it without waiting.
    pub fn spawn(start: Start) -> Supervisor {
        let dir = TempDir::new("sup");
        let socket = start
            .socket
            .clone()
            .unwrap_or_else(|| dir.path().join("admin.sock"));
        let log = dir.path().join("supervisor.log");
        let mut command = Command::new(handoffctl());
        command
            .arg("run")
            .arg("--socket")
            .arg(&socket)
            .args(&start.flags)
            .arg("--");
        match &start.daemon {
            Some(daemon) => command.args(daemon),
            None => command
                .arg(start.program.clone().unwrap_or_else(testd))
                .args(&start.testd_args),
        };
        command
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_PID")
            .envs(start.env)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("supervisor.out")).expect("out"))
            .stderr(File::create(&log).expect("log"));
        if let Some(wrap) = start.wrap {
            command = wrap(command);
        }
        let child = command.spawn().expect("spawn handoffctl run");
        Supervisor {
            child: Some(child),
            socket,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `handoffctl VERB --socket S ARGS`.
    pub fn ctl(&self, verb: &str, args: &[&str]) -> Ran {
        let socket = self.socket.to_str().expect("utf-8 path");
        let mut all = vec![verb, "--socket", socket];
        all.extend_from_slice(args);
        ctl(&all)
    }

    /// `status --json`, or `None` while the admin socket does not answer.
    pub fn try_status(&self) -> Option<Value> {
        let ran = self.ctl("status", &["--json"]);
        (ran.code == Some(0)).then(|| serde_json::from_str(&ran.stdout).expect("status json"))
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("status failed; log:\n{}", self.log()))
    }

    /// Waits until `wanted(status)` holds; panics after `WAIT`.
    pub fn wait_status(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.try_status()
                && wanted(&status)
            {
                return status;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no status with {what} within {WAIT:?}; log:\n{}",
                self.log()
            );
            // Each try is a full client run (a process spawn and a socket
            // round trip); no extra sleep is needed to pace the loop.
        }
    }

    pub fn wait_serving(&self) -> Value {
        self.wait_status("a serving generation", |s| {
            s["state"] == "serving" && s["child_pid"].is_u64()
        })
    }

    pub fn assert_running(&self) {
        let mut child = self.child.as_ref().map(Child::id);
        if let Some(pid) = child.take() {
            assert!(
                testkit::child_running(pid),
                "the supervisor exited; log:\n{}",
                self.log()
            );
        }
    }

    /// The address of the listener called `name`, from status.
    pub fn addr_of(&self, name: &str) -> SocketAddr {
        let status = self.status();
        let listeners = status["listeners"].as_array().expect("listeners");
        let listener = listeners
            .iter()
            .find(|listener| listener["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {status}"));
        listener["address"]
            .as_str()
            .expect("address")
            .parse()
            .expect("socket address")
    }

    /// The listener's address from status.
    pub fn addr(&self) -> SocketAddr {
        let status = self.status();
        status["listeners"][0]["address"]
            .as_str()
            .expect("address")
            .parse()
            .expect("socket address")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log (the supervisor's stderr, which its generations
    /// share) holds `line` after byte `from`; returns the offset after it.
    pub fn wait_log(&self, line: &str, from: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if let Some(at) = log.get(from..).and_then(|rest| rest.find(line)) {
                return from + at + line.len();
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no {line:?} in the log within {WAIT:?}; log:\n{log}"
            );
            // A file written by another process: polled, bounded above.
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
        }
    }

    /// Waits for the supervisor to exit; its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the supervisor did not exit within {WAIT:?}");
            }
            // The child is ours: waitpid in a helper thread would be the
            // alternative; a short yield keeps this bounded loop cheap.
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
        }
    }

    pub fn signal(&self, signal: Sig) {
        handoff::os::signal(self.pid(), signal).expect("signal the supervisor");
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = handoff::os::signal(child.id(), Sig::Term);
        let deadline = Instant::now() + IO;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// testd's pid from `INFO`.
pub fn serving_pid(addr: SocketAddr) -> u32 {
    let info = request(addr, "INFO").expect("INFO");
    info.split(' ')
        .find_map(|kv| kv.strip_prefix("pid="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("INFO without pid: {info}"))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), each
/// step bounded by `IO`: the status code and the body, or what went wrong
/// (the step and the error kind, for a failure count by class).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, IO)
        .map_err(|e| format!("connect: {:?}: {e}", e.kind()))?;
    stream
        .set_read_timeout(Some(IO))
        .and_then(|()| stream.set_write_timeout(Some(IO)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {:?}: {e}", e.kind()))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {:?}: {e}", e.kind()))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete response: {response:?}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// A status field as u64.
pub fn u64_of(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

/// Copies the executable `source` to `path` with a trailer naming `label`
/// (an ELF loader ignores bytes past its segments): another build, with a
/// sha256 of its own, that runs as the original. Returns that sha256.
pub fn another_build(source: &Path, path: &Path, label: &str) -> String {
    use std::io::Write;
    std::fs::copy(source, path).expect("copy the build");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open the copy");
    writeln!(file, "\nbuild {label}").expect("trailer");
    drop(file);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    sha256_hex(path)
}

/// Lowercase hex sha256 of the file at `path`.
pub fn sha256_hex(path: &Path) -> String {
    use std::fmt::Write as _;
    let bytes = std::fs::read(path).expect("read binary");
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    digest.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// Kills a process left behind (a generation orphaned by a supervisor a
/// failed test killed, and nobody adopted).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = handoff::os::signal(self.0, handoff::os::Sig::Kill);
        }
    }
}
