//! One request frame decoded into kafka-protocol's request types, and an answer encoded into a
//! response frame. Nothing here trusts the frame: an unknown API key, a version not served, or
//! a body that does not decode is an error naming what was wrong (the connection then closes,
//! as Kafka closes it).

use bytes::{BufMut, Bytes, BytesMut};
pub use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::versions;

/// What the answer needs of a request's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A request of a served API at a served version.
    Request(Header, Box<RequestKind>),
    /// ApiVersions at a version not served: answer with [`unsupported_api_versions`].
    ApiVersionsTooNew(Header),
}

/// Why a frame is not a request Starling serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("a request of {0} bytes is too short for a request header")]
    Short(usize),
    #[error("unknown API key {key} (correlation id {correlation_id})")]
    UnknownApi { key: i16, correlation_id: i32 },
    #[error("{api:?} is not served by Starling (correlation id {correlation_id}); ApiVersions lists what is")]
    NotServed { api: ApiKey, correlation_id: i32 },
    #[error("{api:?} version {version} is not served (versions {min} to {max} are); ApiVersions lists them")]
    Version { api: ApiKey, version: i16, min: i16, max: i16, correlation_id: i32 },
    #[error("a malformed {api:?} v{version} request: {reason}")]
    Malformed { api: ApiKey, version: i16, reason: String },
}

/// Decodes one request frame (without its length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<Decoded, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Short(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| DecodeError::UnknownApi { key, correlation_id })?;
    let Some((min, max)) = versions::served(api) else {
        return Err(DecodeError::NotServed { api, correlation_id });
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            // The client is newer than this broker: it reads the version-0 answer and retries.
            return Ok(Decoded::ApiVersionsTooNew(Header {
                api_key: api,
                version: 0,
                correlation_id,
                client_id: None,
            }));
        }
        return Err(DecodeError::Version { api, version, min, max, correlation_id });
    }
    let malformed = |reason: String| DecodeError::Malformed { api, version, reason };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| malformed(format!("{e:#}")))?;
    let body =
        RequestKind::decode(api, &mut frame, version).map_err(|e| malformed(format!("{e:#}")))?;
    Ok(Decoded::Request(
        Header {
            api_key: api,
            version,
            correlation_id,
            client_id: header.client_id.map(|c| c.to_string()),
        },
        Box::new(body),
    ))
}

/// Encodes the answer to the request `header` describes: length, response header, body.
pub fn encode_response(header: &Header, body: &ResponseKind) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let mut h = ResponseHeader::default();
    h.correlation_id = header.correlation_id;
    h.encode(&mut buf, header.api_key.response_header_version(header.version))
        .map_err(|e| format!("{:?} v{} response header: {e:#}", header.api_key, header.version))?;
    body.encode(&mut buf, header.version)
        .map_err(|e| format!("{:?} v{} response: {e:#}", header.api_key, header.version))?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// The answer to an ApiVersions request at a version not served: version 0, error
/// `UNSUPPORTED_VERSION` (35), and the served list.
pub fn unsupported_api_versions(header: &Header) -> Result<Bytes, String> {
    let body =
        versions::api_versions(kafka_protocol::error::ResponseError::UnsupportedVersion.code());
    encode_response(header, &ResponseKind::ApiVersions(body))
}
