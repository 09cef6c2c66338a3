//! Starting the three services and the bare baseline server as processes, with the settings a
//! run gives them, and minting the tokens the clients present.

use std::path::Path;

use platform::auth::TokenKeys;
use schemas::Role;
use secrecy::SecretString;

use crate::{
    config::{Bench, SECRET},
    procs::Process,
};

/// The subject of the director token the benchmark's clients present.
pub(crate) const DIRECTOR: &str = "bench-director";

/// A director token signed with the run's secret, valid for a day.
pub(crate) fn director_token() -> anyhow::Result<String> {
    let keys = TokenKeys::from_secret(&SecretString::from(SECRET))?;
    Ok(keys.mint(DIRECTOR, Role::Director, chrono::Duration::hours(24))?)
}

/// The benchmarks measure the stack's throughput with one director token from one address:
/// the limits on the flow (docs/security.md) are lifted.
const NO_LIMITS: [(&str, &str); 3] = [
    ("FM_LIMITS__MAX_OPEN_BOOKINGS_PER_FAMILY", "0"),
    ("FM_LIMITS__PER_SUBJECT_PER_MINUTE", "0"),
    ("FM_LIMITS__PER_ADDRESS_PER_MINUTE", "0"),
];
/// The benchmark's master key (docs/privacy.md): a throw-away stack's, never a deployment's.
const MASTER_KEYS: &str = "bench-1:YmVuY2gtbWFzdGVyLWtleS1vZi0zMi1ieXRlcyEhISE=";

/// Where the data keys live (the admin database's `privacy` schema) and the master key: what
/// the command-service and the projection-service must share.
fn privacy_env(bench: &Bench) -> Vec<(&'static str, String)> {
    vec![
        ("FM_PRIVACY__DATABASE_URL", bench.admin_url.clone()),
        ("FM_PRIVACY__MASTER_KEYS", MASTER_KEYS.to_owned()),
    ]
}

fn kafka_env(kafka: &event_log::KafkaSettings) -> Vec<(&'static str, String)> {
    vec![
        ("FM_KAFKA__BROKERS", kafka.brokers.clone()),
        ("FM_KAFKA__TOPIC_PREFIX", kafka.topic_prefix.clone()),
    ]
}

/// A command-service on `kafka`'s topics; with `snapshot`, it keeps its snapshot there.
pub(crate) fn command_service(
    bench: &Bench,
    kafka: &event_log::KafkaSettings,
    tag: &str,
    snapshot: Option<&Path>,
) -> anyhow::Result<Process> {
    let mut env = kafka_env(kafka);
    env.push(("FM_AUTH__SECRET", SECRET.to_owned()));
    env.extend(NO_LIMITS.map(|(key, value)| (key, value.to_owned())));
    env.extend(privacy_env(bench));
    if let Some(path) = snapshot {
        env.push(("FM_COMMANDS__SNAPSHOT_PATH", path.display().to_string()));
    }
    Process::spawn(
        &format!("command-service-{tag}"),
        &bench.binary("command-service"),
        &[],
        bench.ports.command,
        &env,
        &bench.log_dir,
    )
}

/// A projection-service projecting `kafka`'s topics into the database at `database_url`.
pub(crate) fn projection_service(
    bench: &Bench,
    kafka: &event_log::KafkaSettings,
    database_url: &str,
    tag: &str,
) -> anyhow::Result<Process> {
    let mut env = kafka_env(kafka);
    env.push(("FM_DATABASE__URL", database_url.to_owned()));
    env.extend(privacy_env(bench));
    Process::spawn(
        &format!("projection-service-{tag}"),
        &bench.binary("projection-service"),
        &[],
        bench.ports.projection,
        &env,
        &bench.log_dir,
    )
}

/// A query-api on the read models at `database_url`.
pub(crate) fn query_api(bench: &Bench, database_url: &str, tag: &str) -> anyhow::Result<Process> {
    Process::spawn(
        &format!("query-api-{tag}"),
        &bench.binary("query-api"),
        &[],
        bench.ports.query,
        &[
            ("FM_DATABASE__URL", database_url.to_owned()),
            ("FM_AUTH__SECRET", SECRET.to_owned()),
            (NO_LIMITS[0].0, NO_LIMITS[0].1.to_owned()),
            (NO_LIMITS[1].0, NO_LIMITS[1].1.to_owned()),
            (NO_LIMITS[2].0, NO_LIMITS[2].1.to_owned()),
        ],
        &bench.log_dir,
    )
}

/// The bare axum + sqlx baseline server (`fm-bench bare-server`) on `database_url`.
pub(crate) fn bare_server(bench: &Bench, database_url: &str, tag: &str) -> anyhow::Result<Process> {
    let me = std::env::current_exe()?;
    Process::spawn(
        &format!("bare-server-{tag}"),
        &me,
        &["bare-server"],
        bench.ports.bare,
        &[("FM_DATABASE__URL", database_url.to_owned())],
        &bench.log_dir,
    )
}
