//! Queries: `GET /bookings/{id}` and `GET /bookings` (first page of 50) on a query-api process
//! against the bare axum + sqlx process answering the same rows, on the replayed read models.

use std::{sync::Arc, time::Duration};

use domain::values::BookingId;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::replay::Replayed;
use crate::{
    config::Bench,
    load::{Until, client, closed_loop, expect},
    machine::load_average,
    procs::READY_WITHIN,
    stack,
    stats::Load,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QueryRep {
    pub by_id_api: Load,
    pub by_id_bare: Load,
    pub list_api: Load,
    pub list_bare: Load,
    pub order: String,
    pub load_average: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QueryResults {
    pub bookings: usize,
    pub reps: Vec<QueryRep>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    ById,
    List,
}

/// `clients` clients `GET` from `base` for `time`: bookings by id in a scattered order, or the
/// first page; the token is presented when given (the bare server ignores it anyway).
pub(crate) async fn get_load(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    ids: &Arc<Vec<BookingId>>,
    list: bool,
    clients: usize,
    time: Duration,
) -> anyhow::Result<Load> {
    let (http, base, token, ids) = (
        http.clone(),
        Arc::new(base.to_owned()),
        Arc::new(token.map(str::to_owned)),
        ids.clone(),
    );
    closed_loop(clients, Until::Time(time), move |i| {
        let (http, base, token, ids) = (http.clone(), base.clone(), token.clone(), ids.clone());
        async move {
            let url = if list {
                format!("{base}/bookings")
            } else {
                // A stride coprime with any plausible count scatters the keys over the table.
                format!("{base}/bookings/{}", ids[i.wrapping_mul(7919) % ids.len()])
            };
            let mut request = http.get(url);
            if let Some(token) = token.as_deref() {
                request = request.bearer_auth(token);
            }
            expect(request, StatusCode::OK).await.map(|_| None)
        }
    })
    .await
}

pub(crate) async fn run(bench: &Bench, replayed: &Replayed) -> anyhow::Result<QueryResults> {
    let sizes = &bench.sizes;
    let http = &client()?;
    let mut api = stack::query_api(bench, &replayed.database_url, "query")?;
    api.wait_ready(http, READY_WITHIN).await?;
    let mut bare = stack::bare_server(bench, &replayed.database_url, "query")?;
    bare.wait_ready(http, READY_WITHIN).await?;
    let token = stack::director_token()?;
    let ids = Arc::new(replayed.bookings.clone());
    let time = Duration::from_secs(sizes.query_seconds);
    let warm = Duration::from_secs(1);
    let mut reps = Vec::new();
    for rep in 0..sizes.repetitions {
        eprintln!("  queries, repetition {} of {}", rep + 1, sizes.repetitions);
        let load_before = load_average();
        let api_first = rep % 2 == 0;
        let mut results = Vec::new();
        for target in [Target::ById, Target::List] {
            let list = target == Target::List;
            let order = if api_first {
                [true, false]
            } else {
                [false, true]
            };
            let (mut on_api, mut on_bare) = (None, None);
            for use_api in order {
                let (target_base, token) = if use_api {
                    (api.base(), Some(token.as_str()))
                } else {
                    (bare.base(), None)
                };
                get_load(http, &target_base, token, &ids, list, sizes.clients, warm).await?;
                let load =
                    get_load(http, &target_base, token, &ids, list, sizes.clients, time).await?;
                if use_api {
                    on_api = Some(load);
                } else {
                    on_bare = Some(load);
                }
            }
            results.push((on_api.unwrap_or_default(), on_bare.unwrap_or_default()));
        }
        let [(by_id_api, by_id_bare), (list_api, list_bare)]: [(Load, Load); 2] = results
            .try_into()
            .map_err(|_| anyhow::anyhow!("two targets measured"))?;
        eprintln!(
            "    by id: query-api {:.0}/s, bare {:.0}/s; list: query-api {:.0}/s, bare {:.0}/s",
            by_id_api.rate(),
            by_id_bare.rate(),
            list_api.rate(),
            list_bare.rate()
        );
        reps.push(QueryRep {
            by_id_api,
            by_id_bare,
            list_api,
            list_bare,
            order: if api_first {
                "query-api, then bare (by id, then list)".into()
            } else {
                "bare, then query-api (by id, then list)".into()
            },
            load_average: format!("{load_before} → {}", load_average()),
        });
    }
    api.stop().await?;
    bare.stop().await?;
    Ok(QueryResults {
        bookings: ids.len(),
        reps,
    })
}
