//! WAL-G's libsodium encryption: `crypto_secretstream_xchacha20poly1305` with a 24-byte header,
//! then one chunk per 8192 bytes of plaintext (each 17 bytes longer: tag byte and MAC), tag
//! MESSAGE on every chunk but the last, which carries tag FINAL and may be short or empty.
//! No associated data. dryoc implements the primitive; this module only frames it.
//!
//! A reader that reaches the end of the object without a FINAL chunk reports the object as
//! truncated; a chunk whose MAC does not verify reports a wrong key or a corrupted object.

use std::io::{self, Read, Write};

use dryoc::classic::crypto_secretstream_xchacha20poly1305 as ss;
use dryoc::constants::{
    CRYPTO_SECRETSTREAM_XCHACHA20POLY1305_ABYTES as ABYTES,
    CRYPTO_SECRETSTREAM_XCHACHA20POLY1305_HEADERBYTES as HEADER,
    CRYPTO_SECRETSTREAM_XCHACHA20POLY1305_TAG_FINAL as TAG_FINAL,
    CRYPTO_SECRETSTREAM_XCHACHA20POLY1305_TAG_MESSAGE as TAG_MESSAGE,
};

/// Plaintext bytes per chunk, as WAL-G writes them.
pub const CHUNK: usize = 8192;

/// A 32-byte secretstream key.
#[derive(Clone)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// How `WALG_LIBSODIUM_KEY` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTransform {
    /// The bytes as they are, truncated or zero-padded to 32; at least 25 bytes (WAL-G's rule).
    None,
    Hex,
    Base64,
}

impl KeyTransform {
    pub fn parse(s: &str) -> Option<KeyTransform> {
        match s {
            "none" | "" => Some(KeyTransform::None),
            "hex" => Some(KeyTransform::Hex),
            "base64" => Some(KeyTransform::Base64),
            _ => None,
        }
    }
}

impl Key {
    /// The key from its configured text. The error is the rule it broke (never the key).
    pub fn from_text(text: &str, transform: KeyTransform) -> Result<Key, String> {
        let bytes = match transform {
            KeyTransform::None => {
                let b = text.as_bytes();
                if b.len() < 25 {
                    return Err(format!("must be at least 25 bytes with transform none (it has {})", b.len()));
                }
                b.to_vec()
            }
            KeyTransform::Hex => {
                let t = text.trim();
                if t.len() != 64 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err("must be 64 hex digits (32 bytes) with transform hex".into());
                }
                (0..32).map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).unwrap_or(0)).collect()
            }
            KeyTransform::Base64 => {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| "must be valid base64 with transform base64".to_owned())?;
                if b.len() != 32 {
                    return Err(format!("must decode to 32 bytes with transform base64 (it gives {})", b.len()));
                }
                b
            }
        };
        let mut key = [0u8; 32];
        let n = bytes.len().min(32);
        key[..n].copy_from_slice(&bytes[..n]);
        Ok(Key(key))
    }
}

/// Encrypts everything written to it into `inner`. Call [`Encryptor::finish`] to write the
/// FINAL chunk; dropping it without doing so leaves a stream readers reject as truncated.
pub struct Encryptor<W: Write> {
    inner: W,
    state: ss::State,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl<W: Write> Encryptor<W> {
    pub fn new(key: &Key, mut inner: W) -> io::Result<Self> {
        let mut state = ss::State::new();
        let mut header = [0u8; HEADER];
        ss::crypto_secretstream_xchacha20poly1305_init_push(&mut state, &mut header, &key.0);
        inner.write_all(&header)?;
        Ok(Encryptor { inner, state, buf: Vec::with_capacity(CHUNK), out: vec![0u8; CHUNK + ABYTES] })
    }

    fn push(&mut self, tag: u8) -> io::Result<()> {
        let len = self.buf.len() + ABYTES;
        ss::crypto_secretstream_xchacha20poly1305_push(&mut self.state, &mut self.out[..len], &self.buf, None, tag)
            .map_err(|e| io::Error::other(format!("encrypt: {e:?}")))?;
        self.inner.write_all(&self.out[..len])?;
        self.buf.clear();
        Ok(())
    }

    /// Writes the FINAL chunk and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.push(TAG_FINAL)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A full chunk is pushed only when more data comes, so the last chunk (which carries
        // FINAL) is never an empty one after an exact multiple unless the input is empty.
        if self.buf.len() == CHUNK {
            self.push(TAG_MESSAGE)?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts a stream written by [`Encryptor`] or by WAL-G.
pub struct Decryptor<R: Read> {
    inner: R,
    state: ss::State,
    cipher: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

/// What went wrong reading an encrypted object. Kept apart from other I/O errors so the
/// caller can say "wrong key" rather than "corrupted".
pub fn is_decrypt_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.to_string().starts_with("decrypt:"))
}

impl<R: Read> Decryptor<R> {
    pub fn new(key: &Key, mut inner: R) -> io::Result<Self> {
        let mut header = [0u8; HEADER];
        inner.read_exact(&mut header).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::InvalidData, "decrypt: object too short for an encryption header")
            } else {
                e
            }
        })?;
        let mut state = ss::State::new();
        ss::crypto_secretstream_xchacha20poly1305_init_pull(&mut state, &header, &key.0);
        Ok(Decryptor {
            inner,
            state,
            cipher: vec![0u8; CHUNK + ABYTES],
            plain: Vec::with_capacity(CHUNK),
            pos: 0,
            done: false,
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let mut filled = 0;
        while filled < self.cipher.len() {
            match self.inner.read(&mut self.cipher[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled < ABYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "decrypt: the encrypted stream ends without its final chunk (truncated object)",
            ));
        }
        let mut tag = 0u8;
        let n = ss::crypto_secretstream_xchacha20poly1305_pull(
            &mut self.state,
            &mut self.plain,
            &mut tag,
            &self.cipher[..filled],
            None,
        )
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "decrypt: a chunk does not authenticate (wrong WALG_LIBSODIUM_KEY, or a corrupted object)",
            )
        })?;
        self.plain.truncate(n);
        self.pos = 0;
        if tag == TAG_FINAL {
            self.done = true;
        } else if filled < self.cipher.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "decrypt: the encrypted stream ends without its final chunk (truncated object)",
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.plain.len() {
                let n = out.len().min(self.plain.len() - self.pos);
                out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            self.plain.resize(CHUNK, 0);
            self.next_chunk()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::from_text("0123456789abcdef0123456789abcdef", KeyTransform::None).expect("valid key")
    }

    fn seal(data: &[u8]) -> Vec<u8> {
        let mut e = Encryptor::new(&key(), Vec::new()).expect("header");
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn open(data: &[u8], k: &Key) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Decryptor::new(k, data)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_chunk_boundary() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal(&data);
            let chunks = len.div_ceil(CHUNK).max(1);
            assert_eq!(sealed.len(), HEADER + len + chunks * ABYTES, "len {len}");
            assert_eq!(open(&sealed, &key()).expect("opens"), data, "len {len}");
        }
    }

    #[test]
    fn a_wrong_key_is_named_as_such() {
        let sealed = seal(b"segment bytes");
        let other = Key::from_text("another key that is long enough....", KeyTransform::None).expect("valid");
        let e = open(&sealed, &other).expect_err("must fail");
        assert!(is_decrypt_error(&e) && e.to_string().contains("wrong WALG_LIBSODIUM_KEY"), "{e}");
    }

    #[test]
    fn a_truncated_stream_is_reported_not_returned_short() {
        let data = vec![5u8; 3 * CHUNK];
        let sealed = seal(&data);
        // Cut exactly after the second chunk: every remaining chunk still authenticates.
        let cut = HEADER + 2 * (CHUNK + ABYTES);
        let e = open(&sealed[..cut], &key()).expect_err("must fail");
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn key_transforms_follow_walg_rules() {
        assert!(Key::from_text("short", KeyTransform::None).is_err());
        let hex = "00".repeat(31) + "ff";
        assert_eq!(Key::from_text(&hex, KeyTransform::Hex).expect("hex").0[31], 0xff);
        assert!(Key::from_text("abc", KeyTransform::Hex).is_err());
        assert!(Key::from_text("AAAA", KeyTransform::Base64).is_err());
        let long = "x".repeat(40);
        assert_eq!(Key::from_text(&long, KeyTransform::None).expect("none").0, [b'x'; 32]);
    }
}
