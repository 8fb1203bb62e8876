//! The bytes a Starling node keeps on disk, and how they are read back: the stored form of a
//! record and the layout of data and hint keys ([`record`]), and the small files of a node's data
//! directory ([`datadir`]), the metadata service's snapshot files ([`snapshot_file`]) and journal ([`meta_journal`]).
//!
//! IO contract: this crate does no IO. `starlingd` reads and writes the bytes (RocksDB, files);
//! every function here that takes bytes from disk checks them and refuses what is not valid with
//! an error that says what is wrong. Nothing here panics on the bytes it is given, however
//! corrupt: the fuzz targets in `fuzz/` hold it to that.

pub mod datadir;
pub mod meta_journal;
pub mod record;
pub mod snapshot_file;
