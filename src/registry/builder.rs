//! Handler source → Cargo project → dynamic library.
//!
//! For each endpoint the builder writes a project (`Cargo.toml` with
//! `crate-type = ["cdylib"]` and the SDK as a path dependency, and
//! `src/lib.rs` with the source as given), runs `cargo build --release`, and
//! copies the library into its handlers directory under the platform's name
//! ([`super::library_file_name`]). A failed build changes nothing there, so
//! whatever was built or loaded before stays as it was.
//!
//! Hazards handled here:
//! - **Workspaces.** The generated `Cargo.toml` has a `[workspace]` table
//!   of its own, so Cargo does not attach the project to a workspace found
//!   in a parent directory.
//! - **Shared target directories.** Several builders may share one Cargo
//!   target directory (the SDK's dependencies are then compiled once). The
//!   package name carries a hash of the project directory, so two builders
//!   building the same endpoint id never write the same artifact; Cargo's
//!   own lock serialises the builds.
//! - **Runaway builds.** Cargo runs in a process group of its own, killed
//!   whole (cargo and its rustc children) at the timeout or when the build
//!   is abandoned, and always reaped ([`crate::sys::run_bounded`]).
//! - **Half-written libraries.** The artifact is copied to a temporary name
//!   and renamed into place, so a reader never sees a partial file.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::handler::library_file_name;
use super::monitor::lock;
use crate::error::{Error, Result};
use crate::sys::{self, RunError};
use crate::timeouts::HANDLER_BUILD;
use crate::wire::Fingerprint;

/// A library the builder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLibrary {
    /// The endpoint.
    pub endpoint: String,
    /// The library in the handlers directory.
    pub path: PathBuf,
    /// How long the build took.
    pub elapsed: Duration,
}

/// Builds handler libraries from source.
///
/// ```no_run
/// use handoff::registry::{HandlerBuilder, HandlerRegistry, HandlerSource};
///
/// let builder = HandlerBuilder::new("/var/lib/gateway/build", "/opt/handoff/handler-sdk");
/// let source = r#"
///     use handoff_handler_sdk::{Context, Request, Response, export_handler};
///     fn hello(_: &Context, _: Request) -> Response { Response::text(200, "hello") }
///     export_handler!(hello);
/// "#;
/// let built = builder.build("hello", source)?;
/// let registry = HandlerRegistry::new();
/// registry.insert("hello", HandlerSource::library(&built.path))?;
/// # Ok::<(), handoff::Error>(())
/// ```
#[derive(Debug)]
pub struct HandlerBuilder {
    projects_dir: PathBuf,
    handlers_dir: PathBuf,
    target_dir: PathBuf,
    sdk_dir: PathBuf,
    lockfile: Option<PathBuf>,
    cargo: OsString,
    timeout: Duration,
    /// One build at a time per builder: builds of one endpoint share files.
    busy: Mutex<()>,
}

impl HandlerBuilder {
    /// A builder keeping projects in `work_dir/projects`, Cargo's output in
    /// `work_dir/target` and libraries in `work_dir/handlers`; `sdk_dir` is
    /// the `handoff-handler-sdk` crate the projects depend on.
    pub fn new(work_dir: impl AsRef<Path>, sdk_dir: impl Into<PathBuf>) -> HandlerBuilder {
        let work_dir = work_dir.as_ref();
        HandlerBuilder {
            projects_dir: work_dir.join("projects"),
            handlers_dir: work_dir.join("handlers"),
            target_dir: work_dir.join("target"),
            sdk_dir: sdk_dir.into(),
            lockfile: None,
            cargo: std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")),
            timeout: HANDLER_BUILD,
            busy: Mutex::new(()),
        }
    }

    /// Uses `dir` as Cargo's target directory (share one between builders
    /// to compile the SDK's dependencies once).
    pub fn with_target_dir(mut self, dir: impl Into<PathBuf>) -> HandlerBuilder {
        self.target_dir = dir.into();
        self
    }

    /// Seeds each new project's `Cargo.lock` from `lockfile`, pinning the
    /// SDK's dependencies to known versions.
    pub fn with_lockfile(mut self, lockfile: impl Into<PathBuf>) -> HandlerBuilder {
        self.lockfile = Some(lockfile.into());
        self
    }

    /// Kills a build that takes longer than `timeout` (default
    /// [`HANDLER_BUILD`]).
    pub fn with_timeout(mut self, timeout: Duration) -> HandlerBuilder {
        self.timeout = timeout;
        self
    }

    /// Runs `cargo` from this path (default: `$CARGO`, else `cargo`).
    pub fn with_cargo(mut self, cargo: impl Into<OsString>) -> HandlerBuilder {
        self.cargo = cargo.into();
        self
    }

    /// Where built libraries go, named by [`super::library_file_name`]; load
    /// them with [`super::HandlerSource::from_dir`].
    pub fn handlers_dir(&self) -> &Path {
        &self.handlers_dir
    }

    /// The Cargo project of `endpoint`.
    pub fn project_dir(&self, endpoint: &str) -> PathBuf {
        self.projects_dir.join(endpoint)
    }

    /// Builds `source` as the library of `endpoint`.
    ///
    /// On a compile error returns [`Error::Build`] with the compiler's
    /// output; past the timeout, [`Error::BuildTimedOut`]. Either way the
    /// handlers directory is untouched.
    pub fn build(&self, endpoint: &str, source: &str) -> Result<BuiltLibrary> {
        validate_endpoint_id(endpoint)?;
        let _busy = lock(&self.busy);
        let started = Instant::now();
        let project = self.project_dir(endpoint);
        let package = self.package_name(endpoint);
        self.write_project(&project, &package, source)?;

        let manifest = project.join("Cargo.toml");
        let args = [
            OsStr::new("build"),
            OsStr::new("--release"),
            OsStr::new("--color=never"),
            OsStr::new("--manifest-path"),
            manifest.as_os_str(),
            OsStr::new("--target-dir"),
            self.target_dir.as_os_str(),
        ];
        let finished = sys::run_bounded(&self.cargo, &args, &["CARGO_TARGET_DIR"], self.timeout)
            .map_err(|error| match error {
                RunError::TimedOut => Error::BuildTimedOut {
                    endpoint: endpoint.to_owned(),
                    timeout: self.timeout,
                },
                RunError::Spawn(source) => Error::io("starting cargo", source),
                RunError::Waiter(source) => Error::io("starting a build waiter thread", source),
                RunError::Wait(source) => Error::io("waiting for cargo", source),
            })?;
        if !finished.status.success() {
            return Err(Error::Build {
                endpoint: endpoint.to_owned(),
                compiler_output: finished.stderr,
            });
        }

        let artifact = self.target_dir.join("release").join(format!(
            "{}{package}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ));
        std::fs::create_dir_all(&self.handlers_dir)
            .map_err(|source| Error::path("creating", &self.handlers_dir, source))?;
        let destination = self.handlers_dir.join(library_file_name(endpoint));
        let staging = self
            .handlers_dir
            .join(format!(".{}.partial", library_file_name(endpoint)));
        std::fs::copy(&artifact, &staging)
            .map_err(|source| Error::path("copying", &artifact, source))?;
        std::fs::rename(&staging, &destination)
            .map_err(|source| Error::path("renaming into place", &destination, source))?;
        let elapsed = started.elapsed();
        tracing::info!(endpoint, path = %destination.display(), elapsed_ms = elapsed.as_millis(), "handler built");
        Ok(BuiltLibrary {
            endpoint: endpoint.to_owned(),
            path: destination,
            elapsed,
        })
    }

    /// `handler_{id}_{hash of the projects directory}`: unique per builder,
    /// so builders may share a target directory.
    fn package_name(&self, endpoint: &str) -> String {
        let tag = Fingerprint::of_bytes(self.projects_dir.to_string_lossy().as_bytes()).to_string();
        format!("handler_{endpoint}_{}", &tag[..8])
    }

    fn write_project(&self, project: &Path, package: &str, source: &str) -> Result<()> {
        let src = project.join("src");
        std::fs::create_dir_all(&src).map_err(|error| Error::path("creating", &src, error))?;
        let sdk = std::path::absolute(&self.sdk_dir)
            .map_err(|error| Error::path("resolving", &self.sdk_dir, error))?;
        let manifest = format!(
            "# Generated by handoff's HandlerBuilder; rewritten on every build.\n\
             [package]\n\
             name = \"{package}\"\n\
             version = \"0.1.0\"\n\
             edition = \"2021\"\n\
             publish = false\n\
             \n\
             [lib]\n\
             crate-type = [\"cdylib\"]\n\
             path = \"src/lib.rs\"\n\
             \n\
             [dependencies]\n\
             handoff-handler-sdk = {{ path = {} }}\n\
             \n\
             # Panics are caught inside the library (the ABI requires unwinding).\n\
             [profile.release]\n\
             panic = \"unwind\"\n\
             \n\
             # A workspace of its own, whatever directory the project is in.\n\
             [workspace]\n",
            toml_string(&sdk.to_string_lossy())
        );
        write_if_changed(&project.join("Cargo.toml"), manifest.as_bytes())?;
        write_if_changed(&src.join("lib.rs"), source.as_bytes())?;
        if let Some(lockfile) = &self.lockfile {
            let target = project.join("Cargo.lock");
            if !target.exists() {
                std::fs::copy(lockfile, &target)
                    .map_err(|error| Error::path("copying", lockfile, error))?;
            }
        }
        Ok(())
    }
}

/// Checks that `id` can name a library: 1 to 64 ASCII letters, digits or
/// underscores.
///
/// ```
/// use handoff::registry::validate_endpoint_id;
/// assert!(validate_endpoint_id("users_v2").is_ok());
/// assert!(validate_endpoint_id("../etc").is_err());
/// ```
pub fn validate_endpoint_id(id: &str) -> Result<()> {
    let problem = if id.is_empty() {
        Some("empty")
    } else if id.len() > 64 {
        Some("longer than 64 bytes")
    } else if !id
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
    {
        Some("only ASCII letters, digits and '_' are allowed")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::BadEndpointId {
            id: id.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            character if character.is_control() => {
                quoted.push_str(&format!("\\u{:04X}", u32::from(character)));
            }
            character => quoted.push(character),
        }
    }
    quoted.push('"');
    quoted
}

/// Writes `bytes` unless the file already holds them, so that an unchanged
/// project keeps its timestamps and Cargo has nothing to rebuild.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).map_err(|error| Error::path("writing", path, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("tab\there"), r#""tab\u0009here""#);
    }

    #[test]
    fn endpoint_ids_that_cannot_name_a_library_are_refused() {
        for bad in ["", "a-b", "a/b", "é", &"x".repeat(65)] {
            assert!(validate_endpoint_id(bad).is_err(), "{bad:?}");
        }
        validate_endpoint_id("Users_2").unwrap_or_else(|error| panic!("{error}"));
    }
}
