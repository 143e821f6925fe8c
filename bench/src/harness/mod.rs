//! What more than one bench uses, and nothing bench-specific. The dependency direction is
//! main → the benches → the harness → the load generator: a bench never imports another bench,
//! and nothing here imports a bench.
//!
//! - [`process`]: starting `agora serve` and reading its address, free ports, the host process
//!   stopped by SIGTERM, the OTLP sink and the `/metrics` scraper
//! - [`cpu`]: CPU seconds by process name (host, PostgreSQL, NATS, Redis, the bench)
//! - [`client`]: one keep-alive HTTP/1.1 connection and the closed loop of them
//! - [`backends`]: the production backends' URLs, and the check that they answer
//! - [`shop_host`]: the shop on them: the manifest, the host command, the run's token signer,
//!   a product, a cache-hit read, an order's body
//! - [`stats`]: medians, percentiles, µs since, the machine's load average

pub(crate) mod backends;
pub(crate) mod client;
pub(crate) mod cpu;
pub(crate) mod process;
pub(crate) mod shop_host;
pub(crate) mod stats;
