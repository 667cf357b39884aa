//! PostgreSQL's WAL file names, as pure functions: segments (`TTTTTTTTXXXXXXXXYYYYYYYY`),
//! timeline history files (`TTTTTTTT.history`), `.partial` and `.backup` files. The segment
//! size is 16 MiB unless a caller says otherwise (initdb `--wal-segsize`).

use std::fmt;

/// The default WAL segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A WAL segment: timeline and segment number (for the segment size in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub number: u64,
}

/// What kind of file PostgreSQL handed to `archive_command` (or asked for in `restore_command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFile {
    Segment(Segment),
    /// `<segment>.partial`: the last, incomplete segment of a timeline that ended on promotion.
    Partial(Segment),
    /// `<segment>.<8-hex offset>.backup`: a backup history file.
    BackupHistory(Segment),
    /// `<timeline>.history`.
    History(u32),
}

impl Segment {
    /// Segments per "xlog id" (the middle 8 hex digits) for this segment size.
    fn per_id(segment_size: u64) -> u64 {
        0x1_0000_0000 / segment_size
    }

    /// Parses a 24-hex segment name. `None` for anything else.
    pub fn parse(name: &str, segment_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        if seg >= Self::per_id(segment_size) {
            return None;
        }
        Some(Segment { timeline, number: log * Self::per_id(segment_size) + seg })
    }

    /// The segment holding `lsn` on `timeline`.
    pub fn containing(timeline: u32, lsn: u64, segment_size: u64) -> Segment {
        Segment { timeline, number: lsn / segment_size }
    }

    /// The file name, 24 upper-case hex digits.
    pub fn name(&self, segment_size: u64) -> String {
        let per = Self::per_id(segment_size);
        format!("{:08X}{:08X}{:08X}", self.timeline, self.number / per, self.number % per)
    }

    pub fn next(&self) -> Segment {
        Segment { timeline: self.timeline, number: self.number + 1 }
    }

    /// The first LSN in this segment.
    pub fn start_lsn(&self, segment_size: u64) -> u64 {
        self.number * segment_size
    }
}

impl WalFile {
    /// Parses a file name as PostgreSQL passes it (`%f`). `None` for names PostgreSQL never
    /// archives, which a caller reports rather than uploads under a wrong key.
    pub fn parse(name: &str, segment_size: u64) -> Option<WalFile> {
        if let Some(seg) = Segment::parse(name, segment_size) {
            return Some(WalFile::Segment(seg));
        }
        if let Some(tli) = name.strip_suffix(".history") {
            if tli.len() == 8 && tli.bytes().all(|b| b.is_ascii_hexdigit()) {
                return u32::from_str_radix(tli, 16).ok().map(WalFile::History);
            }
            return None;
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return Segment::parse(seg, segment_size).map(WalFile::Partial);
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.')?;
            if offset.len() != 8 || !offset.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            return Segment::parse(seg, segment_size).map(WalFile::BackupHistory);
        }
        None
    }

    /// The segment this file belongs to, if any (history files belong to none).
    pub fn segment(&self) -> Option<Segment> {
        match self {
            WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupHistory(s) => Some(*s),
            WalFile::History(_) => None,
        }
    }
}

/// An LSN, printed as PostgreSQL prints it (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `X/Y` as PostgreSQL prints an LSN.
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The first run of 24 upper-case hex digits in `s` (how WAL-G reads a segment out of an
/// object key or a backup name).
pub fn first_segment_in(s: &str, segment_size: u64) -> Option<Segment> {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 24 <= b.len() {
        if b[i..i + 24].iter().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)) {
            return Segment::parse(&s[i..i + 24], segment_size);
        }
        i += 1;
    }
    None
}

/// A timeline history file's entries: (parent timeline, switch LSN), oldest first.
pub fn parse_history(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut it = l.split_whitespace();
            let tli = it.next()?.parse::<u32>().ok()?;
            let lsn = Lsn::parse(it.next()?)?;
            Some((tli, lsn.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn segment_names_round_trip_across_an_xlog_id_boundary() {
        let s = Segment::parse("0000000100000000000000FF", S).expect("valid");
        assert_eq!(s.number, 255);
        assert_eq!(s.next().name(S), "000000010000000100000000");
        assert_eq!(Segment::parse("000000010000000100000000", S), Some(s.next()));
    }

    #[test]
    fn segment_number_past_the_id_is_not_a_segment() {
        assert_eq!(Segment::parse("000000010000000000000100", S), None);
        assert_eq!(Segment::parse("00000001000000000000000g", S), None);
    }

    #[test]
    fn every_kind_postgres_archives_is_recognised() {
        let seg = Segment { timeline: 2, number: 3 };
        assert_eq!(WalFile::parse("000000020000000000000003", S), Some(WalFile::Segment(seg)));
        assert_eq!(WalFile::parse("000000020000000000000003.partial", S), Some(WalFile::Partial(seg)));
        assert_eq!(WalFile::parse("000000020000000000000003.00000028.backup", S), Some(WalFile::BackupHistory(seg)));
        assert_eq!(WalFile::parse("0000000A.history", S), Some(WalFile::History(10)));
        assert_eq!(WalFile::parse("RECOVERYXLOG", S), None);
        assert_eq!(WalFile::parse("../etc/passwd", S), None);
    }

    #[test]
    fn lsn_prints_and_parses_as_postgres_does() {
        assert_eq!(Lsn::parse("16/B374D848"), Some(Lsn(0x16_B374_D848)));
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("nonsense"), None);
    }

    #[test]
    fn a_backup_name_yields_its_start_segment() {
        let s = first_segment_in("base_000000010000000000000004_D_000000010000000000000002", S);
        assert_eq!(s, Some(Segment { timeline: 1, number: 4 }));
    }

    #[test]
    fn history_entries_skip_comments_and_blank_lines() {
        let h = "1\t0/3000000\tno recovery target specified\n\n# c\n2\t0/5000098\tbefore 2000-01-01\n";
        assert_eq!(parse_history(h), vec![(1, 0x300_0000), (2, 0x500_0098)]);
    }

    mod hostile {
        //! Object keys and history files are whatever the bucket or pg_wal holds.
        use super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9A-F]{24}",
                "[0-9A-Fa-f]{24}(\\.partial|\\.[0-9A-F]{8}\\.backup|\\.lz4|)",
                "[0-9A-F]{8}\\.history",
                "[0-9A-Fa-fg/._ -]{0,40}",
                "\\PC{0,30}",
            ]
        }

        proptest! {
            #[test]
            fn wal_file_names_of_any_content_parse_or_are_refused_and_segments_round_trip(
                n in name(),
                history in "[0-9A-Fa-f/ \t\n#x-]{0,200}",
            ) {
                if let Some(seg) = Segment::parse(&n, S) {
                    prop_assert_eq!(seg.name(S), n.to_ascii_uppercase());
                    prop_assert_eq!(Segment::containing(seg.timeline, seg.start_lsn(S), S), seg);
                }
                let _ = WalFile::parse(&n, S).map(|f| f.segment());
                if let Some(l) = Lsn::parse(&n) {
                    prop_assert_eq!(Lsn::parse(&l.to_string()), Some(l));
                }
                let _ = first_segment_in(&n, S);
                let _ = parse_history(&history);
            }

            #[test]
            fn every_segment_name_reads_back_as_the_same_segment(timeline in any::<u32>(), number in 0u64..(1 << 40)) {
                let seg = Segment { timeline, number };
                prop_assert_eq!(Segment::parse(&seg.name(S), S), Some(seg));
            }
        }
    }
}
