//! Seeding reads the store's [`Hit`]: librqbit gets a storage over the open file the store
//! handed out, never the cache file's path. So a NAR evicted while it is seeded stays
//! readable until the engine drops its torrent (the store tells it, `Engine::forget`), and
//! librqbit never creates, resizes or writes a file in the cache (its filesystem storage
//! opens the file read-write, sets its length, and would write pieces that fail its check).

use std::path::Path;

use anyhow::{bail, ensure};
use librqbit::storage::{BoxStorageFactory, StorageFactory, StorageFactoryExt, TorrentStorage};
use librqbit::{ManagedTorrentShared, TorrentMetadata};

use crate::store::Hit;

/// Makes the [`Seed`] of one torrent: the single-file torrent of a hit (`meta.rs`).
#[derive(Clone)]
pub(super) struct SeedFactory(pub Hit);

impl StorageFactory for SeedFactory {
    type Storage = Seed;

    fn create(&self, _: &ManagedTorrentShared, meta: &TorrentMetadata) -> anyhow::Result<Seed> {
        match &meta.file_infos[..] {
            [file] if file.len == self.0.len() => Ok(Seed(self.0.clone())),
            _ => bail!("a seeded torrent is one file: the NAR it was made of"),
        }
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

/// Read-only storage over a hit.
pub(super) struct Seed(Hit);

impl TorrentStorage for Seed {
    fn init(&mut self, _: &ManagedTorrentShared, _: &TorrentMetadata) -> anyhow::Result<()> {
        Ok(())
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        ensure!(file_id == 0, "no file {file_id} in a seeded NAR");
        Ok(self.0.read_exact_at(buf, offset)?)
    }

    fn pwrite_all(&self, _: usize, _: u64, _: &[u8]) -> anyhow::Result<()> {
        bail!("a seeded NAR is read-only: the cache holds it verified")
    }

    fn remove_file(&self, _: usize, _: &Path) -> anyhow::Result<()> {
        Ok(()) // the store owns the file
    }

    fn remove_directory_if_empty(&self, _: &Path) -> anyhow::Result<()> {
        Ok(())
    }

    fn ensure_file_length(&self, _: usize, length: u64) -> anyhow::Result<()> {
        ensure!(
            length == self.0.len(),
            "a seeded NAR has the torrent's length"
        );
        Ok(())
    }

    fn take(&self) -> anyhow::Result<Box<dyn TorrentStorage>> {
        Ok(Box::new(Seed(self.0.clone())))
    }
}
