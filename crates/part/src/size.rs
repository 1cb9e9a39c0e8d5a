//! Size strings: `512MiB`, `2G`, `1.75TB`, `4096`, `50%`, `rest`.

use std::fmt;
use std::str::FromStr;

/// Binary and decimal unit suffixes, longest first so `MiB` wins over `M` and `B`.
///
/// Single letters (`K`, `M`, `G`, `T`, `P`) are **binary**, as in `sfdisk`, `sgdisk` and
/// util-linux; `KiB`…`PiB` are binary too; `KB`/`kB`, `MB`, `GB`, `TB`, `PB` are **decimal**
/// (powers of 1000). A bare number or a `B` suffix is bytes. Suffixes are case-insensitive except
/// that `b` alone is not accepted (it reads like "bits").
const UNITS: &[(&str, u64)] = &[
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("pib", 1 << 50),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("pb", 1_000_000_000_000_000),
    ("k", 1 << 10),
    ("m", 1 << 20),
    ("g", 1 << 30),
    ("t", 1 << 40),
    ("p", 1 << 50),
    ("", 1),
];

/// Why a size string was rejected (the caller adds which partition and field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError(pub String);

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SizeError {}

/// Parse an absolute size in bytes: a number (fractions allowed: `1.5G`) and an optional unit.
///
/// Fractions are truncated to whole bytes. See [`SizeSpec`] for the units.
pub fn parse_bytes(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(SizeError(
            "expected a number with an optional unit (512MiB, 2G, 1.5TB, 4096)".into(),
        ));
    }
    if unit == "B" {
        return parse_number(num, 1);
    }
    let lower = unit.to_ascii_lowercase();
    let mult = UNITS
        .iter()
        .find(|(u, _)| *u == lower && unit != "b")
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            SizeError(format!(
                "unknown unit {unit:?} (binary: K M G T P, KiB MiB GiB TiB PiB; \
                 decimal: KB MB GB TB PB)"
            ))
        })?;
    parse_number(num, mult)
}

/// `int[.frac] * mult`, exactly, truncated to an integer.
fn parse_number(num: &str, mult: u64) -> Result<u64, SizeError> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return Err(SizeError(format!("{num:?} is not a number")));
    }
    let overflow = || SizeError("too large (more than 2^64 bytes)".into());
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| overflow())?
    };
    let mut total = int_v.checked_mul(u128::from(mult)).ok_or_else(overflow)?;
    if !frac.is_empty() {
        let frac_v: u128 = frac
            .parse()
            .map_err(|_| SizeError(format!("{num:?} is not a number")))?;
        let scale = 10u128.pow(frac.len() as u32);
        total += frac_v * u128::from(mult) / scale;
    }
    u64::try_from(total).map_err(|_| overflow())
}

/// The size of one partition, as written in a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// An absolute size in bytes (rounded up to whole sectors when planned).
    Bytes(u64),
    /// A percentage (1–100) of the space left after the fixed-size partitions.
    Percent(u32),
    /// Whatever remains after every other partition.
    Rest,
}

impl FromStr for SizeSpec {
    type Err = SizeError;

    /// `rest` (also `remaining`, `-`), `NN%`, or an absolute size (see [`parse_bytes`]).
    fn from_str(s: &str) -> Result<Self, SizeError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("rest") || t.eq_ignore_ascii_case("remaining") || t == "-" {
            return Ok(SizeSpec::Rest);
        }
        if let Some(p) = t.strip_suffix('%') {
            let v: u32 = p
                .trim()
                .parse()
                .map_err(|_| SizeError("a percentage must be a whole number: 1% to 100%".into()))?;
            if v == 0 || v > 100 {
                return Err(SizeError("a percentage must be between 1% and 100%".into()));
            }
            return Ok(SizeSpec::Percent(v));
        }
        match parse_bytes(t)? {
            0 => Err(SizeError("a partition cannot be 0 bytes".into())),
            b => Ok(SizeSpec::Bytes(b)),
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Bytes(b) => f.write_str(&format_bytes(*b)),
            SizeSpec::Percent(p) => write!(f, "{p}%"),
            SizeSpec::Rest => f.write_str("rest"),
        }
    }
}

/// Render bytes with the largest binary unit that divides them exactly (`512MiB`, `1GiB`),
/// else as a plain byte count, so the result parses back to the same value.
pub fn format_bytes(b: u64) -> String {
    for (unit, m) in [
        ("PiB", 1u64 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if b >= m && b.is_multiple_of(m) {
            return format!("{}{unit}", b / m);
        }
    }
    b.to_string()
}

/// Render bytes approximately for humans (`1.5 GiB`), one decimal.
pub fn human_bytes(b: u64) -> String {
    let units = [
        ("PiB", 1u64 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, m) in units {
        if b >= m {
            if b.is_multiple_of(m) {
                return format!("{} {unit}", b / m);
            }
            return format!("{:.1} {unit}", b as f64 / m as f64);
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sizes_table() {
        let ok: &[(&str, SizeSpec)] = &[
            ("4096", SizeSpec::Bytes(4096)),
            ("4096B", SizeSpec::Bytes(4096)),
            ("512K", SizeSpec::Bytes(512 << 10)),
            ("512k", SizeSpec::Bytes(512 << 10)),
            ("512KiB", SizeSpec::Bytes(512 << 10)),
            ("512KB", SizeSpec::Bytes(512_000)),
            ("512kB", SizeSpec::Bytes(512_000)),
            ("512MiB", SizeSpec::Bytes(512 << 20)),
            ("512M", SizeSpec::Bytes(512 << 20)),
            ("100MB", SizeSpec::Bytes(100_000_000)),
            ("2G", SizeSpec::Bytes(2 << 30)),
            ("2GiB", SizeSpec::Bytes(2 << 30)),
            ("2GB", SizeSpec::Bytes(2_000_000_000)),
            ("1T", SizeSpec::Bytes(1 << 40)),
            ("1TiB", SizeSpec::Bytes(1 << 40)),
            ("1.75TB", SizeSpec::Bytes(1_750_000_000_000)),
            ("1.5G", SizeSpec::Bytes(3 << 29)),
            ("0.5MiB", SizeSpec::Bytes(512 << 10)),
            (" 8 MiB ", SizeSpec::Bytes(8 << 20)),
            ("1P", SizeSpec::Bytes(1 << 50)),
            ("50%", SizeSpec::Percent(50)),
            ("100%", SizeSpec::Percent(100)),
            ("rest", SizeSpec::Rest),
            ("REST", SizeSpec::Rest),
            ("remaining", SizeSpec::Rest),
            ("-", SizeSpec::Rest),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<SizeSpec>().as_ref(), Ok(want), "{s:?}");
        }
    }

    #[test]
    fn reject_bad_sizes_table() {
        let bad: &[(&str, &str)] = &[
            ("", "expected a number"),
            ("MiB", "expected a number"),
            ("12X", "unknown unit \"X\""),
            ("12b", "unknown unit \"b\""),
            ("12 bytes", "unknown unit"),
            ("1.2.3G", "is not a number"),
            ("0", "cannot be 0 bytes"),
            ("0%", "between 1% and 100%"),
            ("101%", "between 1% and 100%"),
            ("12.5%", "whole number"),
            ("-5G", "expected a number"),
            ("20000P", "too large"),
            ("99999999999999999999999", "too large"),
        ];
        for (s, want) in bad {
            let err = s.parse::<SizeSpec>().expect_err(s).to_string();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for b in [
            1u64,
            512,
            1 << 20,
            512 << 20,
            3 << 29,
            1 << 40,
            1_000_000,
            1234567,
        ] {
            assert_eq!(parse_bytes(&format_bytes(b)), Ok(b), "{b}");
        }
        assert_eq!(format_bytes(512 << 20), "512MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(100), "100 B");
    }
}
