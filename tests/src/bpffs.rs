//! A private bpffs instance: somewhere to pin maps that nothing else sees.
//!
//! relay's maps are declared pinned by name, so loading the object pins them
//! (aya's default directory is `/sys/fs/bpf`, where a running relayd keeps
//! its own). Each test mounts a fresh bpffs on its own directory instead:
//! every load starts with new, empty maps, and nothing outlives the guard.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// A bpffs mounted on a fresh directory; unmounted and removed on drop.
#[derive(Debug)]
pub struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    /// Mounts a new bpffs instance on `$TMPDIR/relaytest-bpffs-<pid>-<n>`.
    pub fn mount_private() -> Result<Self> {
        let path = std::env::temp_dir().join(crate::unique_name("relaytest-bpffs"));
        fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        if let Err(e) = mount(
            Some("bpf"),
            &path,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            let _ = fs::remove_dir(&path);
            return Err(e).with_context(|| format!("mount bpffs on {}", path.display()));
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unpins `name`. Loaded objects keep their maps (their file
    /// descriptors hold them); only the name goes. (A fresh bpffs may also
    /// hold the kernel's own `maps.debug` and `progs.debug`, which stay.)
    pub fn unpin(&self, name: &str) -> io::Result<()> {
        // Global data (`.rodata`, `.bss`) is a map aya never pins.
        if name.starts_with('.') {
            return Ok(());
        }
        fs::remove_file(self.path.join(name))
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // The last reference to the instance goes with the mount, and every
        // pin in it with the instance.
        if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
            eprintln!("bpffs {}: umount: {e}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("bpffs {}: rmdir: {e}", self.path.display());
        }
    }
}
