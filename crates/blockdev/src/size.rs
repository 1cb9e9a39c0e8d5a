//! Sizes, in the workspace's one grammar (`diskforge-size`), which is dib's:
//! `KiB MiB GiB TiB` are powers of 1024; `KB MB GB TB` **and bare `K M G T`** are powers of
//! 1000 (`parse_abs_size_spec`); `B` or no unit is bytes; fractions are exact. Percentages
//! (`50%`, `12.5%`) are relative sizes; dib has no `rest`, so block-device configs do not
//! either (write `100%`).

pub use diskforge_size::{Percent, Size, SizeError, SizeSpec, parse};

/// Bytes for humans: the largest binary unit, one decimal when inexact (`1.5 GiB`).
pub fn human(b: u64) -> String {
    Size::from_bytes(b).approx()
}

/// An absolute size or a percentage; `rest` is refused (dib writes `100%`).
pub fn parse_spec(s: &str) -> Result<SizeSpec, String> {
    match s.parse::<SizeSpec>() {
        Ok(SizeSpec::Rest) => Err("dib has no `rest`: write 100% for the remaining space".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.reason.to_string()),
    }
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
        ] {
            assert_eq!(parse(s).map(Size::bytes), Ok(want), "{s}");
        }
        for s in [
            "",
            "MiB",
            "12X",
            "1.2.3G",
            "99999999999999999999T",
            "-1",
            "rest",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
        assert_eq!(
            parse_spec("50%"),
            Ok(SizeSpec::Percent(Percent::from_whole(50).expect("50")))
        );
        for s in ["0%", "101%", "x%", "rest"] {
            assert!(parse_spec(s).is_err(), "{s}");
        }
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
