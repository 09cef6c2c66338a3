//! [`Simulator`]: the payment gateway simulator running in this test process on a free port,
//! with typed helpers over its HTTP API (modes, the ledger), and a stop/restart on the same
//! port so a test can take the gateway down and bring it back.
//!
//! A restart keeps the simulator's memory: the ledger, the idempotency keys it has answered,
//! and the behaviours in force. That is a provider that went down and came back, which is what
//! "gateway down, breaker opens, gateway back, breaker closes" needs: money taken before the
//! outage is still counted, and a capture retried after it is still recognised.

use platform::startup::Service as _;
use std::time::Duration;

use anyhow::{Context, bail};
use gateway_simulator::{
    Application, Behaviour, Mode, Settings, SimulatorState,
    ledger::{ControlView, LedgerView},
};
use payment_gateway::GatewaySettings;
use platform::shutdown::CancellationToken;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a stop waits for the server to let go of its port.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restart keeps trying to bind the old port (it may be held for a moment by a
/// connection of another process that was handed the same number).
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// The simulator, in-process. Stopped when dropped.
#[derive(Debug)]
pub struct Simulator {
    port: u16,
    settings: Settings,
    state: SimulatorState,
    running: Option<Running>,
    http: reqwest::Client,
}

#[derive(Debug)]
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Simulator {
    /// Starts it on a free port with an empty ledger, approving everything.
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_with(Settings::default()).await
    }

    /// Starts it with `settings` (e.g. a shorter `simulator.default_delay`); the port is
    /// always a free one.
    pub async fn spawn_with(mut settings: Settings) -> anyhow::Result<Self> {
        "127.0.0.1".clone_into(&mut settings.http.host);
        settings.http.port = 0;
        let state = SimulatorState::default();
        let (port, running) = start(settings.clone(), state.clone()).await?;
        settings.http.port = port;
        Ok(Self {
            port,
            settings,
            state,
            running: Some(running),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("Failed to build the HTTP client")?,
        })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Settings for `payment_gateway::HttpGateway` pointing here (default timeouts).
    pub fn gateway_settings(&self) -> GatewaySettings {
        GatewaySettings {
            base_url: self.url(),
            ..GatewaySettings::default()
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Takes the gateway down: stops serving, ends hanging requests (they get 503) and closes
    /// the port, so that new connections are refused. Stopping a stopped simulator does nothing.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(Running { shutdown, mut task }) = self.running.take() else {
            return Ok(());
        };
        shutdown.cancel();
        let Ok(joined) = tokio::time::timeout(STOP_TIMEOUT, &mut task).await else {
            task.abort();
            bail!("the simulator did not stop within {STOP_TIMEOUT:?}")
        };
        joined
            .context("the simulator task panicked")?
            .context("the simulator failed while stopping")
    }

    /// Brings the gateway back on the same port with the same memory (ledger, keys,
    /// behaviours). Restarting a running simulator stops it first.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let deadline = tokio::time::Instant::now() + REBIND_TIMEOUT;
        loop {
            match start(self.settings.clone(), self.state.clone()).await {
                Ok((_, running)) => {
                    self.running = Some(running);
                    return Ok(());
                }
                Err(error) if address_in_use(&error) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => {
                    return Err(error.context(format!("Failed to restart on port {}", self.port)));
                }
            }
        }
    }

    /// Every booking without an override of its own is answered with `mode`.
    pub async fn set_mode(&self, mode: Mode) -> anyhow::Result<ControlView> {
        self.set_behaviour(Behaviour {
            mode,
            ..Behaviour::default()
        })
        .await
    }

    /// The global behaviour, with its delay, decline reason or `times`.
    pub async fn set_behaviour(&self, behaviour: Behaviour) -> anyhow::Result<ControlView> {
        self.send(self.http.put(self.path("/control")).json(&behaviour))
            .await
    }

    /// `booking`'s captures and refunds are answered with `mode`.
    pub async fn set_booking_mode(
        &self,
        booking: impl Into<Uuid>,
        mode: Mode,
    ) -> anyhow::Result<ControlView> {
        self.set_booking_behaviour(
            booking,
            Behaviour {
                mode,
                ..Behaviour::default()
            },
        )
        .await
    }

    pub async fn set_booking_behaviour(
        &self,
        booking: impl Into<Uuid>,
        behaviour: Behaviour,
    ) -> anyhow::Result<ControlView> {
        let path = format!("/control/bookings/{}", booking.into());
        self.send(self.http.put(self.path(&path)).json(&behaviour))
            .await
    }

    /// Removes `booking`'s override (an error if it had none).
    pub async fn clear_booking(&self, booking: impl Into<Uuid>) -> anyhow::Result<()> {
        let path = format!("/control/bookings/{}", booking.into());
        let response = self
            .http
            .delete(self.path(&path))
            .send()
            .await
            .with_context(|| format!("DELETE {path}"))?;
        check(response).await.map(drop)
    }

    /// Approve everything again and drop every override; the ledger stays.
    pub async fn reset_control(&self) -> anyhow::Result<ControlView> {
        self.send(self.http.delete(self.path("/control"))).await
    }

    /// The behaviours in force.
    pub async fn control(&self) -> anyhow::Result<ControlView> {
        self.send(self.http.get(self.path("/control"))).await
    }

    /// Every capture and refund and the totals per currency: see `LedgerView::captures_for`,
    /// `refunds_for` and `net_minor` for counting money.
    pub async fn ledger(&self) -> anyhow::Result<LedgerView> {
        self.send(self.http.get(self.path("/ledger"))).await
    }

    fn path(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .send()
            .await
            .context("the simulator did not answer")?;
        check(response)
            .await?
            .json()
            .await
            .context("the simulator's answer is not the expected JSON")
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown.cancel();
        }
    }
}

async fn start(settings: Settings, state: SimulatorState) -> anyhow::Result<(u16, Running)> {
    let shutdown = CancellationToken::new();
    let app = Application::build_with_state(settings, shutdown.clone(), state).await?;
    let port = app.port();
    let task = tokio::spawn(app.run_until_stopped());
    Ok((port, Running { shutdown, task }))
}

fn address_in_use(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().clone();
    let body = response.text().await.unwrap_or_default();
    bail!("{url} answered {status}: {body}")
}
