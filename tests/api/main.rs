//! The service end to end: the real app on port 0 against a real redis-server, the real
//! precompute models and the classic engine, ffmpeg-encoded videos checked with ffprobe.

mod auth;
mod avatar;
mod demo;
mod deploy;
mod devices;
mod docs;
mod hardening;
mod health;
mod helpers;
mod hls;
mod idle;
mod inputs;
mod lifecycle;
mod metrics;
mod openapi;
mod outage;
mod overload;
mod private_redis;
mod remote;
mod seed_fields;
mod single_flight;
mod stale;
mod storage;
mod stream;
mod vip;
mod webhooks;
mod workers;
