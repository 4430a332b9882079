//! The pipeline's web console: what every hop is doing, read live from the real systems, with a
//! JSON twin of every page under `/api/…`.
//!
//! - [`cli`]: options and the run.
//! - [`web`]: the HTTP server, pages and their JSON twins, the one write action (connector and
//!   task restarts) behind `--enable-actions` and a cross-site request guard.
//! - [`collector`]: the overview's periodic look at every system and its 15-minute history.
//! - Backends, each bounded by a timeout so a page renders when a service is down: [`wire`]
//!   (Kafka's wire protocol: metadata, offsets, groups, the KRaft quorum, configs), [`messages`]
//!   (the message browser, on librdkafka), [`connect`] (Kafka Connect's REST API), [`postgres`],
//!   [`cassandra`].
//! - Presentation: [`chart`] (inline SVG), [`format`], [`redact`] (no secret on any page),
//!   [`verify_report`] (the verifier's last result).

pub mod cassandra;
pub mod chart;
pub mod cli;
pub mod collector;
pub mod connect;
pub mod format;
pub mod messages;
pub mod postgres;
pub mod redact;
pub mod verify_report;
pub mod web;
pub mod wire;
