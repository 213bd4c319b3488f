//! relay's control plane.
pub mod ebpf;
