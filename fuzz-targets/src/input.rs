//! Structured inputs cut out of the fuzzer's bytes. Formats are simple enough that a seed is a
//! real encoding with a few framing bytes around it, so the fuzzer mutates real messages.

/// Splits `data` into `len (u16, big-endian) ‖ bytes` chunks; the last one may be short (it takes
/// what is left).
pub(crate) fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = data.split_first_chunk::<2>() {
        let n = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (chunk, rest) = rest.split_at(n);
        out.push(chunk);
        data = rest;
    }
    out
}

/// Writes `bytes` as one chunk for [`chunks`] (at most 65535 bytes of it).
pub(crate) fn chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&bytes[..n]);
}

/// Splits `data` into `op (u8) ‖ len (u16, big-endian) ‖ bytes` steps; the last may be short.
pub(crate) fn steps(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((&op, rest)) = data.split_first() {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            out.push((op, &[][..]));
            break;
        };
        let n = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (payload, rest) = rest.split_at(n);
        out.push((op, payload));
        data = rest;
    }
    out
}

/// Writes one step for [`steps`].
pub(crate) fn step(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    out.push(op);
    chunk(out, payload);
}

/// A deterministic pseudo-random sequence from the input itself (FNV-1a then xorshift), for
/// choices the fuzzer need not steer, such as where to split a stream.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn of(data: &[u8]) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Rng(h | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `1..=max` (max >= 1).
    pub(crate) fn size(&mut self, max: usize) -> usize {
        1 + (self.next() % max as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_steps_read_what_was_written() {
        let mut out = Vec::new();
        chunk(&mut out, b"ab");
        chunk(&mut out, b"");
        chunk(&mut out, b"cde");
        assert_eq!(chunks(&out), vec![&b"ab"[..], b"", b"cde"]);
        assert_eq!(chunks(&out[..out.len() - 1]), vec![&b"ab"[..], b"", b"cd"]);
        let mut out = Vec::new();
        step(&mut out, 7, b"xy");
        step(&mut out, 1, b"");
        assert_eq!(steps(&out), vec![(7, &b"xy"[..]), (1, &b""[..])]);
        assert_eq!(steps(&[3]), vec![(3, &b""[..])]);
    }
}
