//! Table-driven tests of the grammar and property tests of parsing and printing.

use super::*;
use proptest::prelude::*;

const KI: u64 = 1 << 10;
const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

#[test]
fn absolute_sizes_table() {
    let ok: &[(&str, u64)] = &[
        ("0", 0),
        ("4096", 4096),
        ("4096B", 4096),
        ("4096 B", 4096),
        ("  8 MiB  ", 8 * MI),
        ("1KiB", KI),
        ("512MiB", 512 * MI),
        ("2GiB", 2 * GI),
        ("1TiB", 1 << 40),
        ("1PiB", 1 << 50),
        ("1KB", 1_000),
        ("1kB", 1_000),
        ("100MB", 100_000_000),
        ("2GB", 2_000_000_000),
        ("1.75TB", 1_750_000_000_000),
        ("3PB", 3_000_000_000_000_000),
        // Bare letters are decimal, as in diskimage-builder and parted.
        ("512K", 512_000),
        ("512M", 512_000_000),
        ("2G", 2_000_000_000),
        ("1T", 1_000_000_000_000),
        ("1P", 1_000_000_000_000_000),
        // Fractions: exact, truncated to whole bytes.
        ("1.5GiB", 3 << 29),
        ("0.5MiB", 512 * KI),
        ("1.5G", 1_500_000_000),
        ("2.", 2),
        ("2.KiB", 2 * KI),
        ("1.0001K", 1000),
        ("1.9999", 1),
        ("0.001KiB", 1),
        ("0.0009765625KiB", 1),
        ("0.0009765624KiB", 0),
        ("1.00000000000000000000000000000000000001PiB", 1 << 50),
        ("0.99999999999999999999999999999999999999K", 999),
        ("00000000000000000000000000000000000000001", 1),
        ("18446744073709551615", u64::MAX),
        ("18446744073709551615B", u64::MAX),
        ("16383.999999999999999PiB", 18446744073709551614),
    ];
    for (s, want) in ok {
        assert_eq!(parse(s).map(Size::bytes), Ok(*want), "{s:?}");
    }
}

#[test]
fn refused_sizes_table() {
    let bad: &[(&str, Reason)] = &[
        ("", Reason::Empty),
        ("   ", Reason::Empty),
        ("-1G", Reason::Negative),
        ("-0", Reason::Negative),
        ("+1G", Reason::Sign),
        ("18446744073709551616", Reason::Overflow),
        ("99999999PiB", Reason::Overflow),
        ("16384PiB", Reason::Overflow),
        ("18446744073709551615.5KiB", Reason::Overflow),
        (
            "99999999999999999999999999999999999999999999",
            Reason::Overflow,
        ),
        ("NaN", Reason::NotFinite),
        ("inf", Reason::NotFinite),
        ("Infinity", Reason::NotFinite),
        ("MiB", Reason::NotANumber),
        (".5G", Reason::NotANumber),
        ("1.2.3G", Reason::MultipleDots),
        ("1..2", Reason::MultipleDots),
        ("1G foo", Reason::TrailingGarbage("G foo".into())),
        ("1e9", Reason::TrailingGarbage("e9".into())),
        ("1,5G", Reason::TrailingGarbage(",5G".into())),
        ("1G5", Reason::TrailingGarbage("G5".into())),
        ("50%", Reason::NotAbsolute),
        ("rest", Reason::NotAbsolute),
    ];
    for (s, want) in bad {
        let err = parse(s).expect_err(s);
        assert_eq!(&err.reason, want, "{s:?}");
        assert_eq!(err.input, *s);
        assert!(err.to_string().contains(&format!("{s:?}")), "{err}");
    }
}

#[test]
fn unknown_units_are_named_with_a_case_hint() {
    let cases: &[(&str, &str, &str)] = &[
        ("12X", "X", ""),
        ("12b", "b", "did you mean B?"),
        ("1gib", "gib", "did you mean GiB?"),
        ("1GIB", "GIB", "did you mean GiB?"),
        ("1g", "g", "did you mean G?"),
        ("1mb", "mb", "did you mean MB?"),
        ("12 bytes", "bytes", ""),
        ("1Kib", "Kib", "did you mean KiB?"),
    ];
    for (s, unit, hint) in cases {
        let err = parse(s).expect_err(s);
        let Reason::UnknownUnit { unit: u, .. } = &err.reason else {
            panic!("{s:?}: {err}");
        };
        assert_eq!(u, unit);
        let msg = err.to_string();
        assert!(msg.contains(hint), "{s:?}: {msg}");
        assert!(
            msg.starts_with(&format!("invalid size {s:?}: unknown unit")),
            "{msg}"
        );
    }
}

#[test]
fn specs_table() {
    let ok: &[(&str, SizeSpec)] = &[
        ("rest", SizeSpec::Rest),
        (" rest ", SizeSpec::Rest),
        ("50%", SizeSpec::Percent(Percent(500_000))),
        ("50 %", SizeSpec::Percent(Percent(500_000))),
        ("100%", SizeSpec::Percent(Percent::FULL)),
        ("100.0000%", SizeSpec::Percent(Percent::FULL)),
        ("12.5%", SizeSpec::Percent(Percent(125_000))),
        ("0.0001%", SizeSpec::Percent(Percent(1))),
        ("33.333300%", SizeSpec::Percent(Percent(333_333))),
        ("1GiB", SizeSpec::Absolute(Size(GI))),
        ("0", SizeSpec::Absolute(Size(0))),
    ];
    for (s, want) in ok {
        assert_eq!(s.parse::<SizeSpec>().as_ref(), Ok(want), "{s:?}");
    }
    let bad: &[(&str, Reason)] = &[
        ("0%", Reason::PercentRange),
        ("0.00000%", Reason::PercentRange),
        ("100.0001%", Reason::PercentRange),
        ("101%", Reason::PercentRange),
        ("99999999999999999999%", Reason::PercentRange),
        ("12.34567%", Reason::PercentPrecision),
        ("-5%", Reason::Negative),
        ("%", Reason::NotANumber),
        ("nan%", Reason::NotFinite),
        ("1.2.3%", Reason::MultipleDots),
        ("5x%", Reason::TrailingGarbage("x".into())),
        ("REST", Reason::NotANumber),
    ];
    for (s, want) in bad {
        let err = s.parse::<SizeSpec>().expect_err(s);
        assert_eq!(&err.reason, want, "{s:?}");
        assert_eq!(err.input, *s);
    }
}

#[test]
fn percent_of_truncates_and_never_exceeds_total() {
    let half = Percent::from_whole(50).expect("50 is in range");
    assert_eq!(half.of(1001), 500);
    assert_eq!(Percent::FULL.of(u64::MAX), u64::MAX);
    assert_eq!(Percent(1).of(999_999), 0);
    assert_eq!(Percent(125_000).of(800), 100);
    assert_eq!(Percent::from_ppm(0), None);
    assert_eq!(Percent::from_ppm(1_000_001), None);
    assert_eq!(Percent::from_whole(101), None);
}

#[test]
fn display_is_exact() {
    let cases: &[(u64, &str)] = &[
        (0, "0"),
        (1, "1"),
        (1000, "1000"),
        (KI, "1KiB"),
        (3 * KI, "3KiB"),
        (1536 * MI, "1536MiB"),
        (2 * GI, "2GiB"),
        (1 << 50, "1PiB"),
        (u64::MAX, "18446744073709551615"),
        (u64::MAX - (KI - 1), "18014398509481983KiB"),
    ];
    for (b, want) in cases {
        assert_eq!(Size(*b).to_string(), *want);
    }
    assert_eq!(Percent(125_000).to_string(), "12.5%");
    assert_eq!(Percent(1).to_string(), "0.0001%");
    assert_eq!(Percent::FULL.to_string(), "100%");
    assert_eq!(SizeSpec::Rest.to_string(), "rest");
    assert_eq!(Size(3 << 29).approx(), "1.5 GiB");
    assert_eq!(Size(2 * GI).approx(), "2 GiB");
    assert_eq!(Size(100).approx(), "100 B");
}

#[test]
fn arithmetic_helpers() {
    assert_eq!(Size(5).align_up(4), Some(Size(8)));
    assert_eq!(Size(8).align_up(4), Some(Size(8)));
    assert_eq!(Size(0).align_up(4), Some(Size(0)));
    assert_eq!(Size(5).align_up(0), None);
    assert_eq!(Size(u64::MAX).align_up(2), None);
    assert_eq!(Size(u64::MAX).checked_add(Size(1)), None);
    assert_eq!(Size(2).checked_add(Size(3)), Some(Size(5)));
    assert_eq!(Size(u64::MAX).checked_mul(2), None);
    assert_eq!(Size(512).checked_mul(8), Some(Size(4096)));
    assert_eq!(Size(1).checked_sub(Size(2)), None);
}

#[test]
fn serde_forms() {
    let s: Size = serde_json::from_str("4096").expect("integer");
    assert_eq!(s, Size(4096));
    let s: Size = serde_json::from_str("\"1.5GiB\"").expect("string");
    assert_eq!(s, Size(3 << 29));
    assert_eq!(serde_json::to_string(&Size(GI)).expect("ser"), "1073741824");
    let err = serde_json::from_str::<Size>("\"2 gib\"").expect_err("unit case");
    assert!(err.to_string().contains("invalid size \"2 gib\""), "{err}");
    assert!(serde_json::from_str::<Size>("-1").is_err());
    assert!(serde_json::from_str::<Size>("1.5").is_err());
    assert!(serde_json::from_str::<Size>("\"50%\"").is_err());
    let specs: Vec<SizeSpec> =
        serde_json::from_str(r#"[4096, "1GiB", "50%", "rest"]"#).expect("specs");
    assert_eq!(
        specs,
        [
            SizeSpec::Absolute(Size(4096)),
            SizeSpec::Absolute(Size(GI)),
            SizeSpec::Percent(Percent(500_000)),
            SizeSpec::Rest
        ]
    );
    assert_eq!(
        serde_json::to_string(&specs).expect("ser"),
        r#"[4096,1073741824,"50%","rest"]"#
    );
    let p: Percent = serde_json::from_str("\"12.5%\"").expect("percent");
    assert_eq!(p, Percent(125_000));
}

proptest! {
    #[test]
    fn display_parse_round_trips(b in any::<u64>()) {
        prop_assert_eq!(parse(&Size(b).to_string()), Ok(Size(b)));
    }

    #[test]
    fn display_parse_round_trips_binary_multiples(n in 0u64..(1 << 20), shift in 0u32..50) {
        let b = n << shift;
        prop_assert_eq!(parse(&Size(b).to_string()), Ok(Size(b)));
    }

    #[test]
    fn percent_round_trips(ppm in 1u32..=1_000_000) {
        let p = Percent(ppm);
        prop_assert_eq!(p.to_string().parse::<Percent>(), Ok(p));
        prop_assert_eq!(p.to_string().parse::<SizeSpec>(), Ok(SizeSpec::Percent(p)));
    }

    #[test]
    fn parse_never_panics(s in "\\PC*") {
        let _ = parse(&s);
        let _ = s.parse::<SizeSpec>();
    }

    #[test]
    fn parse_never_panics_on_size_like_text(s in "[ +\\-.0-9]{0,30}[ %.a-zA-Z]{0,5}") {
        if let Ok(v) = parse(&s) {
            // Whatever parses prints and parses back to the same value.
            prop_assert_eq!(parse(&v.to_string()), Ok(v));
        }
        let _ = s.parse::<SizeSpec>();
    }

    #[test]
    fn integer_with_unit_is_exact(n in 0u64..1_000_000, i in 0usize..UNITS.len()) {
        let (unit, m) = UNITS[i];
        let want = u128::from(n) * u128::from(m);
        let got = parse(&format!("{n}{unit}")).map(Size::bytes);
        match u64::try_from(want) {
            Ok(w) => prop_assert_eq!(got, Ok(w)),
            Err(_) => prop_assert!(got.is_err()),
        }
    }
}

/// The hostile sizes of the hardening corpus (`tests/corpus/block-device/size-*.yaml`), each
/// refused for the reason it deserves.
#[test]
fn corpus_sizes_are_refused_for_their_reason() {
    let cases: &[(&str, Reason)] = &[
        (
            "10 GiBB",
            Reason::UnknownUnit {
                unit: "GiBB".into(),
                hint: String::new(),
            },
        ),
        ("-1G", Reason::Negative),
        ("1e30", Reason::TrailingGarbage("e30".into())),
        ("0x40000000", Reason::TrailingGarbage("x40000000".into())),
        ("99999999999999999999T", Reason::Overflow),
        ("18446744073709551616", Reason::Overflow),
        ("NaN", Reason::NotFinite),
        ("+5G", Reason::Sign),
        ("1..5G", Reason::MultipleDots),
    ];
    for (s, want) in cases {
        assert_eq!(parse(s).map_err(|e| e.reason), Err(want.clone()), "{s}");
    }
    assert_eq!(parse("18446744073709551615"), Ok(Size(u64::MAX)));
}

proptest! {
    #[test]
    fn fractions_are_exact_and_truncate_to_bytes(
        int in 0u64..100_000,
        frac in "[0-9]{1,12}",
        i in 0usize..UNITS.len(),
    ) {
        let (unit, m) = UNITS[i];
        let scale = 10u128.pow(frac.len() as u32);
        let f: u128 = frac.parse().expect("digits");
        let want = (u128::from(int) * scale + f) * u128::from(m) / scale;
        let text = format!("{int}.{frac}{unit}");
        let got = parse(&text).map(Size::bytes);
        match u64::try_from(want) {
            Ok(w) => prop_assert_eq!(got, Ok(w)),
            Err(_) => prop_assert_eq!(got.map_err(|e| e.reason), Err(Reason::Overflow)),
        }
    }

    #[test]
    fn a_sign_or_an_exponent_is_never_a_size(n in 0u64..1_000_000, i in 0usize..UNITS.len(), e in 0u32..40) {
        let (unit, _) = UNITS[i];
        let negative = format!("-{n}{unit}");
        let exp_unit = format!("{n}e{e}{unit}");
        let exp = format!("{n}E{e}");
        prop_assert_eq!(parse(&negative).map_err(|e| e.reason), Err(Reason::Negative));
        prop_assert!(parse(&exp_unit).is_err());
        prop_assert!(parse(&exp).is_err());
    }

    #[test]
    fn a_typo_in_the_unit_is_refused_never_guessed(
        n in 0u64..1_000_000,
        i in 1usize..UNITS.len(),
        extra in "[a-zA-Z]",
    ) {
        let (unit, _) = UNITS[i];
        let typo = format!("{unit}{extra}");
        // Only refuse what is not itself a unit (`K` + `B` is `KB`).
        if !UNITS.iter().any(|(u, _)| *u == typo) {
            let text = format!("{n} {typo}");
            prop_assert!(parse(&text).is_err(), "{}", text);
        }
    }

    #[test]
    fn larger_numbers_are_larger_sizes(a in 0u64..1 << 40, b in 0u64..1 << 40, i in 0usize..UNITS.len()) {
        let (unit, _) = UNITS[i];
        let (ta, tb) = (format!("{a}{unit}"), format!("{b}{unit}"));
        if let (Ok(x), Ok(y)) = (parse(&ta), parse(&tb)) {
            prop_assert_eq!(a.cmp(&b), x.cmp(&y));
        }
    }

    #[test]
    fn align_up_is_the_next_multiple(b in any::<u64>(), align in 0u64..1 << 40) {
        match Size(b).align_up(align) {
            Some(Size(r)) => {
                prop_assert!(align > 0);
                prop_assert!(r >= b);
                prop_assert_eq!(r % align, 0);
                prop_assert!(r - b < align);
            }
            None => prop_assert!(align == 0 || b.checked_add(align - b % align).is_none()),
        }
    }

    #[test]
    fn a_percentage_of_a_total_stays_within_it(ppm in 1u32..=1_000_000, total in any::<u64>()) {
        let p = Percent(ppm);
        let part = p.of(total);
        prop_assert!(part <= total);
        if ppm == 1_000_000 {
            prop_assert_eq!(part, total);
        }
    }
}
