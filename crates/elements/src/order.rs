//! dib's ordering and naming rules for phase scripts and environment files.
//!
//! `dib-run-parts` lists a phase's scripts with `find … -printf '%f\n' | grep -E
//! '^[0-9A-Za-z_-]+$' | LANG=C sort -n`: names outside that alphabet are skipped, and the
//! order is GNU `sort -n` — by the leading (optionally negative) number, names without one
//! count as 0, ties broken by comparing the whole name bytewise. Environment files are found
//! with `find DIR …`, filtered by `/[0-9A-Za-z_.-]+$`, and also piped through `sort -n`, but
//! as full paths starting with `/`: every key is 0, so they end up in plain byte order.

use std::cmp::Ordering;

/// Whether dib-run-parts runs a file of this name (`^[0-9A-Za-z_-]+$`).
pub(crate) fn is_script_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether dib sources an environment file of this name (`[0-9A-Za-z_.-]+`).
pub(crate) fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The numeric key of GNU `sort -n` in the C locale: sign and the digits of the leading
/// integer (leading zeros stripped); a name without leading digits is zero.
fn numeric_key(name: &str) -> (bool, &str) {
    let (neg, rest) = match name.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, name),
    };
    let digits_end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    let digits = rest[..digits_end].trim_start_matches('0');
    if digits.is_empty() {
        (false, "") // -0, 0, and no number all compare as zero
    } else {
        (neg, digits)
    }
}

fn cmp_magnitude(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// GNU `LANG=C sort -n` order of two names.
pub(crate) fn sort_n(a: &str, b: &str) -> Ordering {
    let (an, ad) = numeric_key(a);
    let (bn, bd) = numeric_key(b);
    let by_number = match (an, bn) {
        (false, false) => cmp_magnitude(ad, bd),
        (true, true) => cmp_magnitude(bd, ad),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    };
    by_number.then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_script_name("10-foo_bar"));
        assert!(!is_script_name("10-foo.sh"));
        assert!(!is_script_name("README.rst"));
        assert!(!is_script_name(""));
        assert!(is_env_name("10-foo.bash"));
        assert!(!is_env_name("10 foo"));
    }

    #[test]
    fn sort_n_like_gnu_sort() {
        // Checked against `printf '%s\n' … | LANG=C sort -n` (coreutils 9.1).
        let mut v = vec![
            "50-b", "10-z", "5-a", "foo", "100-x", "010-y", "Bar", "-3-neg", "0-zero", "9", "50-a",
            "-10-neg",
        ];
        v.sort_by(|a, b| sort_n(a, b));
        assert_eq!(
            v,
            [
                "-10-neg", "-3-neg", "0-zero", "Bar", "foo", "5-a", "9", "010-y", "10-z", "50-a",
                "50-b", "100-x"
            ]
        );
    }
}
