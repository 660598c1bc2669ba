//! The framing of `POST /v1/proxy/exec`, both ways: a stream of frames, each one byte of
//! kind, a 4-byte big-endian payload length, then the payload.
//!
//! Request body (`application/vnd.nkmc.exec`): first a [`Kind::Request`] frame (the JSON
//! [`super::wire::ExecRequest`]), then any number of [`Kind::Stdin`] frames, then
//! optionally [`Kind::StdinEnd`]. The tool's stdin closes at `StdinEnd` or at the end of the
//! body. A client should send the stdin frames only once the answer's head (200) has arrived:
//! a refusal is answered at once and the connection closed, which would break a body still
//! being written.
//!
//! Response body (same media type, status 200 once the tool has started): [`Kind::Stdout`]
//! and [`Kind::Stderr`] frames as the tool writes (already masked), then exactly one
//! [`Kind::Exit`] frame (the JSON [`super::wire::ExitStatus`]) as the last frame. A body that
//! ends without it was cut off.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The media type of both bodies.
pub const MEDIA_TYPE: &str = "application/vnd.nkmc.exec";

/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Bytes before the payload.
const HEADER: usize = 5;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `R`: the JSON request (first frame of the request body).
    Request,
    /// `I`: bytes for the tool's stdin.
    Stdin,
    /// `C`: the caller's stdin ended.
    StdinEnd,
    /// `O`: bytes the tool wrote to stdout.
    Stdout,
    /// `E`: bytes the tool wrote to stderr.
    Stderr,
    /// `X`: how the run ended (last frame of the response).
    Exit,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Request => b'R',
            Kind::Stdin => b'I',
            Kind::StdinEnd => b'C',
            Kind::Stdout => b'O',
            Kind::Stderr => b'E',
            Kind::Exit => b'X',
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'R' => Kind::Request,
            b'I' => Kind::Stdin,
            b'C' => Kind::StdinEnd,
            b'O' => Kind::Stdout,
            b'E' => Kind::Stderr,
            b'X' => Kind::Exit,
            _ => return None,
        })
    }
}

/// A frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An unknown kind byte.
    #[error("exec frames: unknown frame kind 0x{0:02x}")]
    Kind(u8),
    /// A payload over [`MAX_PAYLOAD`].
    #[error("exec frames: a frame of {0} bytes is over the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    /// The stream ended inside a frame.
    #[error("exec frames: the stream ended inside a frame")]
    Truncated,
}

/// One frame, encoded.
pub fn encode(kind: Kind, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + payload.len());
    b.put_u8(kind.byte());
    b.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    b.put_slice(payload);
    b.freeze()
}

/// Frames of `payload`, split to respect [`MAX_PAYLOAD`].
pub fn encode_all(kind: Kind, payload: &[u8]) -> Vec<Bytes> {
    payload.chunks(MAX_PAYLOAD).map(|c| encode(kind, c)).collect()
}

/// Reads frames out of a byte stream that arrives in pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// Adds bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<(Kind, Bytes)>, FrameError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = Kind::from_byte(self.buf[0]).ok_or(FrameError::Kind(self.buf[0]))?;
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        self.buf.advance(HEADER);
        Ok(Some((kind, self.buf.split_to(len).freeze())))
    }

    /// At the end of the stream: an error if a frame was left unfinished.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let mut all = Vec::new();
        all.extend_from_slice(&encode(Kind::Stdout, b"hello"));
        all.extend_from_slice(&encode(Kind::Stderr, b""));
        all.extend_from_slice(&encode(Kind::Exit, br#"{"code":3}"#));
        for split in 1..all.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for piece in all.chunks(split) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            d.finish().unwrap();
            assert_eq!(got.len(), 3);
            assert_eq!(got[0], (Kind::Stdout, Bytes::from_static(b"hello")));
            assert_eq!(got[2].0, Kind::Exit);
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut d = Decoder::default();
        d.push(b"Z\0\0\0\0");
        assert_eq!(d.next_frame(), Err(FrameError::Kind(b'Z')));
        let mut d = Decoder::default();
        d.push(&[b'I', 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge(_))));
        let mut d = Decoder::default();
        d.push(&encode(Kind::Stdin, b"abc")[..6]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
        assert_eq!(encode_all(Kind::Stdout, &vec![0; MAX_PAYLOAD + 1]).len(), 2);
    }
}
