//! A Kubernetes operator and REST gateway that turn a cluster running KubeVirt into a VPS
//! provider.
//!
//! - [`api`]: the `vps.org/v1alpha1` custom resources.
//! - [`controlplane`]: builds and starts a real control plane (etcd, kube-apiserver,
//!   kube-controller-manager) for tests and the local run.
//! - [`gateway`]: the REST gateway (the VPS API) and [`tokens`], its API tokens.
//! - [`ids`]: the cluster-wide integer id allocator shared by operator and gateway.
//! - [`testbed`]: the CRDs such a control plane needs (ours, KubeVirt's, CDI's).
//! - [`local`]: the all-in-one local run.
#![deny(rust_2018_idioms)]
// kube-derive's repeated `printcolumn(type_ = ...)` attributes trip this lint.
#![allow(clippy::duplicated_attributes)]

pub mod api;
pub mod controlplane;
pub mod gateway;
pub mod ids;
pub mod kubevirt;
pub mod local;
pub mod memory;
pub mod operator;
pub mod simulator;
pub mod testbed;
pub mod tokens;
