//! A Kubernetes operator and REST gateway that turn a cluster running KubeVirt into a VPS
//! provider.
//!
//! The layers, each importing only those below it (`tests/layers.rs` keeps it so):
//!
//! 1. [`api`]: the `vps.org/v1alpha1` custom resources and the names the parts share
//!    ([`api::contract`]). Imports nothing of ours.
//! 2. Shared leaves, importing at most [`api`]: [`kubevirt`] (KubeVirt's, CDI's and the
//!    snapshotter's objects), [`ids`] (the cluster-wide integer ids), [`credit_ledger`] (what
//!    each account's servers commit of its credit), [`address_pool`] (a location's address
//!    pools as arithmetic), [`tokens`] (API
//!    tokens), [`watch_cache`] (caches kept from a watch), [`preflight`] (start-up checks),
//!    [`flags`], [`shutdown`], [`timestamps`], [`memory`], [`probe`] (`vps-operator check`),
//!    [`telemetry`] (log lines, shared metrics).
//! 3. The parts, which never import each other: [`operator`] (VpsServer → VirtualMachine),
//!    [`gateway`] (the REST API), [`simulator`] (KubeVirt's hosts, for tests and local runs),
//!    and [`controlplane`] (a real control plane built from source) with [`testbed`] (what
//!    a test or local cluster needs installed).
//! 4. The wiring: [`local`] (everything on one machine) and the `vps-operator` binary.
#![deny(rust_2018_idioms)]
// kube-derive's repeated `printcolumn(type_ = ...)` attributes trip this lint.
#![allow(clippy::duplicated_attributes)]

pub mod address_pool;
pub mod api;
pub mod billing;
pub mod client;
pub mod controlplane;
pub mod credit_ledger;
pub mod flags;
pub mod gateway;
pub mod ids;
pub mod kubevirt;
pub mod local;
pub mod memory;
pub mod operator;
pub mod preflight;
pub mod probe;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;
pub mod testbed;
pub mod timestamps;
pub mod tokens;
pub mod watch_cache;
