//! Sizes as diskimage-builder writes them (`utils.parse_abs_size_spec`): `KiB MiB GiB TiB`
//! are powers of 1024; `KB MB GB TB` **and bare `K M G T`** are powers of 1000 (unlike
//! util-linux and diskforge-part, where a bare `G` is binary); `B` or no unit is bytes; the
//! number may have a fraction (`2.5GiB`) and one space may separate it from the unit. Units
//! are case-sensitive, as in dib. Percentages (`50%`, fractions allowed) are relative sizes.
//!
//! This is the minimal parser this crate needs until the workspace's shared size grammar
//! (`diskforge-size`) lands; its API mirrors that crate's (`Size`, `SizeSpec`, `Percent::of`).

use std::fmt;

use serde::{Deserialize, Serialize};

const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("K", 1_000),
    ("B", 1),
    ("", 1),
];

/// Why a size string was rejected (the caller names node and field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct SizeError {
    /// What is wrong.
    pub reason: String,
}

fn err(reason: impl Into<String>) -> SizeError {
    SizeError {
        reason: reason.into(),
    }
}

/// An absolute size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Size(pub u64);

impl Size {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human(self.0))
    }
}

/// A percentage in hundredths (`12.5%` is 1250); at most 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Percent(pub u32);

impl Percent {
    /// This share of `total`, rounded down.
    pub fn of(self, total: u64) -> u64 {
        (u128::from(total) * u128::from(self.0) / 10_000) as u64
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 100 == 0 {
            write!(f, "{}%", self.0 / 100)
        } else {
            write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
        }
    }
}

/// An absolute or relative size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeSpec {
    /// Bytes.
    Absolute(Size),
    /// A share of the space still free.
    Percent(Percent),
}

/// Parse an absolute size (dib's grammar, see the module header).
pub fn parse(s: &str) -> Result<Size, SizeError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    if num.is_empty() {
        return Err(err(
            "expected a number with an optional unit (512MiB, 2GB, 1.5G, 4096)",
        ));
    }
    let mult = UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            err(format!(
                "unknown unit {unit:?} (KiB MiB GiB TiB are powers of 1024; K M G T, KB MB GB \
                 TB powers of 1000; B or none bytes)"
            ))
        })?;
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || frac.len() > 18 {
        return Err(err(format!("{num:?} is not a number")));
    }
    let too_big = || err("too large (more than 2^64 bytes)");
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_big())?
    };
    let mut total = int_v.checked_mul(u128::from(mult)).ok_or_else(too_big)?;
    if !frac.is_empty() {
        let f: u128 = frac
            .parse()
            .map_err(|_| err(format!("{num:?} is not a number")))?;
        total += f * u128::from(mult) / 10u128.pow(frac.len() as u32);
    }
    u64::try_from(total).map(Size).map_err(|_| too_big())
}

/// Parse an absolute size or a percentage (`NN%`, `NN.N%`, more than 0 and at most 100).
pub fn parse_spec(s: &str) -> Result<SizeSpec, SizeError> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p = p.trim();
        let (int, frac) = p.split_once('.').unwrap_or((p, ""));
        let ok = !int.is_empty()
            && int.len() <= 3
            && frac.len() <= 2
            && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit());
        if !ok {
            return Err(err(
                "a percentage is a number from 0.01 to 100 (two decimals at most)",
            ));
        }
        let hundredths = int.parse::<u32>().unwrap_or(0) * 100
            + format!("{frac:0<2}").parse::<u32>().unwrap_or(0);
        if hundredths == 0 || hundredths > 10_000 {
            return Err(err("a percentage must be more than 0% and at most 100%"));
        }
        return Ok(SizeSpec::Percent(Percent(hundredths)));
    }
    parse(t).map(SizeSpec::Absolute)
}

/// Bytes for humans: the largest binary unit, one decimal when inexact (`1.5 GiB`).
pub fn human(b: u64) -> String {
    for (unit, m) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if b >= m {
            if b % m == 0 {
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
    fn dib_grammar() {
        for (s, want) in [
            ("4096", 4096u64),
            ("12KB", 12_000),
            ("12K", 12_000),
            ("2.5GiB", 5 << 29),
            ("1.75TB", 1_750_000_000_000),
            ("3G", 3_000_000_000),
            ("1800M", 1_800_000_000),
            ("8MiB", 8 << 20),
            ("100 MiB", 100 << 20),
            ("1B", 1),
        ] {
            assert_eq!(parse(s), Ok(Size(want)), "{s}");
        }
        for s in ["", "MiB", "12X", "1.2.3G", "3g", "99999999999999999999T", "-1"] {
            assert!(parse(s).is_err(), "{s}");
        }
        assert_eq!(parse_spec("50%"), Ok(SizeSpec::Percent(Percent(5000))));
        assert_eq!(parse_spec("12.5%"), Ok(SizeSpec::Percent(Percent(1250))));
        for s in ["0%", "101%", "x%", "1.234%"] {
            assert!(parse_spec(s).is_err(), "{s}");
        }
        assert_eq!(Percent(5000).of(1000), 500);
        assert_eq!(Percent(1250).to_string(), "12.50%");
    }
}
