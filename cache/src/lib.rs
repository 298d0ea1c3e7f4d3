//! vipavatar-cache: the Redis key schema and TTL tiers of DESIGN.md, versioned bincode values
//! (an old value reads as a miss, never a crash), a namespace prefix, and hit/miss counters kept
//! in Redis so all instances share them.

pub mod codec;
pub mod fragments;
pub mod ids;
pub mod keys;
pub mod server;
pub mod store;
pub mod ttl;

pub use fragments::{FragmentReader, FragmentStreams, IndexEntry, Piece, StreamEntry};
pub use ids::{AudioHash, IdError, ImageHash, OptionsHash, SessionId};
pub use keys::{Key, Kind, Namespace, Tier};
pub use store::{scan, Cache, CacheConfig, CacheError, CacheStats};
pub use ttl::Ttls;
