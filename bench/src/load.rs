//! Open-loop load: each client sends on a fixed schedule of intended send
//! times, whatever happened to its previous request, and a request's
//! latency is measured from its intended send time — a stall shows up in
//! every request scheduled during it (no coordinated omission).
//!
//! By default ([`Connections::Mixed`]) half of the clients open a new
//! connection per request (sending `Connection: close`, and taking an answer
//! as whole only once the server ended the connection, as a client that
//! reads to the end would) and the other half keep their connection alive,
//! reconnecting after a `Connection: close` (or an HTTP/1.0 answer, which
//! closes); [`Connections::PerRequest`] puts every client on a new
//! connection per request, the load that most often has a connection
//! accepted just as a drain begins. Each client counts the connections it
//! opened ([`ClientLog::connections_opened`]): beyond a kept-alive client's
//! first, each is a reconnect it had to make. Requests alternate between a
//! `PUT` of a fresh key and a `GET` of the client's last acknowledged key;
//! the foreign daemon ([`Target::Pid`]) gets `GET /` only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::client::{Connection, Failure, Response};

/// What the daemon under load is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `kvd`: PUTs are stored; a GET must return the last acknowledged value.
    KeyValue,
    /// `echod`: every request must come back echoed.
    Echo,
    /// The foreign daemon (`examples/foreign/httpd.py`): answers every
    /// `GET` with `200` and `pid=N`; it has no `PUT`.
    Pid,
}

/// How the clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Half of the clients open a new connection per request, half keep
    /// theirs alive (the default).
    Mixed,
    /// Every client opens a new connection per request.
    PerRequest,
}

impl Connections {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Connections::Mixed => "mixed",
            Connections::PerRequest => "per-request",
        }
    }

    /// Whether client `id` keeps its connection alive.
    pub fn keeps_alive(self, id: usize) -> bool {
        match self {
            Connections::Mixed => id % 2 == 1,
            Connections::PerRequest => false,
        }
    }
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to send.
    pub addr: SocketAddr,
    /// Concurrent clients.
    pub clients: usize,
    /// Which clients keep their connection alive.
    pub connections: Connections,
    /// Arrival rate over all clients, requests per second.
    pub rate: f64,
    /// Bound on one request, connect included.
    pub request_timeout: Duration,
    /// What answers.
    pub target: Target,
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Intended send time, from the start of the load.
    pub at: Duration,
    /// From the intended send time to the end of the response (or failure).
    pub latency: Duration,
    /// How it failed, if it did.
    pub failure: Option<Failure>,
    /// Sent by a kept-alive client.
    pub keep_alive: bool,
    /// A first attempt was sent on a kept-alive connection the server
    /// closed at that moment, and retried (as an HTTP client does).
    pub retried: bool,
    /// On a new connection: from the connect's completion to the first
    /// response byte (accept wait plus service time).
    pub accept_wait: Option<Duration>,
    /// The pid that answered, when the daemon says it (the foreign one).
    pub served_by: Option<u32>,
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientLog {
    /// Every request.
    pub samples: Vec<Sample>,
    /// Acknowledged writes, `(key, value)`.
    pub acked: Vec<(String, Vec<u8>)>,
    /// Whether the client keeps its connection alive.
    pub keep_alive: bool,
    /// TCP connections it opened (connects that succeeded), its first
    /// included.
    pub connections_opened: u64,
}

impl ClientLog {
    /// New connections a kept-alive client had to open beyond its first
    /// (after the server closed one, or a request on it failed); 0 for a
    /// client that opens one per request.
    pub fn reconnects(&self) -> u64 {
        if self.keep_alive {
            self.connections_opened.saturating_sub(1)
        } else {
            0
        }
    }
}

/// Runs the load from `start` until `stop` is set (checked before each
/// send) or `hard_end`; returns one log per client.
pub async fn run(
    config: LoadConfig,
    start: Instant,
    stop: Arc<AtomicBool>,
    hard_end: Instant,
) -> Vec<ClientLog> {
    let tasks: Vec<_> = (0..config.clients)
        .map(|id| {
            tokio::spawn(client(
                id,
                config.clone(),
                start,
                Arc::clone(&stop),
                hard_end,
            ))
        })
        .collect();
    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.unwrap_or_default());
    }
    logs
}

async fn client(
    id: usize,
    config: LoadConfig,
    start: Instant,
    stop: Arc<AtomicBool>,
    hard_end: Instant,
) -> ClientLog {
    let period = Duration::from_secs_f64(config.clients as f64 / config.rate);
    let offset = period.mul_f64(id as f64 / config.clients as f64);
    let keep_alive = config.connections.keeps_alive(id);
    let mut connection: Option<Connection> = None;
    let mut log = ClientLog {
        keep_alive,
        ..ClientLog::default()
    };
    let mut last_acked: Option<(String, Vec<u8>)> = None;
    for sequence in 0u64.. {
        let intended = start + offset + period.mul_f64(sequence as f64);
        if stop.load(Ordering::SeqCst) || intended > hard_end {
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        let (put, key, path, body) = next_request(config.target, id, sequence, &last_acked);
        let method = if put { "PUT" } else { "GET" };
        let attempt = tokio::time::timeout(
            config.request_timeout,
            send(
                &mut connection,
                &mut log.connections_opened,
                config.addr,
                keep_alive,
                method,
                &path,
                &body,
            ),
        )
        .await;
        let (result, retried, fresh) = match attempt {
            Ok(outcome) => outcome,
            Err(_) => {
                connection = None;
                (Err(Failure::Timeout), false, true)
            }
        };
        let latency = intended.elapsed();
        let mut accept_wait = None;
        let mut served_by = None;
        let failure = match result {
            Err(failure) => Some(failure),
            Ok(response) => {
                if fresh {
                    accept_wait = Some(response.first_byte);
                }
                if config.target == Target::Pid {
                    served_by = pid_in(&response);
                }
                let verdict = judge(config.target, put, &path, &body, &last_acked, &response);
                if verdict.is_none() && put && config.target == Target::KeyValue {
                    log.acked.push((key.clone(), body.clone()));
                    last_acked = Some((key, body));
                }
                verdict
            }
        };
        log.samples.push(Sample {
            at: intended.saturating_duration_since(start),
            latency,
            failure,
            keep_alive,
            retried,
            accept_wait,
            served_by,
        });
    }
    log
}

/// Client `id`'s request number `sequence`: every other one a `PUT` of a
/// new key (none against the pid target), the others a `GET` of the last
/// key acknowledged. Whether it puts, its key, path and body.
fn next_request(
    target: Target,
    id: usize,
    sequence: u64,
    last_acked: &Option<(String, Vec<u8>)>,
) -> (bool, String, String, Vec<u8>) {
    let put = sequence.is_multiple_of(2) && target != Target::Pid;
    let (key, body) = if put {
        let value = format!("{id}:{sequence}:{}", "v".repeat(24)).into_bytes();
        (format!("c{id}-{sequence}"), value)
    } else {
        let key = last_acked
            .as_ref()
            .map_or_else(|| format!("c{id}-none"), |(k, _)| k.clone());
        (key, Vec::new())
    };
    let path = match target {
        Target::Pid => "/".to_owned(),
        Target::KeyValue | Target::Echo => format!("/kv/{key}"),
    };
    (put, key, path, body)
}

/// `None` if the response is the right one.
fn judge(
    target: Target,
    put: bool,
    path: &str,
    body: &[u8],
    last_acked: &Option<(String, Vec<u8>)>,
    response: &Response,
) -> Option<Failure> {
    if response.status >= 500 {
        return Some(Failure::Http5xx);
    }
    let right = match (target, put) {
        (Target::KeyValue, true) => response.status == 200,
        (Target::KeyValue, false) => match last_acked {
            Some((_, value)) => response.status == 200 && response.body == *value,
            None => response.status == 404,
        },
        (Target::Echo, true) => response.status == 200 && response.body == body,
        (Target::Echo, false) => response.status == 200 && response.body == path.as_bytes(),
        (Target::Pid, _) => pid_in(response).is_some(),
    };
    (!right).then_some(Failure::Other)
}

/// The pid in the foreign daemon's answer (`200`, body `pid=N`).
pub fn pid_in(response: &Response) -> Option<u32> {
    if response.status != 200 {
        return None;
    }
    std::str::from_utf8(&response.body)
        .ok()?
        .trim()
        .strip_prefix("pid=")?
        .parse()
        .ok()
}

/// One request with a kept-alive connection's reuse rules: a connection
/// the server closed while idle is dropped before sending; a request sent
/// on a reused connection that failed before any response byte is retried
/// once on a new connection. Counts the connections it opens in `opened`.
/// Returns the result, whether it was retried, and whether the final
/// attempt used a new connection.
async fn send(
    slot: &mut Option<Connection>,
    opened: &mut u64,
    addr: SocketAddr,
    keep_alive: bool,
    method: &str,
    path: &str,
    body: &[u8],
) -> (Result<Response, Failure>, bool, bool) {
    if slot.as_ref().is_some_and(Connection::closed_by_peer) {
        *slot = None;
    }
    let mut retried = false;
    loop {
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => match Connection::open(addr).await {
                Ok(connection) => {
                    *opened += 1;
                    connection
                }
                Err(failed) => return (Err(failed.failure), retried, true),
            },
        };
        let reused = connection.is_reused();
        match connection.exchange(method, path, body, keep_alive).await {
            Ok(response) => {
                if keep_alive && !response.close {
                    *slot = Some(connection);
                } else if !keep_alive && let Err(failed) = connection.wait_end().await {
                    // It asked to close: the answer is whole once the
                    // connection ends.
                    return (Err(failed.failure), retried, !reused);
                }
                return (Ok(response), retried, !reused);
            }
            Err(failed) if reused && failed.before_response && !retried => retried = true,
            Err(failed) => return (Err(failed.failure), retried, !reused),
        }
    }
}

/// Reads every acknowledged write back over a few kept-alive connections;
/// returns `(lost, unreadable)`: values missing or different, and keys that
/// could not be read at all after retries.
pub async fn read_back(
    addr: SocketAddr,
    acked: Vec<(String, Vec<u8>)>,
    timeout: Duration,
) -> (u64, u64) {
    const READERS: usize = 8;
    const ATTEMPTS: usize = 3;
    let acked = Arc::new(acked);
    let tasks: Vec<_> = (0..READERS)
        .map(|reader| {
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                let (mut lost, mut unreadable) = (0u64, 0u64);
                let (mut slot, mut opened) = (None, 0);
                for (key, value) in acked.iter().skip(reader).step_by(READERS) {
                    let path = format!("/kv/{key}");
                    let mut verdict = None;
                    for _ in 0..ATTEMPTS {
                        let attempt = tokio::time::timeout(
                            timeout,
                            send(&mut slot, &mut opened, addr, true, "GET", &path, &[]),
                        )
                        .await;
                        if let Ok((Ok(response), _, _)) = attempt {
                            verdict = Some(response.status == 200 && response.body == *value);
                            break;
                        }
                        slot = None;
                    }
                    match verdict {
                        Some(true) => {}
                        Some(false) => lost += 1,
                        None => unreadable += 1,
                    }
                }
                (lost, unreadable)
            })
        })
        .collect();
    let (mut lost, mut unreadable) = (0, 0);
    for (reader, task) in tasks.into_iter().enumerate() {
        // A reader that died read nothing of its share: all unreadable.
        let share = acked.len().saturating_sub(reader).div_ceil(READERS) as u64;
        let (l, u) = task.await.unwrap_or((0, share));
        lost += l;
        unreadable += u;
    }
    (lost, unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            close: true,
            body: body.as_bytes().to_vec(),
            first_byte: Duration::ZERO,
        }
    }

    #[test]
    fn the_foreign_daemon_must_answer_200_with_its_pid() {
        assert_eq!(pid_in(&response(200, "pid=4242\n")), Some(4242));
        assert_eq!(pid_in(&response(503, "pid=4242\n")), None);
        assert_eq!(pid_in(&response(200, "hello")), None);
        assert_eq!(pid_in(&response(200, "pid=")), None);
        let right = judge(Target::Pid, false, "/", &[], &None, &response(200, "pid=7"));
        assert_eq!(right, None);
        let wrong = judge(Target::Pid, false, "/", &[], &None, &response(404, "pid=7"));
        assert_eq!(wrong, Some(Failure::Other));
        let failed = judge(Target::Pid, false, "/", &[], &None, &response(500, ""));
        assert_eq!(failed, Some(Failure::Http5xx));
    }
}
