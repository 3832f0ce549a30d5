//! The KV example: `kv.v1.KVService` (wire-compatible with connect-plugin-go's kv example), an
//! in-memory implementation, and the two binaries `kv-plugin` and `kv-host`.

#[path = "gen/mod.rs"]
mod generated;

pub mod store;

pub use generated::kv::v1;
pub use store::MemoryStore;
