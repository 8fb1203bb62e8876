//! The metadata service's snapshot files ([`starling_store_format::snapshot_file`]).

use starling_store_format::snapshot_file::{decode, encode};

/// Most bytes a fuzzed header may claim (a zstd frame expands up to thousands of times).
const LIMIT: u64 = 1 << 20;

/// Decodes a snapshot file; one that decodes encodes again to a file that decodes the same.
pub fn meta_snapshot_file(data: &[u8]) {
    match decode(data.to_vec(), LIMIT) {
        Ok((zxid, snap)) => {
            assert!(snap.len() as u64 <= LIMIT);
            let again = encode(zxid, &snap).expect("encodes");
            assert_eq!(decode(again, LIMIT).expect("decodes again"), (zxid, snap));
        }
        Err(e) => assert!(!e.is_empty()),
    }
}
