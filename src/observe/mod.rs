//! What the gateway tells about itself while it runs: the Prometheus metrics registry, the
//! calls in progress, readiness, and the hook every finished call goes through (metrics and
//! history). Lower layers (the pipeline, the call task, the server) report here; the admin API
//! reads it. It depends on nothing above the call and dialog cores.

pub mod finished;
pub mod live;
pub mod metrics;
pub mod readiness;
