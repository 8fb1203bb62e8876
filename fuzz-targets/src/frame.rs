//! The frame decoder against a model of the format, fed the same stream whole, byte by byte and
//! in random pieces; then every body that decodes, round-tripped.

use serde::de::DeserializeOwned;
use serde::Serialize;
use starling_wire::{
    encode, Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN, MAX_REQUEST_BODY,
    MAX_RESPONSE_BODY, VERSION,
};

use crate::input::Rng;

/// What a decoder yields from a stream: frames, errors, and at the end what
/// [`FrameDecoder::finish`] says.
type Events = Vec<Result<Frame, FrameError>>;

/// The largest frame any kind allows: what a decoder may hold buffered at most.
const MAX_FRAME: usize = HEADER_LEN + max(MAX_REQUEST_BODY, MAX_RESPONSE_BODY);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Fuzz target `frame`: `data` is a byte stream as received on a QUIC stream.
///
/// Checks: the decoder never panics; it yields exactly what [`model`] (the format as documented,
/// read from the whole stream at once) says, however the stream is split into feeds; after it
/// asks for more bytes it holds less than one maximal frame; a fatal error repeats; every body
/// that decodes as a request or response encodes back to a frame that decodes to the same
/// message, and that encoding is canonical (encoding it again gives the same bytes).
pub fn frame(data: &[u8]) {
    let expected = model(data);
    let whole = decode_stream(data, std::iter::once(data.len()));
    assert_eq!(whole, expected, "the decoder disagrees with the model, stream fed whole");
    let bytewise = decode_stream(data, std::iter::repeat_n(1, data.len()));
    assert_eq!(bytewise, expected, "fed byte by byte, the decoder yields other frames");
    let mut rng = Rng::of(data);
    let pieces = std::iter::from_fn(move || Some(rng.size(32)));
    assert_eq!(
        decode_stream(data, pieces),
        expected,
        "fed in pieces, the decoder yields other frames"
    );
    for frame in whole.iter().flatten() {
        check_body(frame);
    }
}

/// Feeds `data` in pieces of the given sizes, popping every frame after each feed.
fn decode_stream(data: &[u8], sizes: impl IntoIterator<Item = usize>) -> Events {
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = sizes.into_iter();
    while pos < data.len() {
        let end = (pos + sizes.next().unwrap_or(data.len())).min(data.len());
        dec.feed(&data[pos..end]);
        pos = end;
        loop {
            match dec.decode() {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => {
                    assert!(
                        dec.buffered() < MAX_FRAME,
                        "{} bytes buffered, more than one frame",
                        dec.buffered()
                    );
                    break;
                }
                Err(e) if e.is_fatal() => {
                    assert!(!e.to_string().is_empty());
                    assert_eq!(dec.decode(), Err(e.clone()), "a fatal error must repeat");
                    out.push(Err(e));
                    return out;
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    out.push(Err(e));
                }
            }
        }
    }
    if let Err(e) = dec.finish() {
        out.push(Err(e));
    }
    out
}

/// The format as `starling_wire::frame` documents it, read from the whole stream: frames in
/// order; an oversized frame is reported and skipped; a bad version, kind or length ends the
/// stream; a stream that ends inside a frame ends with [`FrameError::Truncated`].
pub(crate) fn model(data: &[u8]) -> Events {
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        let Some((head, after)) = rest.split_first_chunk::<HEADER_LEN>() else {
            if !rest.is_empty() {
                let needed = match rest.first_chunk::<4>() {
                    Some(len) => 4 + u32::from_be_bytes(*len) as usize,
                    None => HEADER_LEN,
                };
                out.push(Err(FrameError::Truncated { buffered: rest.len(), needed }));
            }
            return out;
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if head[4] != VERSION {
            out.push(Err(FrameError::UnsupportedVersion { found: head[4] }));
            return out;
        }
        let kind = match head[5] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            3 => FrameKind::OneWay,
            found => {
                out.push(Err(FrameError::UnknownKind { found }));
                return out;
            }
        };
        let Some(body_len) = (len as usize).checked_sub(HEADER_LEN - 4) else {
            out.push(Err(FrameError::LengthTooShort { len }));
            return out;
        };
        let mut id = [0; 8];
        id.copy_from_slice(&head[6..]);
        let id = u64::from_be_bytes(id);
        if body_len > after.len() && body_len <= kind.max_body_len() {
            out.push(Err(FrameError::Truncated { buffered: rest.len(), needed: 4 + len as usize }));
            return out;
        }
        if body_len > kind.max_body_len() {
            let limit = kind.max_body_len();
            out.push(Err(FrameError::TooLarge { kind, id, len: body_len, limit }));
            if body_len > after.len() {
                // The stream ended inside the oversized frame: it was left half-received.
                out.push(Err(FrameError::Truncated {
                    buffered: rest.len(),
                    needed: 4 + len as usize,
                }));
                return out;
            }
        } else {
            let body = after[..body_len].to_vec().into();
            out.push(Ok(Frame { kind, id, body }));
        }
        rest = &after[body_len..];
    }
}

/// Decodes the body the way a node or client does, and round-trips what decodes.
fn check_body(frame: &Frame) {
    match frame.kind {
        FrameKind::Request | FrameKind::OneWay => {
            assert!(matches!(frame.response(), Err(FrameError::UnexpectedKind { .. })));
            if let Ok(req) = frame.request() {
                round_trip(frame, &req, Frame::request);
                crate::message::check_request(&req);
            }
        }
        FrameKind::Response => {
            assert!(matches!(frame.request(), Err(FrameError::UnexpectedKind { .. })));
            if let Ok(resp) = frame.response() {
                round_trip(frame, &resp, Frame::response);
                crate::message::check_response(&resp);
            }
        }
    }
}

/// `msg` (decoded from `frame`) encoded as a frame of the same kind and id decodes to the same
/// message, and that encoding is canonical.
fn round_trip<T>(frame: &Frame, msg: &T, body: fn(&Frame) -> Result<T, FrameError>)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut out = Vec::new();
    match encode(&mut out, frame.kind, frame.id, msg) {
        Ok(()) => {}
        // A message can encode larger than it came (an integer array where a bin is written).
        Err(FrameError::TooLarge { .. }) => return,
        Err(e) => panic!("a decoded message does not encode: {e}"),
    }
    let mut dec = FrameDecoder::new();
    dec.feed(&out);
    let again = dec.decode().expect("re-encoded frame").expect("a whole frame");
    assert_eq!((again.kind, again.id), (frame.kind, frame.id));
    assert_eq!(&body(&again).expect("re-encoded body decodes"), msg, "round trip changed it");
    assert_eq!(dec.decode(), Ok(None));
    assert_eq!(dec.finish(), Ok(()));
    let mut twice = Vec::new();
    encode(&mut twice, frame.kind, frame.id, &body(&again).expect("decodes")).expect("encodes");
    assert_eq!(twice, out, "the encoding is not canonical");
}
