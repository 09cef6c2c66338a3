//! Structured logs and traces.
//!
//! Logs are JSON lines (or pretty text) on standard output, filtered by `RUST_LOG` or
//! `FM_LOG__FILTER`. Spans always carry an OpenTelemetry trace context, so that the
//! `traceparent` can be passed on to Kafka records and HTTP calls ([`crate::trace`]) and log
//! lines name their `trace_id`; the spans are **exported** only when an OTLP endpoint is
//! configured: `FM_LOG__OTLP_ENDPOINT` (this project's variable), or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. The export is OTLP over
//! HTTP/protobuf (a collector's port 4318), batched on a background thread; nothing is needed
//! when no endpoint is set, and no log line or request waits on the collector.
//!
//! The filter for logs does not apply to traces: spans at `info` and above are traced even when
//! the logs are quieter, so that turning logs down does not break a trace.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanProcessor, TracerProviderBuilder},
};
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, fmt, fmt::writer::BoxMakeWriter, prelude::*,
};

use crate::settings::{LogFormat, LogSettings};

/// The tracer provider of the installed subscriber, kept for [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber (logs, and traces as described in the module docs). Safe to
/// call more than once (tests build several services in one process): later calls leave the
/// first subscriber in place. Call [`shutdown`] before the process exits to flush the spans not
/// yet exported.
pub fn init(settings: &LogSettings) {
    if let Err(error) = Telemetry::new(settings).install() {
        // The logs work; only the export is missing. Say so where the operator looks.
        eprintln!("telemetry: {error}; spans are not exported");
    }
}

/// Flushes and stops the span export (a no-op without an OTLP endpoint).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        // Errors here mean the collector is gone; there is nobody left to tell.
        let _ = provider.shutdown();
    }
}

/// Where spans go.
enum Export {
    /// Nowhere (the default).
    Off,
    /// To this URL (`FM_LOG__OTLP_ENDPOINT` with `/v1/traces` appended, as the standard
    /// variable would have it).
    To(String),
    /// Where the standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables say (the exporter reads them).
    Standard,
}

fn export_of(settings: &LogSettings) -> Export {
    if let Some(base) = settings.otlp_endpoint.as_deref().filter(|s| !s.is_empty()) {
        return Export::To(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let standard = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty()));
    if standard {
        Export::Standard
    } else {
        Export::Off
    }
}

/// The OTLP exporter could not be built (a malformed endpoint URL).
#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to the OTLP endpoint: {0}")]
pub struct ExportError(#[from] opentelemetry_otlp::ExporterBuildError);

/// A subscriber being put together: [`init`] for services; tests use it to capture log output
/// ([`Telemetry::with_writer`]) or finished spans ([`Telemetry::with_span_processor`]).
#[must_use]
pub struct Telemetry {
    settings: LogSettings,
    writer: Option<BoxMakeWriter>,
    provider: TracerProviderBuilder,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Logs to standard output as `settings` say; spans exported only if an endpoint is set.
    pub fn new(settings: &LogSettings) -> Self {
        Self {
            settings: settings.clone(),
            writer: None,
            provider: SdkTracerProvider::builder(),
        }
    }

    /// Writes log lines to `writer` instead of standard output.
    pub fn with_writer<W>(mut self, writer: W) -> Self
    where
        W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        self.writer = Some(BoxMakeWriter::new(writer));
        self
    }

    /// Keeps every finished span in `spans` as well (tests look at what was traced).
    pub fn with_captured_spans(self, spans: &CapturedSpans) -> Self {
        self.with_span_processor(spans.clone())
    }

    /// Hands every finished span to `processor` as well.
    pub fn with_span_processor(mut self, processor: impl SpanProcessor + 'static) -> Self {
        self.provider = self.provider.with_span_processor(processor);
        self
    }

    /// Installs the subscriber unless one is installed already (then nothing changes and the
    /// answer is `Ok(false)`).
    pub fn install(self) -> Result<bool, ExportError> {
        let Self {
            settings,
            writer,
            mut provider,
        } = self;
        let exporter = match export_of(&settings) {
            Export::Off => None,
            Export::To(endpoint) => Some(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(endpoint),
            ),
            Export::Standard => Some(opentelemetry_otlp::SpanExporter::builder().with_http()),
        };
        if let Some(exporter) = exporter {
            provider = provider.with_batch_exporter(exporter.build()?);
        }
        let provider = provider.with_resource(resource()).build();
        let traces = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("funeral-manager"))
            .with_filter(LevelFilter::INFO);
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(settings.filter.clone()));
        let writer = writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stdout));
        let logs = match settings.format {
            LogFormat::Json => fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer)
                .with_filter(filter)
                .boxed(),
            LogFormat::Pretty => fmt::layer().with_writer(writer).with_filter(filter).boxed(),
        };
        let installed = tracing_subscriber::registry()
            .with(traces)
            .with(logs)
            .try_init()
            .is_ok();
        if installed {
            opentelemetry::global::set_tracer_provider(provider.clone());
            let _ = PROVIDER.set(provider);
        }
        Ok(installed)
    }
}

/// `service.name` is the executable's name (`command-service`, ...) unless `OTEL_SERVICE_NAME`
/// says otherwise.
fn resource() -> Resource {
    let builder = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty()) {
        return builder.build();
    }
    let name = std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "funeral-manager".to_owned());
    builder.with_service_name(name).build()
}

/// Log output kept in memory, for tests: `Telemetry::new(..).with_writer(logs.clone())`.
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> fmt::MakeWriter<'w> for CapturedLogs {
    type Writer = Self;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

/// Finished spans kept in memory, for tests: [`Telemetry::with_captured_spans`].
#[derive(Debug, Clone, Default)]
pub struct CapturedSpans(Arc<Mutex<Vec<FinishedSpan>>>);

/// One finished span, with its ids as lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// All zeros for a root span.
    pub parent_span_id: String,
    /// Attributes (the span's fields) as text.
    pub attributes: Vec<(String, String)>,
}

impl FinishedSpan {
    /// The value of attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl CapturedSpans {
    /// The spans finished so far.
    pub fn spans(&self) -> Vec<FinishedSpan> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl SpanProcessor for CapturedSpans {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let finished = FinishedSpan {
            name: span.name.to_string(),
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: span.parent_span_id.to_string(),
            attributes: span
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect(),
        };
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(finished);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}
