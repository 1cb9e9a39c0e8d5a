//! The one size grammar of diskforge: `512MiB`, `2GB`, `1.5G`, `4096`, and — where a layout
//! allows them — `50%` and `rest`.
//!
//! [`Size`] is an absolute byte count; [`SizeSpec`] adds [`Percent`] and `rest` for layouts.
//! Parsing is exact (integer arithmetic, no `f64`) and never panics. This crate does not
//! round to sectors or alignments (callers do, with [`Size::align_up`]) and does not print
//! approximate sizes except through [`Size::approx`].
//!
//! The grammar follows diskimage-builder's block-device code (`SIZE_UNIT_SPECS` in
//! `diskimage_builder/block_device/utils.py`) and parted; it is documented once, in the
//! crate README, included below.
#![doc = include_str!("../README.md")]

use std::fmt;
use std::str::FromStr;

/// Units with their multipliers; matched exactly (case-sensitive).
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("PiB", 1 << 50),
    ("KB", 1_000),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("PB", 1_000_000_000_000_000),
    ("K", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
];

/// Binary units used to print a [`Size`], largest first.
const BINARY: &[(&str, u64)] = &[
    ("PiB", 1 << 50),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// Parts per million in 100 %.
const PPM_FULL: u32 = 1_000_000;

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// Nothing but whitespace.
    #[error("empty size")]
    Empty,
    /// A leading `-`.
    #[error("sizes cannot be negative")]
    Negative,
    /// A leading `+`.
    #[error("write the number without a sign")]
    Sign,
    /// `NaN`, `inf`, `infinity` in any case.
    #[error("not a finite number")]
    NotFinite,
    /// No digit where the number should start.
    #[error("expected a number with an optional unit (512MiB, 2GB, 1.5G, 4096)")]
    NotANumber,
    /// More than one `.` in the number.
    #[error("more than one decimal point")]
    MultipleDots,
    /// The value does not fit in 64 bits of bytes.
    #[error("too large (more than 2^64-1 bytes)")]
    Overflow,
    /// A unit not in the grammar (the unit as written).
    #[error(
        "unknown unit {unit:?}{hint} (binary: KiB MiB GiB TiB PiB; decimal: KB MB GB TB PB, K M G T P; bytes: B)"
    )]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// `"; units are case-sensitive: did you mean X?"` or empty.
        hint: String,
    },
    /// Text after the number and unit that is not a unit (the text as written).
    #[error("unexpected {0:?} after the number")]
    TrailingGarbage(String),
    /// A percentage of 0 or more than 100.
    #[error("a percentage must be more than 0% and at most 100%")]
    PercentRange,
    /// A percentage with more than four decimal places.
    #[error("a percentage has at most four decimal places")]
    PercentPrecision,
    /// A percentage without its `%`.
    #[error("expected a percentage such as 50% or 12.5%")]
    NotAPercent,
    /// `%` or `rest` where only an absolute size is allowed.
    #[error("only an absolute size is allowed here, not a percentage or rest")]
    NotAbsolute,
}

/// A size that could not be parsed: the input as given and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason}")]
pub struct SizeError {
    /// The text that was refused, exactly as given.
    pub input: String,
    /// Why.
    pub reason: Reason,
}

impl SizeError {
    fn new(input: &str, reason: Reason) -> Self {
        SizeError {
            input: input.to_owned(),
            reason,
        }
    }
}

/// An absolute size in bytes.
///
/// Parses with the grammar in the crate docs, prints as the largest exact binary unit
/// (`512MiB`) or as bytes, serialises as an integer byte count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

impl Size {
    /// Zero bytes.
    pub const ZERO: Size = Size(0);

    /// A size of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Size {
        Size(bytes)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// `self + other`, or `None` past `u64::MAX` bytes.
    pub fn checked_add(self, other: Size) -> Option<Size> {
        self.0.checked_add(other.0).map(Size)
    }

    /// `self - other`, or `None` below zero.
    pub fn checked_sub(self, other: Size) -> Option<Size> {
        self.0.checked_sub(other.0).map(Size)
    }

    /// `self * n`, or `None` past `u64::MAX` bytes.
    pub fn checked_mul(self, n: u64) -> Option<Size> {
        self.0.checked_mul(n).map(Size)
    }

    /// The next multiple of `align` bytes at or above `self`; `None` when `align` is 0 or the
    /// result is past `u64::MAX`.
    pub fn align_up(self, align: u64) -> Option<Size> {
        if align == 0 {
            return None;
        }
        match self.0 % align {
            0 => Some(self),
            r => self.0.checked_add(align - r).map(Size),
        }
    }

    /// An approximate human rendering with one decimal (`1.5 GiB`, `100 B`); exact values
    /// print without decimals (`2 GiB`). Not meant to be parsed back (use `Display`).
    pub fn approx(self) -> String {
        let b = self.0;
        for &(unit, m) in BINARY {
            if b >= m {
                if b.is_multiple_of(m) {
                    return format!("{} {unit}", b / m);
                }
                // Display only: the precision of f64 is plenty for one decimal.
                #[allow(clippy::cast_precision_loss)]
                return format!("{:.1} {unit}", b as f64 / m as f64);
            }
        }
        format!("{b} B")
    }
}

impl From<Size> for u64 {
    fn from(s: Size) -> u64 {
        s.0
    }
}

impl fmt::Display for Size {
    /// The largest binary unit that divides the size exactly (`512MiB`, `3KiB`), else bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &(unit, m) in BINARY {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{unit}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Size, SizeError> {
        parse(s)
    }
}

/// Parse an absolute size (see the crate docs for the grammar).
pub fn parse(s: &str) -> Result<Size, SizeError> {
    parse_absolute(s).map_err(|reason| SizeError::new(s, reason))
}

/// A number split into its integer digits and fraction digits (both ASCII digits only).
struct Decimal<'a> {
    int: &'a str,
    frac: &'a str,
}

/// Split `t` (already trimmed, non-empty) into a decimal number and the rest after it.
fn split_number(t: &str) -> Result<(Decimal<'_>, &str), Reason> {
    if t.starts_with('-') {
        return Err(Reason::Negative);
    }
    if t.starts_with('+') {
        return Err(Reason::Sign);
    }
    let lower = t.to_ascii_lowercase();
    if ["nan", "inf", "infinity"].contains(&lower.as_str()) {
        return Err(Reason::NotFinite);
    }
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') {
        return Err(Reason::MultipleDots);
    }
    if int.is_empty() {
        return Err(Reason::NotANumber);
    }
    Ok((Decimal { int, frac }, rest))
}

fn parse_absolute(s: &str) -> Result<Size, Reason> {
    let t = s.trim();
    if t.is_empty() {
        return Err(Reason::Empty);
    }
    if t == "rest" || t.ends_with('%') {
        return Err(Reason::NotAbsolute);
    }
    let (num, rest) = split_number(t)?;
    let unit = rest.trim_start();
    let mult = unit_multiplier(unit)?;
    scale(&num, mult).map(Size)
}

/// The multiplier of `unit` (trailing whitespace already trimmed by the caller's trim).
fn unit_multiplier(unit: &str) -> Result<u64, Reason> {
    if let Some(&(_, m)) = UNITS.iter().find(|(u, _)| *u == unit) {
        return Ok(m);
    }
    if !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(Reason::TrailingGarbage(unit.to_owned()));
    }
    let hint = UNITS
        .iter()
        .find(|(u, _)| u.len() > 1 && u.eq_ignore_ascii_case(unit))
        .or_else(|| {
            UNITS
                .iter()
                .find(|(u, _)| u.len() == 1 && u.eq_ignore_ascii_case(unit))
        })
        .map(|(u, _)| format!("; units are case-sensitive: did you mean {u}?"))
        .unwrap_or_default();
    Err(Reason::UnknownUnit {
        unit: unit.to_owned(),
        hint,
    })
}

/// `num * mult`, exactly, truncated to whole bytes.
fn scale(num: &Decimal<'_>, mult: u64) -> Result<u64, Reason> {
    let mut int: u128 = 0;
    for d in num.int.bytes() {
        int = int * 10 + u128::from(d - b'0');
        if int > u128::from(u64::MAX) {
            return Err(Reason::Overflow);
        }
    }
    let whole = int * u128::from(mult);
    // floor(0.frac * mult): multiply the fraction's digits by mult from the right, carrying;
    // what is carried out of the leftmost digit is the integer part. Exact for any length.
    let mut carry: u128 = 0;
    for d in num.frac.bytes().rev() {
        carry = (u128::from(d - b'0') * u128::from(mult) + carry) / 10;
    }
    u64::try_from(whole + carry).map_err(|_| Reason::Overflow)
}

/// A share of some total, from 0 (exclusive) to 100 % (inclusive), stored exactly as parts per
/// million (four decimal places of a percent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u32);

impl Percent {
    /// 100 %.
    pub const FULL: Percent = Percent(PPM_FULL);

    /// `ppm` parts per million (`500_000` = 50 %); `None` outside `1..=1_000_000`.
    pub const fn from_ppm(ppm: u32) -> Option<Percent> {
        if ppm == 0 || ppm > PPM_FULL {
            None
        } else {
            Some(Percent(ppm))
        }
    }

    /// A whole percentage (`50` = 50 %); `None` outside `1..=100`.
    pub const fn from_whole(p: u32) -> Option<Percent> {
        if p == 0 || p > 100 {
            None
        } else {
            Some(Percent(p * 10_000))
        }
    }

    /// Parts per million.
    pub const fn ppm(self) -> u32 {
        self.0
    }

    /// `total * self`, truncated to an integer.
    pub fn of(self, total: u64) -> u64 {
        let v = u128::from(total) * u128::from(self.0) / u128::from(PPM_FULL);
        // v <= total because self.0 <= PPM_FULL.
        u64::try_from(v).unwrap_or(total)
    }
}

impl fmt::Display for Percent {
    /// `50%`, `12.5%`, `33.3333%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / 10_000, self.0 % 10_000);
        if frac == 0 {
            write!(f, "{int}%")
        } else {
            let digits = format!("{frac:04}");
            write!(f, "{int}.{}%", digits.trim_end_matches('0'))
        }
    }
}

impl FromStr for Percent {
    type Err = SizeError;

    /// `N%` with `0 < N <= 100` and at most four decimal places.
    fn from_str(s: &str) -> Result<Percent, SizeError> {
        let t = s.trim();
        let Some(body) = t.strip_suffix('%') else {
            return Err(SizeError::new(s, Reason::NotAPercent));
        };
        parse_percent(body.trim_end()).map_err(|r| SizeError::new(s, r))
    }
}

fn parse_percent(body: &str) -> Result<Percent, Reason> {
    if body.is_empty() {
        return Err(Reason::NotANumber);
    }
    let (num, rest) = split_number(body)?;
    if !rest.is_empty() {
        return Err(Reason::TrailingGarbage(rest.to_owned()));
    }
    let frac = num.frac.trim_end_matches('0');
    if frac.len() > 4 {
        return Err(Reason::PercentPrecision);
    }
    let mut int: u64 = 0;
    for d in num.int.bytes() {
        int = int * 10 + u64::from(d - b'0');
        if int > 100 {
            return Err(Reason::PercentRange);
        }
    }
    let mut f: u64 = 0;
    for i in 0..4 {
        f = f * 10 + frac.as_bytes().get(i).map_or(0, |d| u64::from(d - b'0'));
    }
    let ppm = int * 10_000 + f;
    u32::try_from(ppm)
        .ok()
        .and_then(Percent::from_ppm)
        .ok_or(Reason::PercentRange)
}

/// A size as a layout may write it: absolute, a percentage, or the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeSpec {
    /// An absolute size.
    Absolute(Size),
    /// A share of the space the layout defines (for partitions: what the fixed-size ones
    /// leave).
    Percent(Percent),
    /// Whatever remains.
    Rest,
}

impl SizeSpec {
    /// The absolute size, if this is one.
    pub fn absolute(self) -> Option<Size> {
        match self {
            SizeSpec::Absolute(s) => Some(s),
            _ => None,
        }
    }
}

impl From<Size> for SizeSpec {
    fn from(s: Size) -> SizeSpec {
        SizeSpec::Absolute(s)
    }
}

impl FromStr for SizeSpec {
    type Err = SizeError;

    /// `rest`, `N%`, or an absolute size.
    fn from_str(s: &str) -> Result<SizeSpec, SizeError> {
        let t = s.trim();
        if t == "rest" {
            return Ok(SizeSpec::Rest);
        }
        if t.ends_with('%') {
            return t
                .parse()
                .map(SizeSpec::Percent)
                .map_err(|e: SizeError| SizeError::new(s, e.reason));
        }
        parse(s).map(SizeSpec::Absolute)
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Absolute(s) => s.fmt(f),
            SizeSpec::Percent(p) => p.fmt(f),
            SizeSpec::Rest => f.write_str("rest"),
        }
    }
}

mod serde_impl {
    //! Serde: sizes serialise as integer bytes and deserialise from integers or strings.

    use super::{Percent, Size, SizeSpec};
    use serde::de::{self, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::fmt;
    use std::marker::PhantomData;
    use std::str::FromStr;

    /// Accepts a non-negative integer (bytes) or a string parsed with `FromStr`.
    struct IntOrStr<T>(PhantomData<T>);

    impl<T> Visitor<'_> for IntOrStr<T>
    where
        T: FromStr<Err = super::SizeError> + From<Size>,
    {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: an integer number of bytes or a string such as \"512MiB\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            Ok(T::from(Size(v)))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            u64::try_from(v)
                .map(|v| T::from(Size(v)))
                .map_err(|_| E::custom(format!("invalid size {v}: sizes cannot be negative")))
        }

        fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
            u64::try_from(v)
                .map(|v| T::from(Size(v)))
                .map_err(|_| E::custom(format!("invalid size {v}: too large")))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            Err(E::custom(format!(
                "invalid size {v}: write fractional sizes as a string (\"1.5GiB\")"
            )))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.parse().map_err(E::custom)
        }
    }

    impl Serialize for Size {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(self.0)
        }
    }

    impl<'de> Deserialize<'de> for Size {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
            d.deserialize_any(IntOrStr::<Size>(PhantomData))
        }
    }

    impl Serialize for Percent {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self)
        }
    }

    impl<'de> Deserialize<'de> for Percent {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Percent, D::Error> {
            let s = String::deserialize(d)?;
            s.parse().map_err(de::Error::custom)
        }
    }

    impl Serialize for SizeSpec {
        /// Absolute sizes as integer bytes, `"N%"` and `"rest"` as strings.
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                SizeSpec::Absolute(size) => size.serialize(s),
                other => s.collect_str(other),
            }
        }
    }

    impl<'de> Deserialize<'de> for SizeSpec {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SizeSpec, D::Error> {
            d.deserialize_any(IntOrStr::<SizeSpec>(PhantomData))
        }
    }
}

#[cfg(test)]
mod tests;
