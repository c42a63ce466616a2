//! Figures from a run: the JSON report and the SVG picture.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::client::Failure;
use crate::load::Sample;
use crate::run::{Daemon, Observed};

/// A request counts as "during a handoff" if its intended send time falls
/// in an upgrade's window widened by this much on each side (a request sent
/// just before a drain can still be in flight in it).
pub const WINDOW_MARGIN: Duration = Duration::from_millis(20);

/// The loss counts a zero-loss run must have at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// All requests.
    pub requests: u64,
    /// Failed requests, all classes.
    pub failed: u64,
    /// Refused connects.
    pub refused: u64,
    /// Resets.
    pub reset: u64,
    /// Timeouts.
    pub timeout: u64,
    /// 5xx answers.
    pub http_5xx: u64,
    /// Other failures.
    pub other: u64,
    /// Requests retried after a kept-alive connection closed under them.
    pub retried_idle_close: u64,
    /// Acknowledged writes.
    pub acked_writes: u64,
    /// Acknowledged writes lost.
    pub lost_writes: u64,
    /// Committed handoffs.
    pub handoffs: u64,
    /// Handoffs where `/info` showed a new pid, build and generation.
    pub identity_changes: u64,
    /// Old generations still running at the end.
    pub lingering_generations: u64,
    /// Whether the supervisor's event log (when there is one) counts the
    /// same commits as the harness and no rollback.
    pub witness_agrees: bool,
    /// In a private network namespace, the sum of the kernel's refusal,
    /// reset and drop counters over the run ([`crate::kernel`]); `None`
    /// in a shared namespace, where other traffic counts too.
    pub kernel_trouble: Option<u64>,
}

impl Observed {
    fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.clients.iter().flat_map(|c| c.samples.iter())
    }

    fn window_of(&self, at: Duration) -> Option<&crate::run::Window> {
        self.windows
            .iter()
            .find(|w| at + WINDOW_MARGIN >= w.start && at <= w.end + WINDOW_MARGIN)
    }

    /// The exact counts.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for sample in self.samples() {
            counts.requests += 1;
            counts.retried_idle_close += u64::from(sample.retried);
            let Some(failure) = sample.failure else {
                continue;
            };
            counts.failed += 1;
            match failure {
                Failure::Refused => counts.refused += 1,
                Failure::Reset => counts.reset += 1,
                Failure::Timeout => counts.timeout += 1,
                Failure::Http5xx => counts.http_5xx += 1,
                Failure::Other => counts.other += 1,
            }
        }
        counts.acked_writes = self.clients.iter().map(|c| c.acked.len() as u64).sum();
        counts.lost_writes = self.lost_writes + self.unreadable_writes;
        counts.handoffs = self.windows.iter().filter(|w| w.handoff.committed).count() as u64;
        counts.identity_changes = self.windows.iter().filter(|w| w.identity_changed).count() as u64;
        counts.lingering_generations = self.lingering_generations as u64;
        counts.witness_agrees = self
            .supervisor_log
            .is_none_or(|log| log.upgrades_committed == counts.handoffs && log.rolled_back == 0);
        counts.kernel_trouble = self
            .kernel
            .as_ref()
            .filter(|witness| witness.netns == crate::kernel::Netns::Private)
            .map(|witness| witness.delta.total());
        counts
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let counts = self.counts();
        let (mut steady, mut during) = (Vec::new(), Vec::new());
        // During handoffs, by who answered (when the daemon says its pid).
        let (mut by_old, mut by_new) = (Vec::new(), Vec::new());
        let mut accept_stall = 0f64;
        for sample in self.samples() {
            if sample.failure.is_some() {
                continue;
            }
            let ms = millis(sample.latency);
            if let Some(window) = self.window_of(sample.at) {
                during.push(ms);
                match sample.served_by {
                    Some(pid) if pid == window.old_pid => by_old.push(ms),
                    Some(pid) if Some(pid) == window.handoff.new_pid => by_new.push(ms),
                    _ => {}
                }
            } else {
                steady.push(ms);
            }
            if let Some(wait) = sample.accept_wait {
                accept_stall = accept_stall.max(millis(wait));
            }
        }
        let mut totals: Vec<f64> = Vec::new();
        let mut walls: Vec<f64> = Vec::new();
        let mut to_old_exit: Vec<f64> = Vec::new();
        let mut phases: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for window in self.windows.iter().filter(|w| w.handoff.committed) {
            totals.push(millis(window.handoff.total));
            walls.push(millis(window.handoff.wall));
            if let Some(gone) = window.old_gone {
                to_old_exit.push(millis(gone));
            }
            for (name, duration) in &window.handoff.phases {
                phases
                    .entry(name.as_str())
                    .or_default()
                    .push(millis(*duration));
            }
        }
        let phase_figures: serde_json::Map<String, Value> = phases
            .into_iter()
            .map(|(name, mut values)| (name.to_owned(), summary(&mut values)))
            .collect();
        let steady_figures = summary(&mut steady);
        let during_figures = summary(&mut during);
        let ratio = match (
            steady_figures.get("p99").and_then(Value::as_f64),
            during_figures.get("p99").and_then(Value::as_f64),
        ) {
            (Some(s), Some(d)) if s > 0.0 => json!(round(d / s)),
            _ => Value::Null,
        };
        let config = &self.config;
        json!({
            "mode": config.daemon.name(),
            "daemon": match (config.daemon, config.upgrader) {
                (Daemon::Kvd, _) => "kvd",
                (Daemon::Echod, _) => "echod",
                (Daemon::ForeignHttpd, crate::run::UpgraderKind::NaiveRestart) => {
                    "httpd.py (python3, alone: --listen)"
                }
                (Daemon::ForeignHttpd, _) => "httpd.py (python3, --protocol systemd)",
            },
            "upgrader": format!("{:?}", config.upgrader),
            "clients": config.clients,
            "rate_per_s": config.rate,
            "duration_s": round(self.duration.as_secs_f64()),
            "requests": counts.requests,
            "failed": {
                "total": counts.failed,
                "refused": counts.refused,
                "reset": counts.reset,
                "timeout": counts.timeout,
                "http_5xx": counts.http_5xx,
                "other": counts.other,
            },
            "retried_idle_close": counts.retried_idle_close,
            "acked_writes": counts.acked_writes,
            "lost_writes": counts.lost_writes,
            "handoffs": counts.handoffs,
            "upgrades_asked": config.upgrades,
            "identity_changes": counts.identity_changes,
            "lingering_generations": counts.lingering_generations,
            "supervisor_log": self.supervisor_log.map(|log| json!({
                "upgrades_committed": log.upgrades_committed,
                "rolled_back": log.rolled_back,
                "agrees": counts.witness_agrees,
            })),
            "handoff_ms": {
                "total": summary(&mut totals),
                "upgrade_call_wall": summary(&mut walls),
                "phases": phase_figures,
                "ask_to_old_exit": summary(&mut to_old_exit),
            },
            "max_accept_stall_ms": round(accept_stall),
            "latency_ms": {
                "steady": steady_figures,
                "during_handoffs": during_figures,
                "during_handoffs_answered_by": (!by_old.is_empty() || !by_new.is_empty()).then(|| json!({
                    "old_generation": summary(&mut by_old),
                    "new_generation": summary(&mut by_new),
                })),
                "p99_ratio_during_to_steady": ratio,
            },
            "supervisor_rss_kib": {
                "before": self.supervisor_rss_kib.0,
                "after": self.supervisor_rss_kib.1,
            },
            "kernel_tcp_counters": self.kernel.as_ref().map(crate::kernel::Witness::to_json),
            "harness_errors": self.harness_errors,
        })
    }

    /// Latency over time (log scale), failures in red, each handoff window
    /// shaded.
    pub fn to_svg(&self, title: &str) -> String {
        const WIDTH: f64 = 1000.0;
        const HEIGHT: f64 = 400.0;
        const LEFT: f64 = 60.0;
        const BOTTOM: f64 = 30.0;
        const TOP: f64 = 30.0;
        const BUCKET: Duration = Duration::from_millis(20);
        let span = self.duration.as_secs_f64().max(0.001);
        let samples: Vec<&Sample> = self.samples().collect();
        let max_ms = samples
            .iter()
            .map(|s| millis(s.latency))
            .fold(1.0f64, f64::max);
        let (low, high) = (0.1f64.log10(), max_ms.max(1.0).log10() + 0.1);
        let x = |at: f64| LEFT + (WIDTH - LEFT - 10.0) * at / span;
        let y = |ms: f64| {
            let v = ms.max(0.1).log10();
            TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (v - low) / (high - low))
        };
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="18" font-size="13">{title}</text>"#
        );
        for window in &self.windows {
            let (x0, x1) = (x(window.start.as_secs_f64()), x(window.end.as_secs_f64()));
            let _ = writeln!(
                svg,
                r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="orange" fill-opacity="0.3"/>"#,
                (x1 - x0).max(1.0),
                HEIGHT - TOP - BOTTOM
            );
        }
        let mut decade = 0.1f64;
        while decade.log10() <= high {
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="5" y="{:.1}">{decade} ms</text>"##,
                WIDTH - 10.0,
                y(decade) + 4.0,
                y = y(decade)
            );
            decade *= 10.0;
        }
        let mut buckets: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for sample in samples.iter().filter(|s| s.failure.is_none()) {
            let index = (sample.at.as_nanos() / BUCKET.as_nanos()) as u64;
            buckets
                .entry(index)
                .or_default()
                .push(millis(sample.latency));
        }
        for (stroke, pick) in [("#1f77b4", 0.5), ("#d62728", 1.0)] {
            let points: Vec<String> = buckets
                .iter_mut()
                .map(|(index, values)| {
                    values.sort_by(f64::total_cmp);
                    let at = (*index as f64 + 0.5) * BUCKET.as_secs_f64();
                    format!("{:.1},{:.1}", x(at), y(percentile(values, pick)))
                })
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{stroke}" stroke-width="1" points="{}"/>"#,
                points.join(" ")
            );
        }
        for sample in samples.iter().filter(|s| s.failure.is_some()) {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="black"/>"#,
                x(sample.at.as_secs_f64()),
                y(millis(sample.latency))
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}">time (s, 0 to {span:.1}); blue: p50 per 20 ms, red: max per 20 ms; black dots: failed requests; orange: handoffs</text>"##,
            HEIGHT - 8.0
        );
        svg.push_str("</svg>\n");
        svg
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(values: &mut [f64]) -> Value {
    if values.is_empty() {
        return json!({ "n": 0 });
    }
    values.sort_by(f64::total_cmp);
    json!({
        "n": values.len(),
        "p50": round(percentile(values, 0.5)),
        "p99": round(percentile(values, 0.99)),
        "max": round(percentile(values, 1.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&values, 0.5), 5.0);
        assert_eq!(percentile(&values, 0.99), 10.0);
        assert_eq!(percentile(&values, 1.0), 10.0);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn summaries_sort_first() {
        let mut values = vec![3.0, 1.0, 2.0];
        let figures = summary(&mut values);
        assert_eq!(figures["n"], 3);
        assert_eq!(figures["p50"], 2.0);
        assert_eq!(figures["max"], 3.0);
        assert_eq!(summary(&mut []), json!({ "n": 0 }));
    }
}
