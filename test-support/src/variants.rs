//! Other builds of the workspace's binaries, for tests that run two releases side by side.
//!
//! A test-only cargo feature stands for the code of another release (for instance the next
//! read-model version). Features unify across one build, so that release cannot be a dependency
//! of the test: [`build_variant`] runs cargo once more, with the features, into an artifact
//! directory of its own, while sharing this build's intermediate artifacts (`build.build-dir`),
//! so only the crates the features change are compiled and the workspace's own binaries (which
//! other tests run at the same time) are never overwritten.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Builds the binaries of `packages` with `features` (`package/feature`) into
/// `<target>/variants/<name>/<profile>/` and returns that directory. `<target>` and the profile
/// are those of the running test binary. Blocking: cargo may take minutes on a cold cache.
pub fn build_variant(name: &str, packages: &[&str], features: &[&str]) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("Failed to find the test binary")?;
    // <build dir>/<profile dir>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?;
    let build_dir = profile_dir
        .parent()
        .context("the test binary is not in <target>/<profile>/deps")?;
    let profile_name = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .context("the profile directory has no name")?;
    let profile = if profile_name == "debug" {
        "dev"
    } else {
        profile_name
    };
    let artifacts = build_dir.join("variants").join(name);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("test-support is not inside the workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "--locked",
            "--offline",
            "--bins",
            "--profile",
            profile,
        ])
        .env("CARGO_TARGET_DIR", &artifacts)
        .env("CARGO_BUILD_BUILD_DIR", build_dir);
    for package in packages {
        command.args(["--package", package]);
    }
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let output = command
        .output()
        .context("Failed to run cargo to build a variant of the binaries")?;
    if !output.status.success() {
        bail!(
            "cargo could not build the variant {name} ({features:?}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(artifacts.join(profile_name))
}
