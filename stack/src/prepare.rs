//! The one-shot set-up before the services start: `fmctl topics ensure` (the event topics, with
//! the settings of docs/operations.md; fails on drift) and `projection-service migrate` (the
//! read models). Both are idempotent.

use std::{
    os::fd::AsFd,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{Env, Facts, Instance, Service, env};

/// One set-up step: what it is called, the binary, its arguments and its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub label: &'static str,
    pub service: Service,
    pub args: &'static [&'static str],
    pub env: Env,
}

/// The set-up steps on a stack with `facts`, in order, each logging in the readable format.
pub fn steps(facts: &Facts) -> Vec<Step> {
    let pretty = Facts {
        log_format: Some("pretty".to_owned()),
        ..facts.clone()
    };
    let mut migrate = env(&pretty, &Instance::new(Service::ProjectionService, 0));
    migrate.remove("FM_HTTP__HOST");
    migrate.remove("FM_HTTP__PORT");
    vec![
        Step {
            label: "fmctl topics ensure",
            service: Service::Fmctl,
            args: &["topics", "ensure"],
            env: env(&pretty, &Instance::new(Service::Fmctl, 0)),
        },
        Step {
            label: "projection-service migrate",
            service: Service::ProjectionService,
            args: &["migrate"],
            env: migrate,
        },
    ]
}

/// Runs [`steps`] with the binaries in `bin_dir`, their output on this process's stderr (a
/// caller's stdout stays clean). They inherit this process's environment minus the
/// `FM_STACK_*` facts, as the scripts' services do (`start_service` in compose/lib.sh): a
/// setting the caller exports (`FM_KAFKA__PARTITIONS`, say) reaches them all alike.
pub fn run(facts: &Facts, bin_dir: &Path) -> anyhow::Result<()> {
    for step in steps(facts) {
        let binary = bin_dir.join(step.service.name());
        let mut command = Command::new(&binary);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("FM_STACK_") {
                command.env_remove(key.as_ref());
            }
        }
        let stderr = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("Failed to duplicate stderr")?;
        let status = command
            .args(step.args)
            .envs(&step.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .status()
            .with_context(|| format!("Failed to run {}", binary.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", step.label);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_first_then_migrations_with_the_stacks_settings() {
        let facts = Facts {
            brokers: Some("127.0.0.1:9092".to_owned()),
            topic_prefix: Some("fm".to_owned()),
            partitions: Some(6),
            database_url: Some("postgres://db".to_owned()),
            ..Facts::default()
        };
        let steps = steps(&facts);
        let labels: Vec<&str> = steps.iter().map(|step| step.label).collect();
        assert_eq!(
            labels,
            ["fmctl topics ensure", "projection-service migrate"]
        );
        assert_eq!(steps[0].env["FM_KAFKA__PARTITIONS"], "6");
        assert_eq!(steps[0].env["FM_LOG__FORMAT"], "pretty");
        assert_eq!(steps[1].env["FM_DATABASE__URL"], "postgres://db");
        assert!(!steps[1].env.contains_key("FM_HTTP__PORT"));
    }
}
