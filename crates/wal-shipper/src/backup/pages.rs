//! PostgreSQL data pages, as a base backup sees them (pure; no I/O beyond the readers and
//! files handed in):
//!
//! - which files hold pages (WAL-G's rule, so a bucket's increments mean the same to both);
//! - the page header, and PostgreSQL's page checksum (`checksum_impl.h`: 32 interleaved
//!   FNV-1a-style sums, the block number mixed in, reduced to 1..=65535);
//! - WAL-G's increment format "wi1": `'w' 'i' '1' 0x55`, the file size (u64 LE), the number
//!   of pages (u32 LE), their block numbers (u32 LE each), then the 8 KiB pages in that order.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// PostgreSQL's block size (BLCKSZ); WAL-G handles only this one.
pub const PAGE: usize = 8192;
/// Pages per 1 GiB relation segment file (RELSEG_SIZE).
pub const PAGES_PER_SEGMENT: u32 = 131072;
/// The increment header's magic.
pub const MAGIC: [u8; 4] = [b'w', b'i', b'1', 0x55];

/// Whether a file holds relation pages, by WAL-G's rule: under a tablespace folder (`base`
/// or `pg_tblspc` anywhere in the path), not transaction state, a non-empty multiple of the
/// page size, named `<relfilenode>` or `<relfilenode>.<segment>`. Forks (`_fsm`, `_vm`)
/// and everything else are copied whole.
pub fn is_paged_file(rel: &str, size: u64) -> bool {
    if ["pg_xact", "pg_clog", "pg_multixact"].iter().any(|d| rel.contains(d)) {
        return false;
    }
    (rel.contains("base") || rel.contains("pg_tblspc"))
        && size > 0
        && size.is_multiple_of(PAGE as u64)
        && is_relation_file_name(rel.rsplit('/').next().unwrap_or(rel))
}

/// `^\d+(\.\d+)?$`
fn is_relation_file_name(name: &str) -> bool {
    let (node, seg) = match name.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (name, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(node) && seg.is_none_or(digits)
}

/// The segment number of a relation file (`16384.3` is 3), for absolute block numbers.
pub fn segment_of(rel: &str) -> u32 {
    rel.rsplit('/').next().and_then(|n| n.split_once('.')).and_then(|(_, s)| s.parse().ok()).unwrap_or(0)
}

/// The fields of a page header a backup looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub lsn: u64,
    pub checksum: u16,
    pub flags: u16,
    pub lower: u16,
    pub upper: u16,
    pub special: u16,
    pub size_version: u16,
}

impl Header {
    pub fn parse(page: &[u8]) -> Header {
        let u16_at = |i: usize| u16::from_le_bytes([page[i], page[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([page[i], page[i + 1], page[i + 2], page[i + 3]]);
        Header {
            lsn: ((u32_at(0) as u64) << 32) | u32_at(4) as u64,
            checksum: u16_at(8),
            flags: u16_at(10),
            lower: u16_at(12),
            upper: u16_at(14),
            special: u16_at(16),
            size_version: u16_at(18),
        }
    }

    /// `PageIsNew`: never initialised (all zero, or extended but not yet written).
    pub fn is_new(&self) -> bool {
        self.upper == 0
    }

    /// A sane header for an 8 KiB, layout-4 page, as WAL-G checks it.
    pub fn is_valid(&self) -> bool {
        self.flags & !7 == 0
            && self.lower >= 24
            && self.lower <= self.upper
            && self.upper <= self.special
            && self.special as usize <= PAGE
            && self.lsn != 0
            && self.size_version as usize == PAGE + 4
    }
}

const BASE_OFFSETS: [u32; 32] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(16777619) ^ (t >> 17)
}

/// PostgreSQL's checksum of `page` at absolute block number `blkno` (the stored checksum
/// field counts as zero).
pub fn checksum(page: &[u8], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (row, chunk) in page[..PAGE].chunks_exact(4 * 32).enumerate() {
        for (j, sum) in sums.iter_mut().enumerate() {
            let o = 4 * j;
            let mut v = u32::from_le_bytes([chunk[o], chunk[o + 1], chunk[o + 2], chunk[o + 3]]);
            if row == 0 && j == 2 {
                // bytes 8..10 are pd_checksum (low half of the third word on little endian)
                v &= 0xFFFF_0000;
            }
            *sum = mix(*sum, v);
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// What a page says when checked: fine, or corrupt (a bad checksum, or garbage in a header).
/// New (never initialised) pages are fine, as for `pg_checksums`.
pub fn page_is_corrupt(page: &[u8], blkno: u32) -> bool {
    let h = Header::parse(page);
    if h.is_new() {
        return false;
    }
    h.checksum != checksum(page, blkno)
}

/// The blocks of a paged file an increment over `delta_lsn` must hold: every new page and
/// every page written at or after `delta_lsn`. `None` when a page is neither valid nor new,
/// so the file is stored whole instead. Reads `r` to its end, page by page, showing each
/// whole page to `each` (checksums, progress); stops at the first garbage page.
pub fn changed_blocks(r: &mut impl Read, delta_lsn: u64, mut each: impl FnMut(&[u8])) -> io::Result<Option<Vec<u32>>> {
    let mut page = vec![0u8; PAGE];
    let mut blocks = Vec::new();
    for blkno in 0u32.. {
        match read_page(r, &mut page)? {
            0 => break,
            n if n < PAGE => break, // a file cut while we read: WAL replay has the rest
            _ => {}
        }
        each(&page);
        let h = Header::parse(&page);
        if h.is_new() || (h.is_valid() && h.lsn >= delta_lsn) {
            blocks.push(blkno);
        } else if !h.is_valid() {
            return Ok(None);
        }
    }
    Ok(Some(blocks))
}

/// Fills `page` as far as `r` goes; returns how much was read.
fn read_page(r: &mut impl Read, page: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < page.len() {
        match r.read(&mut page[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The increment header for a file of `file_size` bytes holding `blocks`.
pub fn increment_header(file_size: u64, blocks: &[u32]) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + 4 * blocks.len());
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&file_size.to_le_bytes());
    h.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        h.extend_from_slice(&b.to_le_bytes());
    }
    h
}

/// The size of an increment holding `n` pages.
pub fn increment_size(n: usize) -> u64 {
    16 + 4 * n as u64 + (n * PAGE) as u64
}

/// Reads an increment: its header, then the listed pages of `file` (a page cut short by a
/// truncation while we read is zero-filled; WAL replay repairs it).
pub struct IncrementReader<F> {
    header: io::Cursor<Vec<u8>>,
    file: F,
    blocks: std::vec::IntoIter<u32>,
    page: Vec<u8>,
    at: usize,
}

impl<F: Read + Seek> IncrementReader<F> {
    pub fn new(file: F, file_size: u64, blocks: Vec<u32>) -> Self {
        let header = io::Cursor::new(increment_header(file_size, &blocks));
        IncrementReader { header, file, blocks: blocks.into_iter(), page: Vec::new(), at: 0 }
    }
}

impl<F: Read + Seek> Read for IncrementReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.header.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        if self.at == self.page.len() {
            let Some(b) = self.blocks.next() else { return Ok(0) };
            self.page.resize(PAGE, 0);
            self.file.seek(SeekFrom::Start(b as u64 * PAGE as u64))?;
            let got = read_page(&mut self.file, &mut self.page)?;
            self.page[got..].fill(0);
            self.at = 0;
        }
        let n = buf.len().min(self.page.len() - self.at);
        buf[..n].copy_from_slice(&self.page[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Applies an increment read from `r` to `file` (which holds the parent's copy): the file is
/// cut or extended to the recorded size and the listed pages written. Anything after the
/// last page, a bad magic or a short read is an error naming what was wrong.
pub fn apply_increment<F: Write + Seek + SetLen>(r: &mut impl Read, file: &mut F) -> io::Result<()> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut head = [0u8; 16];
    r.read_exact(&mut head).map_err(|e| bad(format!("increment header cut short: {e}")))?;
    if head[..4] != MAGIC {
        return Err(bad(format!("not a WAL-G increment (magic {:02x?})", &head[..4])));
    }
    let size = u64::from_le_bytes(head[4..12].try_into().unwrap_or_default());
    let n = u32::from_le_bytes(head[12..16].try_into().unwrap_or_default()) as usize;
    if n as u64 * PAGE as u64 > size.max(PAGE as u64).saturating_mul(2) {
        return Err(bad(format!("increment lists {n} pages for a file of {size} bytes")));
    }
    let mut list = vec![0u8; 4 * n];
    r.read_exact(&mut list).map_err(|e| bad(format!("increment block list cut short: {e}")))?;
    file.set_len(size)?;
    let mut page = vec![0u8; PAGE];
    for b in list.chunks_exact(4) {
        let blkno = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
        if (blkno + 1) * PAGE as u64 > size {
            return Err(bad(format!("increment page {blkno} lies beyond the file's {size} bytes")));
        }
        r.read_exact(&mut page).map_err(|e| bad(format!("increment page {blkno} cut short: {e}")))?;
        file.seek(SeekFrom::Start(blkno * PAGE as u64))?;
        file.write_all(&page)?;
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(bad("data after the increment's last page".into()));
    }
    Ok(())
}

/// Files (and test buffers) whose length can be set.
pub trait SetLen {
    fn set_len(&mut self, size: u64) -> io::Result<()>;
}

impl SetLen for std::fs::File {
    fn set_len(&mut self, size: u64) -> io::Result<()> {
        std::fs::File::set_len(self, size)
    }
}

impl SetLen for io::Cursor<Vec<u8>> {
    fn set_len(&mut self, size: u64) -> io::Result<()> {
        self.get_mut().resize(size as usize, 0);
        Ok(())
    }
}

/// Checks every page of a stream as it passes: blocks with a bad checksum whose LSN is
/// older than the backup's start (a newer page may be mid-write; WAL replay rewrites it).
pub struct Verifier {
    page: Vec<u8>,
    filled: usize,
    next_blkno: u32,
    start_lsn: u64,
    pub corrupt: Vec<u32>,
}

impl Verifier {
    /// For a file whose first page is absolute block `first_blkno`.
    pub fn new(first_blkno: u32, start_lsn: u64) -> Self {
        Verifier { page: vec![0u8; PAGE], filled: 0, next_blkno: first_blkno, start_lsn, corrupt: Vec::new() }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(PAGE - self.filled);
            self.page[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == PAGE {
                self.filled = 0;
                let blkno = self.next_blkno;
                self.next_blkno = self.next_blkno.wrapping_add(1);
                if page_is_corrupt(&self.page, blkno) && Header::parse(&self.page).lsn < self.start_lsn {
                    self.corrupt.push(blkno);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid page with `lsn`, its checksum set for `blkno`.
    fn page(lsn: u64, fill: u8, blkno: u32) -> Vec<u8> {
        let mut p = vec![fill; PAGE];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[10..12].copy_from_slice(&0u16.to_le_bytes());
        p[12..14].copy_from_slice(&40u16.to_le_bytes());
        p[14..16].copy_from_slice(&8000u16.to_le_bytes());
        p[16..18].copy_from_slice(&8192u16.to_le_bytes());
        p[18..20].copy_from_slice(&8196u16.to_le_bytes());
        let c = checksum(&p, blkno);
        p[8..10].copy_from_slice(&c.to_le_bytes());
        p
    }

    #[test]
    fn paged_files_follow_walg_rule() {
        assert!(is_paged_file("base/5/16384", 8192));
        assert!(is_paged_file("base/5/16384.2", 16384));
        assert!(!is_paged_file("base/5/16384_fsm", 8192), "forks are copied whole");
        assert!(!is_paged_file("base/5/16384", 100), "not a multiple of the page size");
        assert!(!is_paged_file("base/5/16384", 0));
        assert!(!is_paged_file("global/1262", 8192), "WAL-G leaves global/ whole");
        assert!(!is_paged_file("pg_xact/0000", 8192));
        assert_eq!(segment_of("base/5/16384.3"), 3);
        assert_eq!(segment_of("base/5/16384"), 0);
    }

    #[test]
    fn a_checksum_covers_every_bit_and_the_block_number() {
        // Real pages written by PostgreSQL are checked in the real tests (a cluster with
        // data checksums backs up with no corrupt block); this pins the properties.
        let p = page(0x1_0000_0028, 0xAB, 7);
        assert!(!page_is_corrupt(&p, 7));
        assert!(page_is_corrupt(&p, 8), "the block number is part of the checksum");
        let mut flipped = p.clone();
        flipped[5000] ^= 1;
        assert!(page_is_corrupt(&flipped, 7), "one flipped bit is caught");
        assert!(!page_is_corrupt(&vec![0u8; PAGE], 3), "new pages are never corrupt");
    }

    #[test]
    fn an_increment_holds_new_and_changed_pages_and_rebuilds_the_file() {
        let old = [page(100, 1, 0), page(100, 2, 1), page(100, 3, 2)].concat();
        let mut now = [page(100, 1, 0), page(300, 9, 1), page(100, 3, 2), vec![0u8; PAGE]].concat();
        now.extend(page(250, 5, 4));
        let blocks = changed_blocks(&mut now.as_slice(), 200, |_| {}).expect("scan").expect("valid");
        assert_eq!(blocks, vec![1, 3, 4]);
        let mut inc = Vec::new();
        IncrementReader::new(io::Cursor::new(now.clone()), now.len() as u64, blocks.clone())
            .read_to_end(&mut inc)
            .expect("read");
        assert_eq!(inc.len() as u64, increment_size(3));
        assert_eq!(&inc[..4], b"wi1\x55");
        let mut file = io::Cursor::new(old);
        apply_increment(&mut inc.as_slice(), &mut file).expect("apply");
        assert_eq!(file.into_inner(), now);
    }

    #[test]
    fn an_increment_shrinks_a_truncated_file_and_garbage_is_refused() {
        let old = [page(100, 1, 0), page(100, 2, 1)].concat();
        let inc = increment_header(PAGE as u64, &[]);
        let mut file = io::Cursor::new(old.clone());
        apply_increment(&mut inc.as_slice(), &mut file).expect("apply");
        assert_eq!(file.into_inner().len(), PAGE);
        let mut bad = inc.clone();
        bad[0] = b'x';
        assert!(apply_increment(&mut bad.as_slice(), &mut io::Cursor::new(old.clone())).is_err());
        let mut trailing = inc.clone();
        trailing.push(0);
        assert!(apply_increment(&mut trailing.as_slice(), &mut io::Cursor::new(old.clone())).is_err());
        let beyond = [increment_header(PAGE as u64, &[5]), vec![0u8; PAGE]].concat();
        assert!(apply_increment(&mut beyond.as_slice(), &mut io::Cursor::new(old)).is_err());
    }

    #[test]
    fn a_garbage_page_makes_the_file_go_whole() {
        let mut junk = page(100, 1, 0);
        junk[14..16].copy_from_slice(&10u16.to_le_bytes()); // upper < lower
        let data = [page(300, 1, 0), junk].concat();
        assert_eq!(changed_blocks(&mut data.as_slice(), 200, |_| {}).expect("scan"), None);
    }

    #[test]
    fn the_verifier_reports_old_corrupt_pages_and_forgives_pages_being_written() {
        let mut old_bad = page(100, 1, 1);
        old_bad[6000] ^= 0x10;
        let mut new_bad = page(500, 1, 2);
        new_bad[6000] ^= 0x10;
        let data = [page(100, 1, 0), old_bad, new_bad].concat();
        let mut v = Verifier::new(0, 400);
        for chunk in data.chunks(3000) {
            v.feed(chunk);
        }
        assert_eq!(v.corrupt, vec![1]);
    }
}
