//! Where relayctl's figures come from: relayd's control socket, or, when
//! relayd is down, the pinned kernel maps (kernel state only). Every failure
//! is one line that says what to do.

use std::path::{Path, PathBuf};

use crate::{
    control::{
        Client, ClientError, Request,
        flows::{self, FlowDetail, FlowRef, FlowsReply},
    },
    dataplane::{CountersView, maps::FlowMaps},
};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "relayd is not running (no control socket at {socket}) and no maps are pinned at {pin} \
         (was relayd ever started with this pin_path?)"
    )]
    NothingThere { socket: PathBuf, pin: PathBuf },
    #[error("permission denied reading the maps pinned at {0} (relayctl needs root, like relayd)")]
    MapsPermission(PathBuf),
    #[error("reading the maps pinned at {0}: {1}")]
    Maps(PathBuf, String),
    #[error("relayd returned an unexpected reply: {0}")]
    Reply(String),
    #[error("no rule with {0}")]
    NoSuchFlow(FlowRef),
}

/// The control socket and the pin directory relayctl was pointed at.
pub struct Source {
    pub socket: PathBuf,
    pub pin_path: PathBuf,
}

/// Said once on stderr when the figures come from the pinned maps.
pub fn kernel_only_note(pin: &Path) -> String {
    format!(
        "relayd is not running: kernel state only (no calls, no userspace figures), read from the maps pinned at {}",
        pin.display()
    )
}

impl Source {
    pub fn call(&self, request: &Request) -> Result<serde_json::Value, ClientError> {
        Client::connect(&self.socket)?.call(request)
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, request: &Request) -> Result<T, SourceError> {
        let v = self.call(request)?;
        serde_json::from_value(v).map_err(|e| SourceError::Reply(e.to_string()))
    }

    /// The pinned maps, with the errors an operator can act on.
    pub fn open_maps(&self) -> Result<FlowMaps, SourceError> {
        if !nix::unistd::geteuid().is_root() {
            // bpffs and BPF_OBJ_GET need root; say so rather than "not pinned".
            return Err(SourceError::MapsPermission(self.pin_path.clone()));
        }
        if !self.pin_path.join(relay_common::maps::FLOWS).exists() {
            return Err(SourceError::NothingThere {
                socket: self.socket.clone(),
                pin: self.pin_path.clone(),
            });
        }
        FlowMaps::open_pinned(&self.pin_path)
            .map_err(|e| SourceError::Maps(self.pin_path.clone(), format!("{e:#}")))
    }

    /// Calls the socket; when relayd is down, `fallback` reads the maps.
    fn or_maps<T>(
        &self,
        request: &Request,
        fallback: impl FnOnce(&FlowMaps) -> Result<T, SourceError>,
    ) -> Result<T, SourceError>
    where
        T: serde::de::DeserializeOwned,
    {
        match self.typed(request) {
            Err(SourceError::Client(ClientError::NotRunning(_))) => fallback(&self.open_maps()?),
            other => other,
        }
    }

    pub fn flows(&self) -> Result<FlowsReply, SourceError> {
        self.or_maps(&Request::Flows, |m| Ok(flows::flows_from_maps(m)))
    }

    pub fn flow(&self, which: &FlowRef) -> Result<FlowDetail, SourceError> {
        self.or_maps(
            &Request::Flow {
                flow: which.clone(),
            },
            |m| {
                flows::flow_from_maps(m, which)
                    .ok_or_else(|| SourceError::NoSuchFlow(which.clone()))
            },
        )
    }

    /// Global counters and whether they came from the pinned maps.
    pub fn counters(&self) -> Result<(CountersView, bool), SourceError> {
        match self.typed::<CountersView>(&Request::Counters) {
            Ok(c) => Ok((c, false)),
            Err(SourceError::Client(ClientError::NotRunning(_))) => Ok((
                CountersView::from_pinned(self.open_maps()?.counters()),
                true,
            )),
            Err(e) => Err(e),
        }
    }
}
