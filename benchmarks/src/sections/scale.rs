//! Scale-out: booking commands through one and through two command-service replicas, and whole
//! bookings (request to finished saga: slot held, paid, confirmed, family told) with one and
//! with two saga runners; each on fresh topics, every process a release binary.
//!
//! Both replicas of the command-service read the whole log and answer a write only once they
//! have read their own record back (`docs/consistency.md`); two saga runners share the
//! bookings' partitions as one consumer group. What a second instance can add is therefore
//! bounded by what the machine has left: the page says so beside the figures.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};
use system_tests::{simulator::Simulator, smtp_sink::SmtpSink};

use super::write::{booking_body, post_bookings_to, register_facilities};
use crate::{
    config::Bench,
    load::client,
    machine::load_average,
    pg,
    procs::{Process, READY_WITHIN},
    stack,
    stats::Load,
};

/// How long the sagas of one measurement may take to finish, at most.
const SAGAS_WITHIN: Duration = Duration::from_mins(10);

/// Bookings from request to finished saga.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SagaLoad {
    /// The `POST /bookings` that started them (202 answers).
    pub posted: Load,
    /// Sagas finished (`done`) in the measurement.
    pub done: usize,
    /// From the first request until the last saga was done.
    pub elapsed_s: f64,
    /// Where the machine's CPU went over that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<crate::cpu::CpuUse>,
}

impl SagaLoad {
    /// Finished bookings per second.
    pub(crate) fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
        let done = self.done as f64;
        if self.elapsed_s > 0.0 {
            done / self.elapsed_s
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ScaleRep {
    /// `POST /bookings` through one command-service.
    pub commands_one: Load,
    /// The same, the requests alternating between two replicas.
    pub commands_two: Load,
    /// Whole bookings with one saga runner.
    pub sagas_one: SagaLoad,
    /// The same with two.
    pub sagas_two: SagaLoad,
    pub order: String,
    pub load_average: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ScaleResults {
    /// Bookings whose sagas each saga measurement waits for.
    pub saga_bookings: usize,
    pub reps: Vec<ScaleRep>,
}

/// Stops every process, the first error kept.
async fn stop_all(processes: Vec<Process>) -> anyhow::Result<()> {
    let mut result = Ok(());
    for process in processes {
        let stopped = process.stop().await;
        if result.is_ok() {
            result = stopped;
        }
    }
    result
}

/// `booking_requests` `POST /bookings` spread over `replicas` command-services (1 or 2) on
/// fresh topics; the facilities are registered before the second replica starts, so its
/// readiness (caught up with the log as it was at its start) covers them.
async fn commands(bench: &Bench, replicas: usize, tag: &str) -> anyhow::Result<Load> {
    let sizes = &bench.sizes;
    let http = &client()?;
    let kafka = bench.kafka("scale");
    bench.topics(&kafka).await?;
    // The bare server's port is free in this section: the second replica takes it.
    let ports = [bench.ports.command, bench.ports.bare];
    let mut first = stack::command_replica(bench, &kafka, ports[0], &format!("{tag}-0"))?;
    first.wait_ready(http, READY_WITHIN).await?;
    let token = stack::director_token()?;
    let facilities = register_facilities(http, &first.base(), &token, sizes.facilities).await?;
    let mut services = vec![first];
    for (n, port) in ports.iter().enumerate().take(replicas).skip(1) {
        let mut replica = stack::command_replica(bench, &kafka, *port, &format!("{tag}-{n}"))?;
        replica.wait_ready(http, READY_WITHIN).await?;
        services.push(replica);
    }
    let urls: Vec<String> = services
        .iter()
        .map(|service| format!("{}/bookings", service.base()))
        .collect();
    let bodies = |range: std::ops::Range<usize>| {
        range
            .map(|i| booking_body(&facilities, i))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let warm_up = post_bookings_to(
        http,
        &urls,
        &token,
        bodies(0..sizes.clients)?,
        sizes.clients,
    );
    let warm_up = warm_up.await?;
    if warm_up.failed() > 0 {
        eprintln!("    warm-up failures: {:?}", warm_up.first_failure);
    }
    let measured = bodies(sizes.clients..sizes.clients + sizes.booking_requests)?;
    let load = post_bookings_to(http, &urls, &token, measured, sizes.clients).await;
    stop_all(services).await?;
    load
}

/// Finished sagas in the runners' database.
async fn sagas_done(database: &mut PgConnection) -> anyhow::Result<usize> {
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM saga.progress WHERE done")
        .fetch_one(database)
        .await
        .context("Failed to count the finished sagas")?;
    Ok(usize::try_from(done)?)
}

/// Waits until `target` sagas are done; fails after [`SAGAS_WITHIN`] or when a process died.
async fn wait_sagas(
    database: &mut PgConnection,
    target: usize,
    processes: &mut [Process],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SAGAS_WITHIN;
    loop {
        let done = sagas_done(database).await?;
        if done >= target {
            return Ok(());
        }
        for process in processes.iter_mut() {
            process.check_alive()?;
        }
        if Instant::now() > deadline {
            bail!("{done} of {target} sagas were done after {SAGAS_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `saga_bookings` bookings through one command-service, driven to the end by `runners` saga
/// runners (1 or 2), timed from the first request until the last saga is done.
async fn sagas(
    bench: &Bench,
    runners: usize,
    saga_bookings: usize,
    tag: &str,
) -> anyhow::Result<SagaLoad> {
    let sizes = &bench.sizes;
    let http = &client()?;
    let kafka = bench.kafka("sagas");
    bench.topics(&kafka).await?;
    let database_url = pg::fresh_database(&bench.admin_url, &tag.replace('-', "_")).await?;
    let simulator = Simulator::spawn().await?;
    let sink = SmtpSink::start().await?;
    let mut command = stack::command_replica(bench, &kafka, bench.ports.command, tag)?;
    command.wait_ready(http, READY_WITHIN).await?;
    let peers = stack::SagaPeers {
        kafka: &kafka,
        database_url: &database_url,
        command_url: command.base(),
        gateway_url: simulator.url(),
        smtp_port: sink.port(),
    };
    // The query-api's and projection-service's ports are free in this section.
    let mut processes = vec![command];
    for (n, port) in [bench.ports.query, bench.ports.projection]
        .into_iter()
        .enumerate()
        .take(runners)
    {
        let mut runner = stack::saga_runner(bench, &peers, port, &format!("{tag}-runner-{n}"))?;
        runner.wait_ready(http, READY_WITHIN).await?;
        processes.push(runner);
    }
    let token = stack::director_token()?;
    let base = processes[0].base();
    let urls = [format!("{base}/bookings")];
    let facilities = register_facilities(http, &base, &token, sizes.facilities).await?;
    let bodies = |range: std::ops::Range<usize>| {
        range
            .map(|i| booking_body(&facilities, i))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let mut database = PgConnection::connect(&database_url).await?;
    let warm_up = post_bookings_to(
        http,
        &urls,
        &token,
        bodies(0..sizes.clients)?,
        sizes.clients,
    );
    let warm_up = warm_up.await?;
    wait_sagas(&mut database, warm_up.ok, &mut processes).await?;
    let measured = bodies(sizes.clients..sizes.clients + saga_bookings)?;
    let census = crate::cpu::Census::take();
    let started = Instant::now();
    let posted = post_bookings_to(http, &urls, &token, measured, sizes.clients).await?;
    let target = warm_up.ok + posted.ok;
    let waited = wait_sagas(&mut database, target, &mut processes).await;
    let elapsed_s = started.elapsed().as_secs_f64();
    let cpu = census.as_ref().and_then(crate::cpu::Census::since);
    stop_all(processes).await?;
    waited?;
    Ok(SagaLoad {
        done: posted.ok,
        posted,
        elapsed_s,
        cpu,
    })
}

pub(crate) async fn run(bench: &Bench) -> anyhow::Result<ScaleResults> {
    let sizes = &bench.sizes;
    // A saga is several commands and a payment: a third of the booking requests keeps the
    // section's length near the write section's.
    let saga_bookings = (sizes.booking_requests / 3).max(sizes.clients);
    let mut reps = Vec::new();
    for rep in 0..sizes.repetitions {
        let one_first = rep % 2 == 0;
        eprintln!(
            "  scale-out, repetition {} of {} ({} first)",
            rep + 1,
            sizes.repetitions,
            if one_first { "one" } else { "two" }
        );
        let load_before = load_average();
        let counts = if one_first { [1, 2] } else { [2, 1] };
        let (mut commands_one, mut commands_two) = (Load::default(), Load::default());
        for replicas in counts {
            let load = commands(bench, replicas, &format!("scale-{rep}-{replicas}")).await?;
            eprintln!(
                "    {replicas} command-service(s): {:.0} commands/s, p50 {:.1} ms",
                load.rate(),
                load.p50_ms
            );
            if replicas == 1 {
                commands_one = load;
            } else {
                commands_two = load;
            }
        }
        let (mut sagas_one, mut sagas_two) = (SagaLoad::default(), SagaLoad::default());
        for runners in counts {
            let tag = format!("sagas-{rep}-{runners}");
            let load = sagas(bench, runners, saga_bookings, &tag).await?;
            eprintln!(
                "    {runners} saga runner(s): {:.0} bookings/s done ({:.0} requests/s accepted)",
                load.rate(),
                load.posted.rate()
            );
            if runners == 1 {
                sagas_one = load;
            } else {
                sagas_two = load;
            }
        }
        reps.push(ScaleRep {
            commands_one,
            commands_two,
            sagas_one,
            sagas_two,
            order: if one_first {
                "one, then two".into()
            } else {
                "two, then one".into()
            },
            load_average: format!("{load_before} → {}", load_average()),
        });
    }
    Ok(ScaleResults {
        saga_bookings,
        reps,
    })
}
