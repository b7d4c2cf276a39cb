//! Traces of requests: the host's `tracing` spans (a request, its component
//! call, each SQL statement, each call to another component) exported over
//! OTLP/HTTP when `[telemetry] otlp_endpoint` is set, and W3C trace context
//! (`traceparent`, `tracestate`) read from requests a host may believe and
//! written on those it sends to other hosts. Nothing is exported by default.
//!
//! The exporter is a layer beside the log's ([`layer`]), made from the
//! config before the log is set up.

use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::{Filtered, Targets};

use crate::config::TelemetryConfig;

/// The W3C trace context headers.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// How often finished spans are sent.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// The layer that exports the host's spans: its own (target `corral`), at
/// `info` and above.
pub type Layer =
    Filtered<tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::Tracer>, Targets, Registry>;

/// The layer that exports spans as `config` says, as host `node`, and what
/// flushes them when dropped; nothing without an endpoint, and then no
/// span is made at all. Made before the runtime: the exporter's HTTP
/// client runs one of its own.
pub fn layer(config: &TelemetryConfig, node: &str) -> anyhow::Result<Option<(Layer, Exporting)>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    // The exporter's client speaks TLS, with the provider the OCI client
    // uses too (whichever installs it first).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot export traces to {endpoint}: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(EXPORT_EVERY).build())
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", node.to_string()))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("corral"))
        .with_filter(Targets::new().with_target("corral", tracing::Level::INFO));
    Ok(Some((layer, Exporting(provider))))
}

/// Spans being exported; the last ones are sent when this is dropped.
pub struct Exporting(SdkTracerProvider);

impl Drop for Exporting {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Whether `metadata` is one of the host's spans, which only traces show
/// (the log's lines carry what they need as fields of their own).
pub fn is_hosts_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target().starts_with("corral")
}

/// Makes `span` continue the trace `headers` carry.
pub fn continue_from(span: &tracing::Span, headers: &HeaderMap) {
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(context);
}

/// Writes `span`'s trace context into `headers` (nothing if it has none),
/// replacing any there.
pub fn carry(span: &tracing::Span, headers: &mut HeaderMap) {
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeadersMut(headers));
}

/// `span`'s `traceparent`, if it is part of a trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut headers = HeaderMap::new();
    carry(span, &mut headers);
    headers.get(TRACEPARENT)?.to_str().ok().map(str::to_string)
}

/// Links `span` to the span `traceparent` names (the request that
/// published an event its handler handles), if it names one.
pub fn link(span: &tracing::Span, traceparent: &str) {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(traceparent) {
        headers.insert(TRACEPARENT, value);
    }
    let context = TraceContextPropagator::new().extract(&Headers(&headers));
    let linked = opentelemetry::trace::TraceContextExt::span(&context)
        .span_context()
        .clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// Whether `name` is a trace context header, which guests neither see
/// (but `traceparent` on a `wasi:http` request, the host's) nor set.
pub fn is_trace_header(name: &HeaderName) -> bool {
    is_trace_name(name.as_str())
}

/// [`is_trace_header`], for a name in any case (an event's headers).
pub fn is_trace_name(name: &str) -> bool {
    name.eq_ignore_ascii_case(TRACEPARENT.as_str()) || name.eq_ignore_ascii_case(TRACESTATE.as_str())
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}
