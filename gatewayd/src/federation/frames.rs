//! A lender's answer streamed in signed frames, so a large body goes from the upstream to
//! the borrower as it arrives instead of being read whole and signed once.
//!
//! The answer's headers are signed as usual (see [`super::sign`]) over the body [`MARKER`],
//! and `x-nkmc-body: frames-v1` says the body is a sequence of frames:
//!
//! ```text
//! kind (1 byte) | length (u32, big-endian) | payload | HMAC-SHA256 (32 bytes)
//! mac = HMAC(secret, "nkmc-frame-v1" 0x00 NONCE 0x00 SENDER 0x00 RECIPIENT 0x00 seq (u64) kind payload)
//! ```
//!
//! The first frame is the head (`H`: the upstream's status and content type, JSON), then
//! data (`D`), then the end (`E`: the number of data bytes, u64) or an error (`X`: an
//! `ExecRefusal`, JSON) when the body broke off. Each frame's MAC binds it to this request's
//! nonce, the pair and its place in the sequence: frames cannot be reordered, dropped,
//! spliced from another answer or forged, and a body cut short lacks its end frame — every
//! such case is an error at the borrower, never a shorter body.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The body the answer's signature covers when the body is framed.
pub const MARKER: &[u8] = b"nkmc-frames-v1";
/// The header that says the body is framed, and its value.
pub const HEADER: (&str, &str) = ("x-nkmc-body", "frames-v1");
/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;

const MAC_LEN: usize = 32;
const HEAD_LEN: usize = 5;

/// What the head frame says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The upstream's status.
    pub upstream_status: u16,
    /// The upstream's content type.
    pub content_type: String,
    /// A paid call's settlement (the `X-PAYMENT-RESPONSE` value), signed with the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_response: Option<String>,
}

/// One verified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The head.
    Head(Head),
    /// Body bytes.
    Data(Bytes),
    /// The end, with the number of body bytes sent.
    End(u64),
    /// The body broke off at the lender (its refusal, JSON).
    Error(Bytes),
}

/// Why frames were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A MAC did not verify, or a frame is malformed or out of place.
    #[error("federation: a frame of the answer failed verification ({0})")]
    Bad(&'static str),
    /// The stream ended before its end frame.
    #[error("federation: the answer ended before its last frame")]
    Truncated,
}

/// What binds frames to one answer.
#[derive(Clone)]
pub struct Binding {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Binding(<keyed>)")
    }
}

impl Binding {
    /// For the answer from `sender` to `recipient` to the request with `nonce`.
    pub fn new(secret: &[u8], nonce: &str, sender: &str, recipient: &str) -> Self {
        let mut mac = super::sign::mac(secret);
        for part in [b"nkmc-frame-v1".as_slice(), nonce.as_bytes(), sender.as_bytes(), recipient.as_bytes()] {
            mac.update(part);
            mac.update(&[0]);
        }
        Binding { mac }
    }

    fn tag(&self, seq: u64, kind: u8, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(&seq.to_be_bytes());
        mac.update(&[kind]);
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }
}

/// The lender's side: turns frames into bytes.
#[derive(Debug)]
pub struct Encoder {
    binding: Binding,
    seq: u64,
    sent: u64,
}

impl Encoder {
    /// Frames for `binding`.
    pub fn new(binding: Binding) -> Self {
        Encoder { binding, seq: 0, sent: 0 }
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(HEAD_LEN + payload.len() + MAC_LEN);
        out.put_u8(kind);
        out.put_u32(payload.len() as u32);
        out.put_slice(payload);
        out.put_slice(&self.binding.tag(self.seq, kind, payload));
        self.seq += 1;
        out.freeze()
    }

    /// The head frame.
    pub fn head(&mut self, head: &Head) -> Bytes {
        let json = serde_json::to_vec(head).unwrap_or_default();
        self.frame(b'H', &json)
    }

    /// Data frames for `chunk` (split at [`MAX_PAYLOAD`]).
    pub fn data(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        for part in chunk.chunks(MAX_PAYLOAD) {
            self.sent += part.len() as u64;
            out.extend_from_slice(&self.frame(b'D', part));
        }
        out.freeze()
    }

    /// The end frame.
    pub fn end(&mut self) -> Bytes {
        let sent = self.sent.to_be_bytes();
        self.frame(b'E', &sent)
    }

    /// An error frame: the body broke off.
    pub fn error(&mut self, refusal_json: &[u8]) -> Bytes {
        self.frame(b'X', refusal_json)
    }
}

/// The borrower's side: verifies frames as bytes arrive.
#[derive(Debug)]
pub struct Decoder {
    binding: Binding,
    buf: BytesMut,
    seq: u64,
    received: u64,
    ended: bool,
}

impl Decoder {
    /// Frames for `binding`.
    pub fn new(binding: Binding) -> Self {
        Decoder { binding, buf: BytesMut::new(), seq: 0, received: 0, ended: false }
    }

    /// Adds bytes from the wire.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, verified; `None` until one is complete.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.ended {
            return if self.buf.is_empty() { Ok(None) } else { Err(FrameError::Bad("bytes after the end")) };
        }
        if self.buf.len() < HEAD_LEN {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::Bad("a frame over the size limit"));
        }
        if self.buf.len() < HEAD_LEN + len + MAC_LEN {
            return Ok(None);
        }
        self.buf.advance(HEAD_LEN);
        let payload = self.buf.split_to(len).freeze();
        let tag = self.buf.split_to(MAC_LEN);
        let expected = self.binding.tag(self.seq, kind, &payload);
        if !constant_time_eq(&expected, &tag) {
            return Err(FrameError::Bad("bad MAC"));
        }
        let first = self.seq == 0;
        self.seq += 1;
        let frame = match (kind, first) {
            (b'H', true) => Frame::Head(serde_json::from_slice(&payload).map_err(|_| FrameError::Bad("bad head"))?),
            (b'D', false) => {
                self.received += payload.len() as u64;
                Frame::Data(payload)
            }
            (b'E', false) => {
                let n = <[u8; 8]>::try_from(payload.as_ref()).map_err(|_| FrameError::Bad("bad end"))?;
                if u64::from_be_bytes(n) != self.received {
                    return Err(FrameError::Bad("the end does not count the data received"));
                }
                self.ended = true;
                Frame::End(self.received)
            }
            (b'X', false) => {
                self.ended = true;
                Frame::Error(payload)
            }
            _ => return Err(FrameError::Bad("a frame out of place")),
        };
        Ok(Some(frame))
    }

    /// Whether the end (or error) frame was seen.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Encoder, Decoder) {
        let b = || Binding::new(b"0123456789abcdef0123456789abcdef", "n1", "gw-b", "gw-a");
        (Encoder::new(b()), Decoder::new(b()))
    }

    fn frames(enc: &mut Encoder, body: &[u8]) -> Vec<u8> {
        let mut wire = enc
            .head(&Head { upstream_status: 200, content_type: "application/json".into(), payment_response: None })
            .to_vec();
        wire.extend_from_slice(&enc.data(body));
        wire.extend_from_slice(&enc.end());
        wire
    }

    fn decode_all(dec: &mut Decoder, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), FrameError> {
        let mut body = Vec::new();
        for piece in wire.chunks(step) {
            dec.push(piece);
            while let Some(f) = dec.next_frame()? {
                if let Frame::Data(d) = f {
                    body.extend_from_slice(&d);
                }
            }
        }
        Ok((body, dec.ended()))
    }

    #[test]
    fn a_body_crosses_in_frames_whatever_the_read_sizes() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for step in [1, 7, 4096, 1 << 20] {
            let (mut enc, mut dec) = pair();
            let wire = frames(&mut enc, &body);
            let (got, ended) = decode_all(&mut dec, &wire, step).unwrap();
            assert_eq!((got.len(), ended), (body.len(), true));
            assert_eq!(got, body);
        }
    }

    #[test]
    fn tampered_reordered_truncated_or_foreign_frames_are_refused() {
        let body = vec![7u8; 3 * MAX_PAYLOAD];
        let (mut enc, _) = pair();
        let wire = frames(&mut enc, &body);
        // A flipped bit anywhere.
        for at in [0, 3, 10, HEAD_LEN + 40, wire.len() - 1, wire.len() / 2] {
            let mut bad = wire.clone();
            bad[at] ^= 1;
            let (_, mut dec) = pair();
            let r = decode_all(&mut dec, &bad, 1 << 20);
            assert!(r.is_err() || !r.unwrap().1, "flip at {at} went unnoticed");
        }
        // Cut short: no end frame, so never "ended".
        let (_, mut dec) = pair();
        let (_, ended) = decode_all(&mut dec, &wire[..wire.len() - 10], 1 << 20).unwrap();
        assert!(!ended);
        // A frame dropped: the sequence breaks.
        let frame_len = HEAD_LEN + MAX_PAYLOAD + MAC_LEN;
        let head_len = wire.len() - 3 * frame_len - (HEAD_LEN + 8 + MAC_LEN);
        let mut dropped = wire[..head_len].to_vec();
        dropped.extend_from_slice(&wire[head_len + frame_len..]);
        let (_, mut dec) = pair();
        assert!(decode_all(&mut dec, &dropped, 1 << 20).is_err());
        // Frames of another answer (another nonce) do not verify.
        let mut other = Encoder::new(Binding::new(b"0123456789abcdef0123456789abcdef", "n2", "gw-b", "gw-a"));
        let (_, mut dec) = pair();
        assert!(decode_all(&mut dec, &frames(&mut other, b"x"), 1 << 20).is_err());
        // The end must count what was received.
        let (mut enc, mut dec) = pair();
        let mut lying =
            enc.head(&Head { upstream_status: 200, content_type: "x".into(), payment_response: None }).to_vec();
        enc.sent = 99;
        lying.extend_from_slice(&enc.end());
        assert!(decode_all(&mut dec, &lying, 1 << 20).is_err());
    }
}
