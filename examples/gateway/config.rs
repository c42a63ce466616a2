//! The gateway's TOML config, and what changed between two versions of it.
//!
//! ```toml
//! drain_timeout = "30s"          # for replaced and removed endpoints
//! handlers_dir = "handlers"      # default place of libhandler_{id}.so
//!
//! [[endpoints]]
//! id = "users"
//! path_prefix = "/users"
//! host = "api.example.test"      # optional: any host when absent
//! library = "lib/users.so"       # optional: handlers_dir by id when absent
//! timeout = "10s"                # optional: per request
//! ```
//!
//! Relative paths are relative to the config file's directory. Replace the
//! file atomically (write a temporary file, then rename it): the watcher may
//! read it at any moment, and it ignores a zero-byte file, which is most
//! likely a write in progress.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff::registry::{library_file_name, validate_endpoint_id};
use handoff::timeouts::{HANDLER_DRAIN, parse_duration};
use serde::Deserialize;

/// How long one handler call may take when the config does not say.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the watcher reads the config file.
pub const CONFIG_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    drain_timeout: Option<String>,
    handlers_dir: Option<PathBuf>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    id: String,
    path_prefix: String,
    host: Option<String>,
    library: Option<PathBuf>,
    timeout: Option<String>,
}

/// A parsed, checked config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Drain timeout of replaced and removed endpoints.
    pub drain_timeout: Duration,
    /// Endpoints by id.
    pub endpoints: BTreeMap<String, EndpointConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            drain_timeout: HANDLER_DRAIN,
            endpoints: BTreeMap::new(),
        }
    }
}

/// One endpoint of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The id.
    pub id: String,
    /// Where requests come from.
    pub route: Route,
    /// The library, resolved.
    pub library: PathBuf,
}

/// Which requests go to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    /// Host to match (without port); any host when `None`.
    pub host: Option<String>,
    /// Path prefix to match, at a segment boundary.
    pub path_prefix: String,
    /// Limit of one handler call.
    #[serde(skip)]
    pub timeout: Duration,
}

impl Route {
    /// Whether a request for `host` and `path` matches.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(wanted), Some(host)) => wanted.eq_ignore_ascii_case(host),
            (Some(_), None) => false,
        };
        let prefix = self.path_prefix.trim_end_matches('/');
        let path_ok = prefix.is_empty()
            || path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'));
        host_ok && path_ok
    }
}

/// What changed from one config to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new endpoint: load it.
    Added(EndpointConfig),
    /// An endpoint whose entry changed: swap it gracefully.
    Changed(EndpointConfig),
    /// An endpoint no longer in the config: drain and drop it.
    Removed(String),
}

impl Config {
    /// Parses `text`; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| error.to_string())?;
        let duration = |field: &str, text: Option<&String>, default: Duration| match text {
            None => Ok(default),
            Some(text) => parse_duration(text).map_err(|error| format!("{field}: {error}")),
        };
        let handlers_dir = base.join(
            raw.handlers_dir
                .unwrap_or_else(|| PathBuf::from("handlers")),
        );
        let mut endpoints = BTreeMap::new();
        for endpoint in raw.endpoints {
            validate_endpoint_id(&endpoint.id).map_err(|error| error.to_string())?;
            if !endpoint.path_prefix.starts_with('/') {
                return Err(format!(
                    "endpoint {}: path_prefix must start with '/'",
                    endpoint.id
                ));
            }
            let library = match endpoint.library {
                Some(library) => base.join(library),
                None => handlers_dir.join(library_file_name(&endpoint.id)),
            };
            let route = Route {
                host: endpoint.host,
                path_prefix: endpoint.path_prefix,
                timeout: duration(
                    "timeout",
                    endpoint.timeout.as_ref(),
                    DEFAULT_REQUEST_TIMEOUT,
                )?,
            };
            let config = EndpointConfig {
                id: endpoint.id.clone(),
                route,
                library,
            };
            if endpoints.insert(endpoint.id.clone(), config).is_some() {
                return Err(format!("endpoint {} appears twice", endpoint.id));
            }
        }
        Ok(Config {
            drain_timeout: duration("drain_timeout", raw.drain_timeout.as_ref(), HANDLER_DRAIN)?,
            endpoints,
        })
    }

    /// The changes that turn `self` into `next`, removals first.
    pub fn changes_to(&self, next: &Config) -> Vec<Change> {
        let removed = self
            .endpoints
            .keys()
            .filter(|id| !next.endpoints.contains_key(*id))
            .map(|id| Change::Removed(id.clone()));
        let added_or_changed =
            next.endpoints
                .values()
                .filter_map(|endpoint| match self.endpoints.get(&endpoint.id) {
                    None => Some(Change::Added(endpoint.clone())),
                    Some(previous) if previous != endpoint => {
                        Some(Change::Changed(endpoint.clone()))
                    }
                    Some(_) => None,
                });
        removed.chain(added_or_changed).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/gw")).unwrap()
    }

    #[test]
    fn paths_resolve_and_defaults_apply() {
        let config = parse(
            r#"
            [[endpoints]]
            id = "users"
            path_prefix = "/users"
            [[endpoints]]
            id = "orders"
            path_prefix = "/orders"
            library = "/abs/orders.so"
            timeout = "2s"
            "#,
        );
        assert_eq!(config.drain_timeout, HANDLER_DRAIN);
        let users = &config.endpoints["users"];
        assert_eq!(
            users.library,
            Path::new("/etc/gw/handlers").join(library_file_name("users"))
        );
        assert_eq!(users.route.timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(
            config.endpoints["orders"].library,
            Path::new("/abs/orders.so")
        );
        assert_eq!(
            config.endpoints["orders"].route.timeout,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn changes_are_removals_additions_and_changed_entries() {
        let before = parse(
            r#"
            [[endpoints]]
            id = "a"
            path_prefix = "/a"
            [[endpoints]]
            id = "b"
            path_prefix = "/b"
            "#,
        );
        let after = parse(
            r#"
            [[endpoints]]
            id = "b"
            path_prefix = "/b"
            timeout = "1s"
            [[endpoints]]
            id = "c"
            path_prefix = "/c"
            "#,
        );
        let changes = before.changes_to(&after);
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0], Change::Removed("a".into()));
        assert!(matches!(&changes[1], Change::Changed(endpoint) if endpoint.id == "b"));
        assert!(matches!(&changes[2], Change::Added(endpoint) if endpoint.id == "c"));
        assert!(after.changes_to(&after).is_empty());
    }

    #[test]
    fn bad_configs_are_refused() {
        for bad in [
            "[[endpoints]]\nid = \"a-b\"\npath_prefix = \"/a\"",
            "[[endpoints]]\nid = \"a\"\npath_prefix = \"a\"",
            "unknown = 1",
            "drain_timeout = \"soon\"",
        ] {
            assert!(Config::parse(bad, Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_match_at_segment_boundaries() {
        let route = Route {
            host: Some("api.test".into()),
            path_prefix: "/users".into(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        };
        assert!(route.matches(Some("API.test"), "/users"));
        assert!(route.matches(Some("api.test"), "/users/7"));
        assert!(route.matches(Some("api.test"), "/users?x=1"));
        assert!(!route.matches(Some("api.test"), "/usersx"));
        assert!(!route.matches(Some("other.test"), "/users"));
        assert!(!route.matches(None, "/users"));
    }
}
