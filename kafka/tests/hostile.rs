//! Frames a client could send that are not requests Starling serves: each is refused with an
//! error naming what was wrong, never a panic or an abort.

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use starling_kafka::codec::{decode_request, DecodeError, Decoded};

/// A version-1 request header (correlation id 7, null client id), then `body`.
fn request(key: i16, version: i16, body: &[u8]) -> Bytes {
    let mut v = key.to_be_bytes().to_vec();
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&7i32.to_be_bytes());
    v.extend_from_slice(&(-1i16).to_be_bytes());
    v.extend_from_slice(body);
    Bytes::from(v)
}

#[test]
fn a_request_claiming_two_billion_array_elements_is_refused_without_reserving_them() {
    // Metadata v4: topics (array of 2^31 - 1 entries claimed, none sent), then the
    // auto-creation flag. kafka-protocol as published reserves room for every claimed element
    // up front (about 137 GB here) and the process aborts; the patched decoder refuses it.
    let mut body = i32::MAX.to_be_bytes().to_vec();
    body.push(0);
    match decode_request(request(ApiKey::Metadata as i16, 4, &body)) {
        Err(DecodeError::Malformed { api: ApiKey::Metadata, version: 4, .. }) => {}
        other => panic!("expected a malformed request, got {other:?}"),
    }
    // The same in a flexible version (compact array: the count is a varint).
    let mut body = vec![0xff, 0xff, 0xff, 0xff, 0x07];
    body.push(0);
    let mut frame = request(ApiKey::Metadata as i16, 12, &[]).to_vec();
    frame.push(0); // the flexible header's tagged fields
    frame.extend_from_slice(&body);
    assert!(matches!(decode_request(Bytes::from(frame)), Err(DecodeError::Malformed { .. })));
}

#[test]
fn unknown_keys_versions_not_served_and_short_frames_are_named() {
    assert_eq!(decode_request(Bytes::from_static(&[0, 3, 0])), Err(DecodeError::Short(3)));
    assert_eq!(
        decode_request(request(999, 0, &[])),
        Err(DecodeError::UnknownApi { key: 999, correlation_id: 7 })
    );
    assert!(matches!(
        decode_request(request(ApiKey::Produce as i16, 1, &[])),
        Err(DecodeError::Version { api: ApiKey::Produce, version: 1, min: 3, max: 9, .. })
    ));
    assert!(matches!(
        decode_request(request(ApiKey::DeleteRecords as i16, 0, &[])),
        Err(DecodeError::NotServed { api: ApiKey::DeleteRecords, .. })
    ));
    // ApiVersions newer than served: answered (at version 0) so the client can retry lower.
    assert!(matches!(
        decode_request(request(ApiKey::ApiVersions as i16, 99, &[])),
        Ok(Decoded::ApiVersionsTooNew(_))
    ));
    // A served request whose body stops short.
    assert!(matches!(
        decode_request(request(ApiKey::Produce as i16, 3, &[0, 1])),
        Err(DecodeError::Malformed { .. })
    ));
}
