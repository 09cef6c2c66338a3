//! Starting the three services (as the `stack` crate describes them, with the facts of a
//! benchmark run) and the bare baseline server as processes, and minting the tokens the clients
//! present.

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

/// The facts of a benchmark's stack (`stack::Facts`): tokens checked with the run's secret,
/// the data keys in the admin database under the benchmark's master key, and no limits on the
/// flow (the benchmarks measure the stack's throughput with one director token from one
/// address; docs/security.md); `kafka`'s topics when given.
fn facts(bench: &Bench, kafka: Option<&event_log::KafkaSettings>) -> stack::Facts {
    stack::Facts {
        brokers: kafka.map(|kafka| kafka.brokers.clone()),
        topic_prefix: kafka.map(|kafka| kafka.topic_prefix.clone()),
        auth: Some(stack::Auth::Secret(SECRET.to_owned())),
        master_keys: Some(MASTER_KEYS.to_owned()),
        key_database_url: Some(bench.admin_url.clone()),
        limits: false,
        ..stack::Facts::default()
    }
}

/// The benchmark's master key (docs/privacy.md): a throw-away stack's, never a deployment's.
const MASTER_KEYS: &str = "bench-1:YmVuY2gtbWFzdGVyLWtleS1vZi0zMi1ieXRlcyEhISE=";

/// Starts `service` of the stack with `facts`, on its benchmark port, as `<service>-<tag>`.
fn spawn(
    bench: &Bench,
    service: stack::Service,
    port: u16,
    facts: &stack::Facts,
    tag: &str,
) -> anyhow::Result<Process> {
    Process::spawn(
        &format!("{service}-{tag}"),
        &bench.binary(service.name()),
        &[],
        &stack::env(facts, &stack::Instance::new(service, port)),
        &bench.log_dir,
    )
}

/// A command-service on `kafka`'s topics; with `snapshot`, it keeps its snapshot there.
pub(crate) fn command_service(
    bench: &Bench,
    kafka: &event_log::KafkaSettings,
    tag: &str,
    snapshot: Option<&Path>,
) -> anyhow::Result<Process> {
    command_service_with(bench, kafka, tag, snapshot, &[])
}

/// As [`command_service`], with more settings (`FM_*` variables) on top of the stack's.
pub(crate) fn command_service_with(
    bench: &Bench,
    kafka: &event_log::KafkaSettings,
    tag: &str,
    snapshot: Option<&Path>,
    settings: &[(&str, &str)],
) -> anyhow::Result<Process> {
    let facts = stack::Facts {
        snapshot: snapshot.map(Path::to_owned),
        ..facts(bench, Some(kafka))
    };
    let service = stack::Service::CommandService;
    let mut env = stack::env(&facts, &stack::Instance::new(service, bench.ports.command));
    for (key, value) in settings {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    Process::spawn(
        &format!("{service}-{tag}"),
        &bench.binary(service.name()),
        &[],
        &env,
        &bench.log_dir,
    )
}

/// One more command-service replica on `kafka`'s topics, on `port` (the scale-out section runs
/// two side by side).
pub(crate) fn command_replica(
    bench: &Bench,
    kafka: &event_log::KafkaSettings,
    port: u16,
    tag: &str,
) -> anyhow::Result<Process> {
    spawn(
        bench,
        stack::Service::CommandService,
        port,
        &facts(bench, Some(kafka)),
        tag,
    )
}

/// Where a saga runner finds the rest of the booking flow.
pub(crate) struct SagaPeers<'a> {
    pub kafka: &'a event_log::KafkaSettings,
    /// Its own database (the `saga` schema, which it migrates).
    pub database_url: &'a str,
    pub command_url: String,
    pub gateway_url: String,
    pub smtp_port: u16,
}

/// A saga runner with the services' defaults, on `port`.
pub(crate) fn saga_runner(
    bench: &Bench,
    peers: &SagaPeers<'_>,
    port: u16,
    tag: &str,
) -> anyhow::Result<Process> {
    let facts = stack::Facts {
        database_url: Some(peers.database_url.to_owned()),
        command_url: Some(peers.command_url.clone()),
        gateway_url: Some(peers.gateway_url.clone()),
        smtp: Some(("127.0.0.1".to_owned(), peers.smtp_port)),
        ..facts(bench, Some(peers.kafka))
    };
    spawn(bench, stack::Service::SagaRunner, port, &facts, tag)
}

/// A projection-service projecting `kafka`'s topics into the database at `database_url`.
pub(crate) fn projection_service(
    bench: &Bench,
    kafka: &event_log::KafkaSettings,
    database_url: &str,
    tag: &str,
) -> anyhow::Result<Process> {
    let facts = stack::Facts {
        database_url: Some(database_url.to_owned()),
        ..facts(bench, Some(kafka))
    };
    spawn(
        bench,
        stack::Service::ProjectionService,
        bench.ports.projection,
        &facts,
        tag,
    )
}

/// A query-api on the read models at `database_url`.
pub(crate) fn query_api(bench: &Bench, database_url: &str, tag: &str) -> anyhow::Result<Process> {
    let facts = stack::Facts {
        database_url: Some(database_url.to_owned()),
        ..facts(bench, None)
    };
    spawn(
        bench,
        stack::Service::QueryApi,
        bench.ports.query,
        &facts,
        tag,
    )
}

/// The bare axum + sqlx baseline server (`fm-bench bare-server`) on `database_url`: not a
/// service of the stack, so its few settings are written here.
pub(crate) fn bare_server(bench: &Bench, database_url: &str, tag: &str) -> anyhow::Result<Process> {
    let me = std::env::current_exe()?;
    let env: stack::Env = [
        ("FM_HTTP__HOST", "127.0.0.1".to_owned()),
        ("FM_HTTP__PORT", bench.ports.bare.to_string()),
        ("FM_LOG__FORMAT", "json".to_owned()),
        ("FM_DATABASE__URL", database_url.to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    Process::spawn(
        &format!("bare-server-{tag}"),
        &me,
        &["bare-server"],
        &env,
        &bench.log_dir,
    )
}
