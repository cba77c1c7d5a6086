//! openraft's storage test suite against the WAL log store and the sled state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::{NodeId, TypeConfig};
use crate::storage::Flusher;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let db = crate::storage::open(dir.path()).expect("a fresh database opens");
        let flusher = Flusher::durable(db, dir.path());
        let log = LogStore::open(&dir.path().join("wal")).expect("a fresh Raft log opens");
        let sm = StateMachineStore::open(&flusher).expect("state machine trees open");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_wal_and_sled() {
    Suite::test_all(SledStoreBuilder).expect("openraft's storage suite passes");
}
