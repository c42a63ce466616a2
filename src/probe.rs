//! The health gate's probe: how the supervisor checks a successor itself
//! before Commit instead of trusting its Ready (invariant I12).
//!
//! A probe is one TCP connect or one HTTP GET with an expected status,
//! retried every [`PROBE_RETRY`] until one attempt passes or the readiness
//! timeout (`Timeouts::probe`, bounded by the handoff deadline) passes.
//!
//! **Aim it at the successor alone.** A listener the supervisor passes on is
//! shared by every generation: the kernel completes a TCP handshake into the
//! shared accept queue whoever will accept it, and in overlap mode the
//! incumbent may answer an HTTP probe sent there. A probe proves the
//! successor healthy only on an address that the successor alone serves
//! (a private health port it binds itself).
//!
//! ```
//! use handoff::probe::Probe;
//! let probe: Probe = "http://127.0.0.1:8081/healthz".parse().unwrap();
//! assert_eq!(probe.to_string(), "http://127.0.0.1:8081/healthz");
//! let probe: Probe = "tcp:127.0.0.1:9000".parse().unwrap();
//! assert!(matches!(probe, Probe::Tcp { .. }));
//! assert!("ftp://x".parse::<Probe>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::sys;
use crate::timeouts::{PROBE_ATTEMPT, PROBE_RETRY};

/// One health check of a successor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Probe {
    /// Passes when a TCP connection to `address` is established.
    Tcp {
        /// `HOST:PORT`.
        address: String,
    },
    /// Passes when `GET path` on `address` answers `expect_status`.
    Http {
        /// `HOST:PORT`.
        address: String,
        /// The request path, starting with `/`.
        path: String,
        /// The status that passes (200 unless set).
        expect_status: u16,
    },
}

impl Probe {
    /// The same probe expecting `status` (HTTP only; a TCP probe is
    /// returned unchanged).
    pub fn expecting(self, status: u16) -> Probe {
        match self {
            Probe::Http { address, path, .. } => Probe::Http {
                address,
                path,
                expect_status: status,
            },
            tcp @ Probe::Tcp { .. } => tcp,
        }
    }

    /// One attempt, bounded by [`PROBE_ATTEMPT`]; `Err` says what it saw.
    pub fn attempt(&self) -> Result<(), String> {
        self.attempt_within(PROBE_ATTEMPT)
    }

    /// One attempt, each of its steps bounded by `limit`.
    fn attempt_within(&self, limit: Duration) -> Result<(), String> {
        match self {
            Probe::Tcp { address } => sys::tcp_connect(address, limit)
                .map_err(|error| format!("connect to {address}: {error}")),
            Probe::Http {
                address,
                path,
                expect_status,
            } => match sys::http_status(address, path, limit) {
                Ok(status) if status == *expect_status => Ok(()),
                Ok(status) => Err(format!(
                    "GET {path} on {address}: status {status}, expected {expect_status}"
                )),
                Err(error) => Err(format!("GET {path} on {address}: {error}")),
            },
        }
    }

    /// Attempts until one passes or `until` passes; `Err` carries the last
    /// attempt's failure and the number of attempts. An attempt is bounded
    /// by what is left until `until` as well as by [`PROBE_ATTEMPT`] (but
    /// given at least [`PROBE_RETRY`]), so an address that accepts and never
    /// answers cannot hold the verdict past the readiness timeout by a whole
    /// attempt.
    pub fn run_until(&self, until: Instant) -> Result<(), String> {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let left = until.saturating_duration_since(Instant::now());
            let error = match self.attempt_within(PROBE_ATTEMPT.min(left).max(PROBE_RETRY)) {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let now = Instant::now();
            if now >= until {
                return Err(format!("{error} (after {attempts} attempts)"));
            }
            std::thread::sleep(PROBE_RETRY.min(until - now));
        }
    }
}

impl FromStr for Probe {
    type Err = Error;

    fn from_str(input: &str) -> Result<Probe, Error> {
        let bad = |reason| Error::BadProbe {
            input: input.to_owned(),
            reason,
        };
        let check_address = |address: &str| match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
            _ => Err(bad("the address must be HOST:PORT")),
        };
        if let Some(address) = input.strip_prefix("tcp:") {
            check_address(address)?;
            return Ok(Probe::Tcp {
                address: address.to_owned(),
            });
        }
        if let Some(rest) = input.strip_prefix("http://") {
            let (address, path) = match rest.find('/') {
                Some(slash) => rest.split_at(slash),
                None => (rest, "/"),
            };
            check_address(address)?;
            if path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(bad(
                    "the path must not contain spaces or control characters",
                ));
            }
            return Ok(Probe::Http {
                address: address.to_owned(),
                path: path.to_owned(),
                expect_status: 200,
            });
        }
        Err(bad("unknown scheme"))
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Tcp { address } => write!(f, "tcp:{address}"),
            Probe::Http { address, path, .. } => write!(f, "http://{address}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let probe: Probe = "http://localhost:80".parse().expect("http");
        assert_eq!(
            probe,
            Probe::Http {
                address: "localhost:80".into(),
                path: "/".into(),
                expect_status: 200
            }
        );
        assert_eq!(
            probe.clone().expecting(204),
            Probe::Http {
                address: "localhost:80".into(),
                path: "/".into(),
                expect_status: 204
            }
        );
        for bad in [
            "tcp:",
            "tcp:host",
            "tcp::80",
            "http://h:x/",
            "http://h:1/a b",
            "udp:h:1",
        ] {
            assert!(bad.parse::<Probe>().is_err(), "{bad}");
        }
    }

    #[test]
    fn run_until_gives_up_at_the_deadline_with_the_last_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let probe = Probe::Tcp { address };
        let started = Instant::now();
        let error = probe
            .run_until(started + Duration::from_millis(250))
            .expect_err("nothing listens");
        assert!(
            error.contains("refused") && error.contains("attempts"),
            "{error}"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn an_address_that_never_answers_is_cut_at_the_deadline_not_after_a_whole_attempt() {
        // Accepts into the backlog (the kernel completes the handshake) and
        // never answers: each HTTP attempt waits for its response.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let probe: Probe = format!("http://{address}/").parse().expect("probe");
        let started = Instant::now();
        let error = probe
            .run_until(started + Duration::from_millis(300))
            .expect_err("nobody answers");
        let took = started.elapsed();
        assert!(error.contains(&address), "{error}");
        // The bound under test: the readiness timeout plus at most one
        // PROBE_RETRY, far below one PROBE_ATTEMPT (2 s), which is what a
        // single attempt used to take here.
        assert!(took < PROBE_ATTEMPT, "took {took:?}: {error}");
        drop(listener);
    }
}
