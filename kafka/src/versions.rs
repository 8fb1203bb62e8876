//! The Kafka APIs Starling serves, and at which versions. ApiVersions advertises exactly these;
//! a request for any other API or version closes the connection (as Kafka does), except
//! ApiVersions itself, which is answered at version 0 with `UNSUPPORTED_VERSION` and this list so
//! that the client retries at a version both sides know.
//!
//! Why these ranges: Produce from 3 (record batch v2 only), Fetch 4 to 12 (13 would address
//! topics by id), ListOffsets to 6 (7 adds the max-timestamp query), JoinGroup to 4 (5 brings
//! static membership, which Starling does not do).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// `(API, lowest version, highest version)` served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 2, 7),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
];

/// The versions of `api` served, if it is.
pub fn served(api: ApiKey) -> Option<(i16, i16)> {
    SERVED.iter().find(|(k, _, _)| *k == api).map(|(_, lo, hi)| (*lo, *hi))
}

/// An ApiVersions answer listing [`SERVED`], with `error_code`.
pub fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error_code;
    r.api_keys = SERVED
        .iter()
        .map(|(k, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *lo;
            v.max_version = *hi;
            v
        })
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_one_kafka_protocol_can_decode() {
        for (k, lo, hi) in SERVED {
            let valid = k.valid_versions();
            assert!(lo <= hi, "{k:?}");
            assert!(*lo >= valid.min && *hi <= valid.max, "{k:?} {lo}..={hi} vs {valid}");
        }
    }
}
