//! The Prometheus text exposition format (version 0.0.4), written by hand:
//! `# HELP`, `# TYPE`, then one `name{label="value"} number` line per
//! sample. What it needs is escaping (label values may hold a binary's
//! path: `\`, `"` and newlines), numbers in Go's spelling (`+Inf`, `NaN`)
//! and cumulative histogram buckets; a crate would bring a registry of
//! atomics we do not want (one thread owns the numbers and renders them).
//!
//! [`render`] is the one list of the metrics, their types and help texts;
//! `docs/monitoring.md` explains each.

use std::fmt::Write as _;

use super::Gauges;
use super::record::{Counters, Histogram, Reason, RestartCause, UpgradeOutcome};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Text being written.
#[derive(Debug, Default)]
struct Text {
    out: String,
}

impl Text {
    /// Starts a family: its help and type.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample line.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"");
                escape_label_value(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        number(&mut self.out, value);
        self.out.push('\n');
    }

    /// A histogram's `_bucket`, `_sum` and `_count` lines.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in histogram.cumulative() {
            let mut le = String::new();
            number(&mut le, bound);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count as f64);
        }
        self.sample(&format!("{name}_sum"), labels, histogram.sum);
        self.sample(&format!("{name}_count"), labels, histogram.count as f64);
    }
}

/// `\` `"` and newline escaped, as the format requires inside quotes.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

/// A number as Prometheus spells it: integers without a fraction,
/// `+Inf`, `-Inf`, `NaN`.
fn number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        // Display never uses an exponent and prints 3.0 as "3".
        let _ = write!(out, "{value}");
    }
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// Every metric, from the counters and the gauges last read.
pub fn render(counters: &Counters, gauges: &Gauges) -> String {
    let mut text = Text::default();
    build_info(&mut text, gauges);
    generations(&mut text, counters, gauges);
    upgrades(&mut text, counters);
    restarts(&mut text, counters);
    process(&mut text, gauges);
    text.out
}

fn build_info(text: &mut Text, gauges: &Gauges) {
    text.family(
        "handoff_build_info",
        Kind::Gauge,
        "The supervisor (handoffctl): its version and the sha256 of its binary; always 1.",
    );
    let sha256 = gauges.supervisor_sha256.as_deref().unwrap_or("unknown");
    text.sample(
        "handoff_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("sha256", sha256)],
        1.0,
    );
    text.family(
        "handoff_daemon_build_info",
        Kind::Gauge,
        "The serving generation's binary (the path it was started from) and the sha256 of \
         what its process runs; always 1, absent while nobody serves.",
    );
    if let Some(daemon) = &gauges.daemon {
        let binary = daemon.path.to_string_lossy();
        text.sample(
            "handoff_daemon_build_info",
            &[("binary", &binary), ("sha256", &daemon.sha256)],
            1.0,
        );
    }
}

fn generations(text: &mut Text, counters: &Counters, gauges: &Gauges) {
    text.family(
        "handoff_generation",
        Kind::Gauge,
        "The serving generation's number (0 while none serves).",
    );
    text.sample("handoff_generation", &[], gauges.generation as f64);
    text.family(
        "handoff_generation_start_time_seconds",
        Kind::Gauge,
        "When the serving generation became the one serving (its commit, or its resumption by \
         an automatic rollback), seconds since the Unix epoch; absent while none serves.",
    );
    if let Some(serving) = counters.serving.filter(|_| gauges.serving > 0) {
        text.sample(
            "handoff_generation_start_time_seconds",
            &[],
            serving.since_unix,
        );
    }
    text.family(
        "handoff_generations",
        Kind::Gauge,
        "Generations alive by state: serving, draining (an old generation on its way out: \
         draining, told to retire, signalled) and probation (an old generation kept to be \
         resumed if the new one fails).",
    );
    let states = [
        ("serving", gauges.serving),
        ("draining", gauges.draining),
        ("probation", gauges.probation),
    ];
    for (state, count) in states {
        text.sample("handoff_generations", &[("state", state)], count as f64);
    }
    text.family(
        "handoff_oldest_draining_seconds",
        Kind::Gauge,
        "How long the old generation draining the longest has been draining (0 when none).",
    );
    text.sample(
        "handoff_oldest_draining_seconds",
        &[],
        gauges.oldest_draining.as_secs_f64(),
    );
    text.family(
        "handoff_drain_timeout_seconds",
        Kind::Gauge,
        "The configured drain timeout (--drain-timeout); an upgrade may ask for another.",
    );
    text.sample(
        "handoff_drain_timeout_seconds",
        &[],
        gauges.drain_timeout.as_secs_f64(),
    );
}

fn upgrades(text: &mut Text, counters: &Counters) {
    text.family(
        "handoff_upgrades_total",
        Kind::Counter,
        "Upgrades by outcome (committed, rolled_back, failed: not spawned) and reason (none \
         when committed).",
    );
    for outcome in UpgradeOutcome::ALL {
        for &reason in Reason::of_outcome(outcome) {
            text.sample(
                "handoff_upgrades_total",
                &[("outcome", outcome.as_str()), ("reason", reason.as_str())],
                counters.upgrades(outcome, reason) as f64,
            );
        }
    }
    text.family(
        "handoff_upgrade_duration_seconds",
        Kind::Histogram,
        "Upgrade durations by outcome, from the upgrade request to the commit acknowledged \
         (or to the end of the rollback), spawn included.",
    );
    let empty = Histogram::default();
    for outcome in [UpgradeOutcome::Committed, UpgradeOutcome::RolledBack] {
        let histogram = counters.upgrade_seconds.get(&outcome).unwrap_or(&empty);
        text.histogram(
            "handoff_upgrade_duration_seconds",
            &[("outcome", outcome.as_str())],
            histogram,
        );
    }
    text.family(
        "handoff_upgrade_phase_duration_seconds",
        Kind::Histogram,
        "Upgrade phase durations by phase (spawn, hello, warm_up, drain, seal, begin, probe, \
         commit, abort); a phase appears once an upgrade went through it.",
    );
    for (phase, histogram) in &counters.phase_seconds {
        text.histogram(
            "handoff_upgrade_phase_duration_seconds",
            &[("phase", phase)],
            histogram,
        );
    }
    let last = counters.last_upgrade;
    text.family(
        "handoff_last_upgrade_success",
        Kind::Gauge,
        "1 if the last upgrade attempt committed, 0 if it rolled back, could not spawn, or was \
         undone by an automatic rollback in its probation; absent before the first attempt.",
    );
    if let Some(last) = last {
        text.sample("handoff_last_upgrade_success", &[], flag(last.success));
    }
    text.family(
        "handoff_last_upgrade_timestamp_seconds",
        Kind::Gauge,
        "When the last upgrade attempt ended, seconds since the Unix epoch.",
    );
    if let Some(last) = last {
        text.sample("handoff_last_upgrade_timestamp_seconds", &[], last.at_unix);
    }
}

fn restarts(text: &mut Text, counters: &Counters) {
    text.family(
        "handoff_restarts_total",
        Kind::Counter,
        "Generations started again after nobody was left serving, by cause: exited (non-zero \
         status), signal, clean_exit, start_failed (the last start never served), rollback (a \
         rolled-back upgrade left nobody serving), resume_failed, unknown.",
    );
    for cause in RestartCause::ALL {
        let count = counters.restarts.get(&cause).copied().unwrap_or(0);
        text.sample(
            "handoff_restarts_total",
            &[("cause", cause.as_str())],
            count as f64,
        );
    }
    text.family(
        "handoff_restart_failures_total",
        Kind::Counter,
        "Restarts whose generation could not be spawned (retried after a backoff).",
    );
    text.sample(
        "handoff_restart_failures_total",
        &[],
        counters.restart_failures as f64,
    );
    text.family(
        "handoff_probation_rollbacks_total",
        Kind::Counter,
        "Automatic rollbacks: a new generation failed during its probation and the previous \
         one serves again.",
    );
    text.sample(
        "handoff_probation_rollbacks_total",
        &[],
        counters.probation_rollbacks as f64,
    );
}

fn process(text: &mut Text, gauges: &Gauges) {
    text.family(
        "handoff_metrics_connections_dropped_total",
        Kind::Counter,
        "Connections to this endpoint shut down before they sent a request, to make room \
         when too many were open.",
    );
    text.sample(
        "handoff_metrics_connections_dropped_total",
        &[],
        gauges.dropped_connections as f64,
    );
    let Some(process) = &gauges.process else {
        return;
    };
    let samples = [
        (
            "process_resident_memory_bytes",
            Kind::Gauge,
            "The supervisor's resident memory.",
            process.resident_bytes as f64,
        ),
        (
            "process_open_fds",
            Kind::Gauge,
            "The supervisor's open file descriptors.",
            process.open_fds as f64,
        ),
        (
            "process_max_fds",
            Kind::Gauge,
            "The supervisor's limit on open file descriptors (soft).",
            process.max_fds as f64,
        ),
        (
            "process_start_time_seconds",
            Kind::Gauge,
            "When the supervisor's process started, seconds since the Unix epoch.",
            process.start_time_unix,
        ),
        (
            "process_cpu_seconds_total",
            Kind::Counter,
            "The supervisor's CPU time, user and system.",
            process.cpu_seconds,
        ),
    ];
    for (name, kind, help, value) in samples {
        text.family(name, kind, help);
        text.sample(name, &[], value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_numbers_spelled_as_prometheus_does() {
        let mut text = Text::default();
        text.sample(
            "m",
            &[("path", "/a\\b \"c\"\nd"), ("x", "y")],
            f64::INFINITY,
        );
        text.sample("m", &[], 3.0);
        text.sample("m", &[], 0.0025);
        text.sample("m", &[], f64::NAN);
        text.sample("m", &[], 1_700_000_000.125);
        assert_eq!(
            text.out,
            "m{path=\"/a\\\\b \\\"c\\\"\\nd\",x=\"y\"} +Inf\nm 3\nm 0.0025\nm NaN\nm 1700000000.125\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_ending_at_inf_then_sum_and_count() {
        let mut histogram = Histogram::default();
        histogram.observe(std::time::Duration::from_millis(2));
        let mut text = Text::default();
        text.histogram("h_seconds", &[("phase", "spawn")], &histogram);
        let lines: Vec<&str> = text.out.lines().collect();
        assert_eq!(lines[0], "h_seconds_bucket{phase=\"spawn\",le=\"0.001\"} 0");
        assert_eq!(
            lines[1],
            "h_seconds_bucket{phase=\"spawn\",le=\"0.0025\"} 1"
        );
        assert!(lines.contains(&"h_seconds_bucket{phase=\"spawn\",le=\"+Inf\"} 1"));
        assert_eq!(
            lines[lines.len() - 2],
            "h_seconds_sum{phase=\"spawn\"} 0.002"
        );
        assert_eq!(lines[lines.len() - 1], "h_seconds_count{phase=\"spawn\"} 1");
    }

    #[test]
    fn every_family_is_announced_once_before_its_samples() {
        let out = render(&Counters::default(), &Gauges::default());
        let mut announced = std::collections::BTreeSet::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(announced.insert(name.to_owned()), "{name} twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|family| announced.contains(*family))
                    .unwrap_or(name);
                assert!(announced.contains(family), "{line} before its TYPE");
            }
        }
        assert!(out.contains("handoff_upgrades_total{outcome=\"committed\",reason=\"none\"} 0"));
        assert!(out.contains("handoff_restarts_total{cause=\"signal\"} 0"));
        assert!(
            !out.contains("\nhandoff_last_upgrade_success "),
            "no attempt yet"
        );
    }
}
