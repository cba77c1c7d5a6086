//! Generated gRPC types and services of `capkv.v1` (from `proto/capkv.proto`).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("capkv.v1");

/// The encoded descriptor set of `capkv.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capkv_descriptor.bin"));
