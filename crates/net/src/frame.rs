//! Length-delimited frames: a 4-byte big-endian length, then the payload. A hard
//! maximum is checked before anything is allocated, so a peer cannot make us reserve
//! memory by announcing a huge frame.
//!
//! Messages of any size (a `paper`-profile model is larger than one frame may be) travel
//! as a run of frames of at most [`CHUNK`] bytes, each a flag byte (1: more pieces
//! follow, 0: last piece) and the piece: [`write_message`] and [`read_message`]. The
//! receiver allocates as pieces arrive, never on a peer's announcement, and stops at
//! its own maximum message size.

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default hard maximum of one frame (a 10^7-coordinate 32-bit vector fits).
pub const MAX_FRAME: usize = 64 << 20;

/// The largest piece of a message in one frame.
pub const CHUNK: usize = 1 << 20;

/// Default hard maximum of one message: 1 GiB.
pub const MAX_MESSAGE: usize = 1 << 30;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated { expected: usize, got: usize },
    #[error("message of more than {max} bytes")]
    MessageTooLarge { max: usize },
    #[error("malformed message piece: {0}")]
    Malformed(&'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Prefixes `payload` with its length.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if payload.len() > max || payload.len() > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Incremental, sans-IO decoding: push bytes as they arrive, take frames out.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` if more bytes are needed, or an error for an
    /// oversized frame (after which the stream must be dropped).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(frame))
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Reads a frame's length prefix; `Ok(None)` on a clean end of stream before it.
async fn read_len<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<usize>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated { expected: 4, got })
            };
        }
        got += n;
    }
    Ok(Some(u32::from_be_bytes(prefix) as usize))
}

/// Appends the next `count` bytes of a frame of `len` bytes, `done` of them read
/// already, to `out`, without zeroing the space first.
async fn append<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    count: usize,
    (len, done): (usize, usize),
) -> Result<(), FrameError> {
    out.reserve(count);
    let mut limited = r.take(count as u64);
    let mut got = 0;
    while got < count {
        let n = limited.read_buf(out).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                expected: len,
                got: done + got,
            });
        }
        got += n;
    }
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_len(r).await? else {
        return Ok(None);
    };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut payload = Vec::new();
    append(r, &mut payload, len, (len, 0)).await?;
    Ok(Some(payload))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    if payload.len() > max || payload.len() > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    w.write_all(&(payload.len() as u32).to_be_bytes()).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// The pieces of a message as written: each piece's 5-byte header (its length with the
/// flag byte, big-endian, then the flag: 1 if more pieces follow, 0 for the last) and
/// the range of the message it carries. An empty message is one empty last piece.
fn pieces(len: usize) -> impl Iterator<Item = ([u8; 5], std::ops::Range<usize>)> {
    let count = len.div_ceil(CHUNK).max(1);
    (0..count).map(move |i| {
        let range = i * CHUNK..((i + 1) * CHUNK).min(len);
        let size = ((range.len() + 1) as u32).to_be_bytes();
        let more = u8::from(i + 1 < count);
        ([size[0], size[1], size[2], size[3], more], range)
    })
}

/// Writes one message as pieces of at most [`CHUNK`] bytes (an empty message is one
/// empty last piece).
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &[u8],
) -> Result<(), FrameError> {
    if message.len() > MAX_MESSAGE {
        return Err(FrameError::MessageTooLarge { max: MAX_MESSAGE });
    }
    for (header, range) in pieces(message.len()) {
        w.write_all(&header).await?;
        w.write_all(&message[range]).await?;
    }
    Ok(())
}

/// [`write_message`] on a QUIC stream, handing each piece to QUIC as a slice of
/// `message` instead of a copy (the bytes on the wire are the same). A model sent to
/// every site is then shared, not copied once per site.
pub async fn send_message(
    send: &mut quinn::SendStream,
    message: bytes::Bytes,
) -> Result<(), FrameError> {
    if message.len() > MAX_MESSAGE {
        return Err(FrameError::MessageTooLarge { max: MAX_MESSAGE });
    }
    let closed = |e: quinn::WriteError| FrameError::Io(e.into());
    for (header, range) in pieces(message.len()) {
        send.write_all(&header).await.map_err(closed)?;
        if !range.is_empty() {
            send.write_chunk(message.slice(range))
                .await
                .map_err(closed)?;
        }
    }
    Ok(())
}

/// Reads one message of at most `max` bytes; `Ok(None)` on a clean end of stream
/// between messages.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    read_message_sized(r, max, 0).await
}

/// [`read_message`] that makes room for `expect` bytes once the first piece says more
/// follow: a link passes the size of the largest message it has read, so a model sent
/// every round is read without growing (and copying) the buffer piece by piece.
/// `expect` is the reader's own figure (bytes the peer did send before, capped at
/// `max`), never a peer's announcement.
pub async fn read_message_sized<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    expect: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut message = Vec::new();
    let mut first = true;
    loop {
        // Each piece goes straight into the message: no frame buffer in between.
        let Some(len) = read_len(r).await? else {
            return if first {
                Ok(None)
            } else {
                Err(FrameError::Malformed("the stream ended inside a message"))
            };
        };
        if len > CHUNK + 1 {
            return Err(FrameError::TooLarge {
                len,
                max: CHUNK + 1,
            });
        }
        let piece = len
            .checked_sub(1)
            .ok_or(FrameError::Malformed("a piece without its flag byte"))?;
        let mut more = Vec::with_capacity(1);
        append(r, &mut more, 1, (len, 0)).await?;
        if std::mem::take(&mut first) && more == [1] {
            message.reserve_exact(expect.min(max));
        }
        if message.len() + piece > max {
            // The piece is read all the same, so the stream stays at a frame boundary.
            append(r, &mut Vec::new(), piece, (len, 1)).await?;
            return Err(FrameError::MessageTooLarge { max });
        }
        append(r, &mut message, piece, (len, 1)).await?;
        match more.as_slice() {
            [0] => {
                // Room made for a larger message is given back (in place, no copy), so
                // one large message cannot make every later one hold as much.
                if message.capacity() > 2 * message.len() {
                    message.shrink_to_fit();
                }
                return Ok(Some(message));
            }
            [1] => {}
            _ => return Err(FrameError::Malformed("a flag byte other than 0 or 1")),
        }
    }
}

/// Messages recovered from a byte stream captured off the wire.
#[derive(Debug, Default)]
pub struct Split {
    /// Whole messages, in order (empty ones included: they only announce a stream).
    pub messages: Vec<Vec<u8>>,
    /// Bytes after the last whole message that do not form one.
    pub trailing: usize,
    /// Why reading stopped before the end, if it did.
    pub error: Option<FrameError>,
}

/// Splits the bytes of one stream into the messages [`read_message`] would read from
/// it, by running it over the bytes (which never wait).
pub fn split_messages(bytes: &[u8]) -> Split {
    let mut rest = bytes;
    let mut out = Split::default();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        let before = rest.len();
        let mut read = std::pin::pin!(read_message(&mut rest, MAX_MESSAGE));
        match read.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(Some(m))) => out.messages.push(m),
            std::task::Poll::Ready(Ok(None)) => return out,
            std::task::Poll::Ready(Err(e)) => {
                out.trailing = before;
                out.error = Some(e);
                return out;
            }
            std::task::Poll::Pending => {
                out.trailing = before;
                out.error = Some(FrameError::Malformed("reading a byte slice waited"));
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captured_bytes_split_into_the_messages_written() {
        let mut wire = Vec::new();
        let big: Vec<u8> = (0..(CHUNK + 5)).map(|i| (i % 7) as u8).collect();
        for m in [&[][..], b"one", &big] {
            write_message(&mut wire, m).await.unwrap();
        }
        let whole = wire.len();
        write_message(&mut wire, b"cut short").await.unwrap();
        let split = split_messages(&wire[..whole + 6]);
        assert_eq!(split.messages, vec![vec![], b"one".to_vec(), big]);
        assert_eq!(split.trailing, 6);
        assert!(split.error.is_some());
        let clean = split_messages(&wire[..whole]);
        assert_eq!((clean.messages.len(), clean.trailing), (3, 0));
        assert!(clean.error.is_none());
    }

    /// The expected size changes only where the message is built, never what is read:
    /// a many-piece message read with its size expected is never grown (its capacity is
    /// its length), a one-piece message does not take the room of a large one, and no
    /// message keeps more than twice its length however much was expected.
    #[tokio::test]
    async fn an_expected_size_only_makes_room() {
        let big: Vec<u8> = (0..(2 * CHUNK + 9)).map(|i| (i % 13) as u8).collect();
        let mut wire = Vec::new();
        for m in [&big[..], b"small", &[], &big[..]] {
            write_message(&mut wire, m).await.unwrap();
        }
        for expect in [0, 7, big.len(), 4 * CHUNK, usize::MAX] {
            let mut r = wire.as_slice();
            let first = read_message_sized(&mut r, MAX_MESSAGE, expect)
                .await
                .unwrap();
            assert_eq!(first.as_deref(), Some(&big[..]));
            let room = first.map_or(0, |m| m.capacity());
            assert!(room <= 2 * big.len(), "expect {expect}: {room} bytes held");
            let small = read_message_sized(&mut r, MAX_MESSAGE, expect)
                .await
                .unwrap();
            assert_eq!(small.as_deref(), Some(&b"small"[..]));
            assert!(small.unwrap().capacity() < CHUNK, "expect {expect}");
            let empty = read_message_sized(&mut r, MAX_MESSAGE, expect)
                .await
                .unwrap();
            assert_eq!(empty, Some(Vec::new()));
            let again = read_message_sized(&mut r, MAX_MESSAGE, expect)
                .await
                .unwrap();
            if expect == big.len() {
                assert_eq!(again.as_ref().map(Vec::capacity), Some(big.len()));
            }
            assert_eq!(again, Some(big.clone()));
            assert!(
                read_message_sized(&mut r, MAX_MESSAGE, expect)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        // The room made is capped by the reader's own maximum.
        let mut r = wire.as_slice();
        let capped = read_message_sized(&mut r, 2 * CHUNK + 9, usize::MAX)
            .await
            .unwrap();
        assert_eq!(capped.map(|m| m.capacity()), Some(2 * CHUNK + 9));
    }

    #[tokio::test]
    async fn messages_of_any_size_travel_in_pieces() {
        let big: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            write_message(&mut a, &sent).await.unwrap();
            write_message(&mut a, &[]).await.unwrap();
            write_message(&mut a, &[7; 10]).await.unwrap();
        });
        assert_eq!(read_message(&mut b, MAX_MESSAGE).await.unwrap(), Some(big));
        assert_eq!(
            read_message(&mut b, MAX_MESSAGE).await.unwrap(),
            Some(vec![])
        );
        // a message over the reader's own maximum is refused
        assert!(matches!(
            read_message(&mut b, 5).await,
            Err(FrameError::MessageTooLarge { max: 5 })
        ));
        writer.await.unwrap();
        assert_eq!(read_message(&mut b, MAX_MESSAGE).await.unwrap(), None);
    }

    #[tokio::test]
    async fn malformed_pieces_are_refused() {
        for (wire, what) in [
            (vec![0, 0, 0, 0], "no flag byte"),
            (vec![0, 0, 0, 2, 9, 1], "bad flag"),
            (vec![0, 0, 0, 2, 1, 1], "ends inside a message"),
        ] {
            let mut r = &wire[..];
            assert!(
                matches!(
                    read_message(&mut r, MAX_MESSAGE).await,
                    Err(FrameError::Malformed(_))
                ),
                "{what}"
            );
        }
        // a piece announced larger than a chunk ends the stream before allocation
        let mut r = &((CHUNK as u32 + 2).to_be_bytes())[..];
        assert!(matches!(
            read_message(&mut r, MAX_MESSAGE).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn decoder_reassembles_frames_from_any_split() {
        let frames: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![7; 1000]];
        let wire: Vec<u8> = frames
            .iter()
            .flat_map(|f| encode(f, MAX_FRAME).unwrap())
            .collect();
        for chunk in [1, 2, 3, 5, 64, wire.len()] {
            let mut d = Decoder::new(MAX_FRAME);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, frames, "chunk {chunk}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut d = Decoder::new(16);
        d.push(&(1u32 << 31).to_be_bytes());
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::TooLarge { max: 16, .. })
        ));
        assert!(matches!(
            encode(&[0; 17], 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));
    }

    #[tokio::test]
    async fn async_reads_detect_truncation_and_clean_ends() {
        let mut wire = encode(b"hello", MAX_FRAME).unwrap();
        let mut r = wire.as_slice();
        assert_eq!(
            read_frame(&mut r, MAX_FRAME).await.unwrap().unwrap(),
            b"hello"
        );
        assert!(read_frame(&mut r, MAX_FRAME).await.unwrap().is_none());
        wire.truncate(6);
        let mut r = wire.as_slice();
        assert!(matches!(
            read_frame(&mut r, MAX_FRAME).await,
            Err(FrameError::Truncated {
                expected: 5,
                got: 2
            })
        ));
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r, MAX_FRAME).await,
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut out = Vec::new();
        write_frame(&mut out, b"abc", MAX_FRAME).await.unwrap();
        assert_eq!(out, encode(b"abc", MAX_FRAME).unwrap());
    }
}
