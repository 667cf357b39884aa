//! The object pipeline WAL-G uses: raw → compress → encrypt on the way up, and the reverse on
//! the way down. The compression method is named by the object's extension (`.lz4`, `.zst`,
//! `.br`, none); encryption leaves the name unchanged.
//!
//! lz4 is written as WAL-G writes it: one LZ4 frame, 4 MiB independent blocks, a content
//! checksum. zstd frames carry a content checksum too, so corruption is found on read for both.

use std::io::{self, Read, Write};

use crate::crypto::{Decryptor, Encryptor, Key};

/// A compression method, named as WAL-G names it in `WALG_COMPRESSION_METHOD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Lz4,
    Zstd,
    /// Read only: WAL-G writes it when built with brotli; we read it and never write it.
    Brotli,
    None,
}

impl Method {
    /// Every method, in the order a fetch tries them when a file's extension is unknown.
    pub const READ_ORDER: [Method; 4] = [Method::Lz4, Method::Zstd, Method::Brotli, Method::None];

    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "lz4" => Some(Method::Lz4),
            "zstd" => Some(Method::Zstd),
            "brotli" => Some(Method::Brotli),
            "none" => Some(Method::None),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Method::Lz4 => "lz4",
            Method::Zstd => "zst",
            Method::Brotli => "br",
            Method::None => "",
        }
    }

    /// `name` with this method's extension (WAL-G's object name for a file).
    pub fn object_name(self, name: &str) -> String {
        match self.extension() {
            "" => name.to_owned(),
            ext => format!("{name}.{ext}"),
        }
    }

    /// The method an object name's extension stands for, and the name without it.
    pub fn from_object_name(object: &str) -> (Method, &str) {
        for m in [Method::Lz4, Method::Zstd, Method::Brotli] {
            if let Some(base) = object.strip_suffix(m.extension()).and_then(|b| b.strip_suffix('.')) {
                return (m, base);
            }
        }
        (Method::None, object)
    }
}

/// How objects are written: the compression method and level, and the key if encrypted.
#[derive(Debug, Clone)]
pub struct Codec {
    pub method: Method,
    pub zstd_level: i32,
    pub key: Option<Key>,
}

/// A writer that must be finished to be complete (the compressor's end of frame, the
/// encryption's FINAL chunk).
pub trait FinishWrite: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// The sink at the bottom of a pipeline: finishing it is just a flush.
struct Sink<W: Write + Send>(W);

impl<W: Write + Send> Write for Sink<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl<W: Write + Send> FinishWrite for Sink<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}

struct Encrypting<W: Write + Send>(Encryptor<W>);
impl<W: Write + Send> Write for Encrypting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl<W: Write + Send> FinishWrite for Encrypting<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish().map(drop)
    }
}

struct Lz4(lz4_flex::frame::FrameEncoder<Box<dyn FinishWrite>>);
impl Write for Lz4 {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        // An lz4 flush would end the current block early; the frame is finished in `finish`.
        Ok(())
    }
}
impl FinishWrite for Lz4 {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let inner = self.0.finish().map_err(io::Error::other)?;
        inner.finish()
    }
}

struct Zstd(zstd::stream::write::Encoder<'static, Box<dyn FinishWrite>>);
impl Write for Zstd {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl FinishWrite for Zstd {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let inner = self.0.finish()?;
        inner.finish()
    }
}

impl Codec {
    /// A writer that compresses and encrypts into `sink`.
    pub fn writer<W: Write + Send + 'static>(&self, sink: W) -> io::Result<Box<dyn FinishWrite>> {
        let base: Box<dyn FinishWrite> = match &self.key {
            Some(k) => Box::new(Encrypting(Encryptor::new(k, sink)?)),
            None => Box::new(Sink(sink)),
        };
        Ok(match self.method {
            Method::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max4MB)
                    .block_mode(lz4_flex::frame::BlockMode::Independent)
                    .content_checksum(true);
                Box::new(Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(info, base)))
            }
            Method::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(base, self.zstd_level)?;
                e.include_checksum(true)?;
                Box::new(Zstd(e))
            }
            Method::None => base,
            Method::Brotli => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, "brotli is read-only in wal-shipper"));
            }
        })
    }

    /// Compresses and encrypts a whole buffer (a WAL segment).
    pub fn encode(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let out = SharedVec::default();
        let mut w = self.writer(out.clone())?;
        w.write_all(data)?;
        w.finish()?;
        Ok(out.take())
    }
}

/// A reader that decrypts (with `key`, if given) and decompresses (by `method`).
pub fn reader<'a, R: Read + Send + 'a>(
    method: Method,
    key: Option<&Key>,
    src: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let plain: Box<dyn Read + Send + 'a> = match key {
        Some(k) => Box::new(Decryptor::new(k, src)?),
        None => Box::new(src),
    };
    Ok(match method {
        Method::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(plain)),
        Method::Zstd => Box::new(zstd::stream::read::Decoder::new(plain)?),
        Method::Brotli => Box::new(brotli::Decompressor::new(plain, 64 * 1024)),
        Method::None => plain,
    })
}

/// Decrypts and decompresses a whole object.
pub fn decode(method: Method, key: Option<&Key>, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader(method, key, data)?.read_to_end(&mut out)?;
    Ok(out)
}

/// A `Vec<u8>` writer that can be taken back after a boxed pipeline consumed its handle.
#[derive(Clone, Default)]
pub struct SharedVec(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedVec {
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Write for SharedVec {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyTransform;

    fn sample() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| (i / 7).to_le_bytes()).collect()
    }

    fn codecs() -> Vec<Codec> {
        let key = Key::from_text("0123456789abcdef0123456789abcdef", KeyTransform::None).expect("key");
        let mut v = Vec::new();
        for method in [Method::Lz4, Method::Zstd, Method::None] {
            v.push(Codec { method, zstd_level: 1, key: None });
            v.push(Codec { method, zstd_level: 1, key: Some(key.clone()) });
        }
        v
    }

    #[test]
    fn every_written_method_round_trips_with_and_without_encryption() {
        let data = sample();
        for c in codecs() {
            let enc = c.encode(&data).expect("encode");
            assert_eq!(decode(c.method, c.key.as_ref(), &enc).expect("decode"), data, "{:?}", c.method);
        }
    }

    #[test]
    fn lz4_objects_carry_walg_frame_header() {
        let c = Codec { method: Method::Lz4, zstd_level: 1, key: None };
        let enc = c.encode(b"hello").expect("encode");
        // Magic, then FLG 0x64 (v01, independent blocks, content checksum) and BD 0x70 (4 MiB).
        assert_eq!(&enc[..6], &[0x04, 0x22, 0x4d, 0x18, 0x64, 0x70]);
    }

    #[test]
    fn a_flipped_byte_or_a_cut_object_is_detected_for_every_compressed_method() {
        let data = sample();
        for c in codecs().into_iter().filter(|c| c.method != Method::None || c.key.is_some()) {
            let enc = c.encode(&data).expect("encode");
            let mut flipped = enc.clone();
            let mid = flipped.len() / 2;
            flipped[mid] ^= 0x55;
            assert!(decode(c.method, c.key.as_ref(), &flipped).is_err(), "flip {:?} {}", c.method, c.key.is_some());
            let cut = &enc[..enc.len() - 9];
            assert!(decode(c.method, c.key.as_ref(), cut).is_err(), "cut {:?} {}", c.method, c.key.is_some());
        }
    }

    #[test]
    fn brotli_objects_are_read() {
        let data = sample();
        let mut enc = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut enc, 4096, 3, 22);
            w.write_all(&data).expect("write");
        }
        assert_eq!(decode(Method::Brotli, None, &enc).expect("decode"), data);
    }

    #[test]
    fn object_names_follow_walg_extensions() {
        assert_eq!(Method::Zstd.object_name("00000001.history"), "00000001.history.zst");
        assert_eq!(Method::None.object_name("x"), "x");
        assert_eq!(Method::from_object_name("part_001.tar.lz4"), (Method::Lz4, "part_001.tar"));
        assert_eq!(Method::from_object_name("000000010000000000000001"), (Method::None, "000000010000000000000001"));
    }
}
