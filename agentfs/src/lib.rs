//! agentfs: how an API becomes files.
//!
//! - [`spec`] ingests API documents (OpenAPI 3.0 and 3.1) into one validated
//!   [`spec::ServiceSpec`].
//! - [`tree`] turns a spec into the virtual tree of DESIGN's rules (`models` is a
//!   file, `models.d/` its children) and resolves names to operations.
//! - [`path`] is the one canonical path form that policy and execution share.
//! - [`skill`] and [`readme`] generate the files that teach an agent the layout.
//! - [`wire`] holds the types that cross gatewayd's socket API.
//! - [`panic`]: the panic hook of the nkmc programs (never prints a panic's message).
//! - [`client`] (feature `client`) is the HTTP-over-Unix-socket client for gatewayd.

pub mod panic;
pub mod path;
pub mod readme;
pub mod skill;
pub mod spec;
pub mod tree;
pub mod wire;

#[cfg(feature = "client")]
pub mod client;
