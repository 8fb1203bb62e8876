//! Kafka request frames: a 4-byte big-endian length, then that many bytes (the request header
//! and body). A client may send many requests without waiting (pipelining); the reader hands
//! them out one at a time, in order.

use bytes::{Buf, Bytes, BytesMut};

/// The largest request accepted (Kafka's `socket.request.max.bytes` is 100 MiB; Starling keeps
/// requests to 8 MiB so that one connection cannot hold much memory — a producer's request is
/// at most `max.request.size`, 1 MiB by default). A larger one closes the connection, as Kafka
/// does.
pub const MAX_FRAME: usize = 8 << 20;

/// A frame Starling will not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a request of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("a request with a negative length ({0})")]
    Negative(i32),
}

/// Cuts a byte stream into request frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// The buffer to read the stream into (bytes appended at its end).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received that are not a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame (without its length), `None` if more bytes are needed. After an
    /// error the stream cannot be read on.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len < 0 {
            return Err(FrameError::Negative(len));
        }
        let len = len as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_come_out_whole_and_in_order_however_the_stream_is_cut() {
        let mut stream = framed(b"first");
        stream.extend(framed(b""));
        stream.extend(framed(&[7; 300]));
        for cut in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                r.feed(chunk);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, vec![b"first".to_vec(), vec![], vec![7; 300]], "cut {cut}");
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn oversized_and_negative_lengths_are_refused_before_any_body_arrives() {
        let mut r = FrameReader::new();
        r.feed(&((MAX_FRAME + 1) as i32).to_be_bytes());
        assert_eq!(r.next_frame(), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        let mut r = FrameReader::new();
        r.feed(&(-5i32).to_be_bytes());
        assert_eq!(r.next_frame(), Err(FrameError::Negative(-5)));
        let mut r = FrameReader::new();
        r.feed(&(MAX_FRAME as i32).to_be_bytes());
        assert_eq!(r.next_frame(), Ok(None));
    }
}
