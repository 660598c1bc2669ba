//! `POST /v1/fs/read-batch`: several reads in one request, answered by one stream of frames.
//!
//! Each path of the request is read exactly as its own `GET /v1/fs/read` would be; its
//! answer is a sequence of frames tagged with the path's index in the request:
//!
//! - [`FrameKind::Head`] (JSON [`ItemHead`]): the read succeeded; its body follows.
//! - [`FrameKind::Data`]: the next bytes of that body.
//! - [`FrameKind::End`] (no payload): the body is complete.
//! - [`FrameKind::Error`] (JSON [`ErrorBody`]): the read failed, before its head or part
//!   way through its body (then the bytes sent so far are not the body).
//!
//! Items are written as each one completes (a large body's data as it arrives), so frames
//! of different items interleave. Every frame is
//! `kind: u8 | index: u16 (big endian) | length: u32 (big endian) | payload`.
//! A reader checks the order strictly ([`ItemTracker`]): a frame it does not expect, a
//! payload over its cap or a stream that ends inside a frame is an error of every item not
//! yet complete, never a wrong body.

use serde::{Deserialize, Serialize};

use super::ErrorBody;

/// The route.
pub const ROUTE: &str = "/v1/fs/read-batch";

/// The media type of the answer.
pub const CONTENT_TYPE: &str = "application/vnd.nkmc.read-batch";

/// Most paths one request may ask for.
pub const MAX_PATHS: usize = 64;

/// Most reads of one request that gatewayd runs at once (a request may ask for fewer).
pub const MAX_CONCURRENT: usize = 16;

/// Largest payload of a [`FrameKind::Data`] frame; larger pieces of a body are split.
pub const MAX_DATA: usize = 1024 * 1024;

/// Largest payload of a [`FrameKind::Head`] or [`FrameKind::Error`] frame.
pub const MAX_META: usize = 64 * 1024;

/// Bytes before each frame's payload.
pub const FRAME_HEADER_LEN: usize = 7;

/// `POST /v1/fs/read-batch`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBatchRequest {
    /// Canonical virtual paths, at most [`MAX_PATHS`]; a frame's index is a position here.
    pub paths: Vec<String>,
    /// Most reads run at once (1 to [`MAX_CONCURRENT`]; the default and the cap are
    /// [`MAX_CONCURRENT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// What a successful read says before its body: what `GET /v1/fs/read` says in its headers.
/// A reader ignores members it does not know (a newer gatewayd may send more); the request,
/// [`ReadBatchRequest`], stays strict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemHead {
    /// The upstream's status (`x-nkmc-upstream-status`); none for a generated file or a
    /// JSON-RPC result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// The body's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The upstream's `ETag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The upstream's `Last-Modified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// The body's exact length, when known before it is sent (`Content-Length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An [`ItemHead`]: the read succeeded.
    Head = 1,
    /// Body bytes.
    Data = 2,
    /// The body is complete.
    End = 3,
    /// An [`ErrorBody`]: the read failed.
    Error = 4,
}

impl FrameKind {
    fn of(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(FrameKind::Head),
            2 => Some(FrameKind::Data),
            3 => Some(FrameKind::End),
            4 => Some(FrameKind::Error),
            _ => None,
        }
    }

    fn cap(self) -> usize {
        match self {
            FrameKind::Head | FrameKind::Error => MAX_META,
            FrameKind::Data => MAX_DATA,
            FrameKind::End => 0,
        }
    }
}

/// Why a batch answer cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame of a kind this reader does not know.
    #[error("read batch: unknown frame kind {0}")]
    UnknownKind(u8),
    /// A payload over its kind's cap.
    #[error("read batch: a {kind:?} frame of {len} bytes is over its cap")]
    TooLong {
        /// The kind.
        kind: FrameKind,
        /// The announced length.
        len: usize,
    },
    /// An index past the request's paths.
    #[error("read batch: frame for item {index} of a request of {count}")]
    NoSuchItem {
        /// The index.
        index: u16,
        /// The number of paths asked for.
        count: usize,
    },
    /// A frame out of order for its item (data before its head, anything after its end).
    #[error("read batch: unexpected {kind:?} frame for item {index}")]
    OutOfOrder {
        /// The kind.
        kind: FrameKind,
        /// The index.
        index: u16,
    },
    /// A head or error payload that is not its JSON.
    #[error("read batch: item {index}: malformed {kind:?} frame: {message}")]
    Malformed {
        /// The kind.
        kind: FrameKind,
        /// The index.
        index: u16,
        /// The parse error.
        message: String,
    },
    /// A body that is not the length its head announced.
    #[error("read batch: item {index}: the body is not the {expected} bytes its head announced")]
    Length {
        /// The index.
        index: u16,
        /// The announced length.
        expected: u64,
    },
    /// The stream ended inside a frame.
    #[error("read batch: the answer ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// Appends one frame to `out`. The caller keeps the payload within its kind's cap
/// ([`MAX_DATA`], [`MAX_META`]; a reader refuses a longer one).
pub fn encode(kind: FrameKind, index: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(FRAME_HEADER_LEN + payload.len());
    encode_header(kind, index, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends a frame's header alone, for a payload of `len` bytes the caller sends right
/// after it (a long payload, not copied behind its header). The same caps as [`encode`].
pub fn encode_header(kind: FrameKind, index: u16, len: usize, out: &mut Vec<u8>) {
    out.push(kind as u8);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

/// One frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: FrameKind,
    /// The item's position in the request.
    pub index: u16,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Cuts a byte stream into frames, whatever the pieces it arrives in.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    at: usize,
}

impl Decoder {
    /// Adds bytes as they arrive.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 64 * 1024 && self.at * 2 > self.buf.len() {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let rest = &self.buf[self.at..];
        let Some(header) = rest.get(..FRAME_HEADER_LEN) else { return Ok(None) };
        let kind = FrameKind::of(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
        let index = u16::from_be_bytes([header[1], header[2]]);
        let len = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if len > kind.cap() {
            return Err(FrameError::TooLong { kind, len });
        }
        let Some(payload) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else { return Ok(None) };
        let frame = Frame { kind, index, payload: payload.to_vec() };
        self.at += FRAME_HEADER_LEN + len;
        Ok(Some(frame))
    }

    /// At the end of the stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            left => Err(FrameError::Truncated(left)),
        }
    }
}

/// An error frame's payload as read: [`ErrorBody`], its members not known here ignored (a
/// newer gatewayd may send more).
#[derive(Deserialize)]
struct ReadErrorBody {
    code: super::ErrorCode,
    message: String,
    #[serde(default)]
    upstream_status: Option<u16>,
}

/// What a frame means for its item, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The item's read succeeded; its body follows.
    Head(usize, ItemHead),
    /// The next bytes of the item's body.
    Data(usize, Vec<u8>),
    /// The item's body is complete.
    End(usize),
    /// The item's read failed (any bytes of it seen so far are not its body).
    Failed(usize, ErrorBody),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemState {
    Waiting,
    Body { seen: u64, expected: Option<u64> },
    Done,
}

/// Checks each item's frames against the order [`Event`] describes.
#[derive(Debug)]
pub struct ItemTracker {
    items: Vec<ItemState>,
}

impl ItemTracker {
    /// For a request of `count` paths.
    pub fn new(count: usize) -> Self {
        ItemTracker { items: vec![ItemState::Waiting; count] }
    }

    /// The meaning of the next frame, or why it cannot be right.
    pub fn accept(&mut self, frame: Frame) -> Result<Event, FrameError> {
        let Frame { kind, index, payload } = frame;
        let i = usize::from(index);
        let count = self.items.len();
        let state = self.items.get_mut(i).ok_or(FrameError::NoSuchItem { index, count })?;
        let malformed = |e: serde_json::Error| FrameError::Malformed { kind, index, message: e.to_string() };
        match (kind, *state) {
            (FrameKind::Head, ItemState::Waiting) => {
                let head: ItemHead = serde_json::from_slice(&payload).map_err(malformed)?;
                *state = ItemState::Body { seen: 0, expected: head.length };
                Ok(Event::Head(i, head))
            }
            (FrameKind::Data, ItemState::Body { seen, expected }) => {
                let seen = seen + payload.len() as u64;
                if let Some(expected) = expected.filter(|e| seen > *e) {
                    return Err(FrameError::Length { index, expected });
                }
                *state = ItemState::Body { seen, expected };
                Ok(Event::Data(i, payload))
            }
            (FrameKind::End, ItemState::Body { seen, expected }) => {
                if let Some(expected) = expected.filter(|e| seen != *e) {
                    return Err(FrameError::Length { index, expected });
                }
                *state = ItemState::Done;
                Ok(Event::End(i))
            }
            (FrameKind::Error, ItemState::Waiting | ItemState::Body { .. }) => {
                let ReadErrorBody { code, message, upstream_status } =
                    serde_json::from_slice(&payload).map_err(malformed)?;
                *state = ItemState::Done;
                Ok(Event::Failed(i, ErrorBody { code, message, upstream_status }))
            }
            _ => Err(FrameError::OutOfOrder { kind, index }),
        }
    }

    /// The items not yet complete (ended or failed).
    pub fn unfinished(&self) -> impl Iterator<Item = usize> + '_ {
        self.items.iter().enumerate().filter(|(_, s)| **s != ItemState::Done).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::ErrorCode;

    fn head(length: Option<u64>) -> Vec<u8> {
        serde_json::to_vec(&ItemHead { upstream_status: Some(200), length, ..ItemHead::default() }).unwrap()
    }

    fn error_body() -> Vec<u8> {
        serde_json::to_vec(&ErrorBody { code: ErrorCode::NotFound, message: "gone".into(), upstream_status: Some(404) })
            .unwrap()
    }

    /// Two items interleaved: 0 ok (in two pieces), 1 failed.
    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode(FrameKind::Head, 0, &head(Some(5)), &mut out);
        encode(FrameKind::Data, 0, b"he", &mut out);
        encode(FrameKind::Error, 1, &error_body(), &mut out);
        encode(FrameKind::Data, 0, b"llo", &mut out);
        encode(FrameKind::End, 0, &[], &mut out);
        out
    }

    fn events(bytes: &[u8], piece: usize, count: usize) -> Result<Vec<Event>, FrameError> {
        let mut decoder = Decoder::default();
        let mut tracker = ItemTracker::new(count);
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next_frame()? {
                out.push(tracker.accept(frame)?);
            }
        }
        decoder.finish()?;
        Ok(out)
    }

    #[test]
    fn frames_decode_whatever_the_pieces() {
        let bytes = sample();
        let expected = events(&bytes, bytes.len(), 2).unwrap();
        assert_eq!(expected.len(), 5);
        assert!(matches!(&expected[0], Event::Head(0, h) if h.length == Some(5)));
        assert!(matches!(&expected[2], Event::Failed(1, e) if e.code == ErrorCode::NotFound));
        assert_eq!(expected[4], Event::End(0));
        for piece in 1..bytes.len() {
            assert_eq!(events(&bytes, piece, 2).unwrap(), expected, "pieces of {piece}");
        }
    }

    #[test]
    fn a_truncated_answer_is_an_error_and_leaves_items_unfinished() {
        let bytes = sample();
        // Where each frame ends: its 4-byte length follows its kind and index.
        let mut boundaries = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at + 3..at + 7].try_into().unwrap()) as usize;
            at += FRAME_HEADER_LEN + len;
            boundaries.push(at);
        }
        assert_eq!(boundaries.len(), 5);
        for cut in 1..bytes.len() {
            let mut decoder = Decoder::default();
            let mut tracker = ItemTracker::new(2);
            decoder.push(&bytes[..cut]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                tracker.accept(frame).unwrap();
            }
            // Cut inside a frame: the decoder says so at the end; between frames it cannot,
            // but item 0 never ended either way.
            assert_eq!(decoder.finish().is_err(), !boundaries.contains(&cut), "cut at {cut}");
            let unfinished: Vec<usize> = tracker.unfinished().collect();
            assert!(unfinished.contains(&0), "item 0 is complete only with its end frame (cut at {cut})");
        }
    }

    #[test]
    fn frames_out_of_order_are_refused() {
        let mut t = ItemTracker::new(2);
        let data = |index, p: &[u8]| Frame { kind: FrameKind::Data, index, payload: p.to_vec() };
        let end = |index| Frame { kind: FrameKind::End, index, payload: Vec::new() };
        assert!(matches!(t.accept(data(0, b"x")), Err(FrameError::OutOfOrder { .. })), "data before head");
        assert!(matches!(t.accept(end(1)), Err(FrameError::OutOfOrder { .. })), "end before head");
        let h = Frame { kind: FrameKind::Head, index: 0, payload: head(Some(1)) };
        t.accept(h.clone()).unwrap();
        assert!(matches!(t.accept(h), Err(FrameError::OutOfOrder { .. })), "two heads");
        assert!(matches!(t.accept(data(0, b"xy")), Err(FrameError::Length { .. })), "longer than announced");
        let mut t = ItemTracker::new(1);
        t.accept(Frame { kind: FrameKind::Head, index: 0, payload: head(Some(3)) }).unwrap();
        t.accept(data(0, b"ab")).unwrap();
        assert!(matches!(t.accept(end(0)), Err(FrameError::Length { .. })), "shorter than announced");
        let mut t = ItemTracker::new(1);
        t.accept(Frame { kind: FrameKind::Head, index: 0, payload: head(None) }).unwrap();
        t.accept(end(0)).unwrap();
        assert!(matches!(t.accept(data(0, b"x")), Err(FrameError::OutOfOrder { .. })), "after its end");
        assert!(matches!(t.accept(end(5)), Err(FrameError::NoSuchItem { index: 5, count: 1 })));
        assert_eq!(t.unfinished().count(), 0);
    }

    #[test]
    fn members_a_newer_gatewayd_adds_are_ignored() {
        let mut t = ItemTracker::new(2);
        let head = Frame { kind: FrameKind::Head, index: 0, payload: br#"{"length":1,"x":2,"y":{"z":[]}}"#.to_vec() };
        assert!(matches!(t.accept(head), Ok(Event::Head(0, h)) if h.length == Some(1)));
        let error = br#"{"code":"not_found","message":"gone","upstream_status":404,"hint":"new"}"#.to_vec();
        let error = Frame { kind: FrameKind::Error, index: 1, payload: error };
        let expected = ErrorBody { code: ErrorCode::NotFound, message: "gone".into(), upstream_status: Some(404) };
        assert_eq!(t.accept(error), Ok(Event::Failed(1, expected)));
    }

    #[test]
    fn malformed_frames_are_refused() {
        let mut t = ItemTracker::new(1);
        let bad = Frame { kind: FrameKind::Head, index: 0, payload: br#"{"length":"one"}"#.to_vec() };
        assert!(matches!(t.accept(bad), Err(FrameError::Malformed { .. })), "a known member of the wrong type");
        let bad = Frame { kind: FrameKind::Head, index: 0, payload: br#""head""#.to_vec() };
        assert!(matches!(t.accept(bad), Err(FrameError::Malformed { .. })), "not an object");
        let bad = Frame { kind: FrameKind::Error, index: 0, payload: br#"{"message":"no code"}"#.to_vec() };
        assert!(matches!(t.accept(bad), Err(FrameError::Malformed { .. })), "an error without its code");
        let bad = Frame { kind: FrameKind::Error, index: 0, payload: b"not json".to_vec() };
        assert!(matches!(t.accept(bad), Err(FrameError::Malformed { .. })));
        let mut d = Decoder::default();
        d.push(&[9, 0, 0, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownKind(9)));
        let mut d = Decoder::default();
        d.push(&[1, 0, 0, 0, 1, 0, 1]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLong { kind: FrameKind::Head, .. })));
        let mut d = Decoder::default();
        d.push(&[3, 0, 0, 0, 0, 0, 1, 0]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLong { kind: FrameKind::End, .. })));
        let mut d = Decoder::default();
        d.push(&[2, 0, 0, 0, 0, 0, 4, b'a']);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(8)));
    }

    #[test]
    fn the_request_is_strict() {
        let ok: ReadBatchRequest = serde_json::from_str(r#"{"paths":["/a/b"]}"#).unwrap();
        assert_eq!(ok.paths, vec!["/a/b".to_owned()]);
        assert!(serde_json::from_str::<ReadBatchRequest>(r#"{"paths":[],"extra":1}"#).is_err());
    }

    #[test]
    fn a_long_payload_goes_after_its_header_as_it_is() {
        let mut whole = Vec::new();
        encode(FrameKind::Data, 7, b"payload", &mut whole);
        let mut split = Vec::new();
        encode_header(FrameKind::Data, 7, 7, &mut split);
        assert_eq!(split.len(), FRAME_HEADER_LEN);
        split.extend_from_slice(b"payload");
        assert_eq!(split, whole);
    }
}
