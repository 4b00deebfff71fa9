//! Parsing of the values the command line accepts: sizes and rates, and the engine's named
//! values (`--checksum blake3`) listed in `--help`. Sizes and rates (`--size 1.5G`, `--chunk-size 4MiB`,
//! `--bwlimit 50M`).
//!
//! A value is a decimal number (`1`, `1.5`, `.5`) and an optional unit:
//!
//! | unit | size (`parse_size`) | rate (`parse_rate`, bytes per second) |
//! |---|---|---|
//! | none or `B` | bytes | bytes |
//! | `K` `M` `G` `T` `P` | powers of 1024, as `dd`, `qemu-img` and `fio` read them | powers of 1000, as link rates are given |
//! | `KiB` `MiB` `GiB` `TiB` `PiB` | powers of 1024 | powers of 1024 |
//! | `KB` `MB` `GB` `TB` `PB` | powers of 1000 | powers of 1000 |
//!
//! Letters are case-insensitive; a rate may end in `/s`. A fraction that does not come to a whole
//! number of bytes is rounded down (`1.3G` is 1 395 864 371 bytes). Anything else — negative
//! numbers, exponents, `inf`, spaces, unknown units, values beyond 2^64 − 1 — is refused with a
//! message that names the value and what is accepted.

/// A flag whose values are an engine type's names: parsed by its `FromStr`, listed in `--help`
/// and completions like a clap `ValueEnum`'s (the engine does not depend on clap).
pub fn choice<T>(
    values: impl IntoIterator<Item = impl Into<clap::builder::PossibleValue>>,
) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(values).try_map(|s| s.parse::<T>())
}

/// `--checksum`'s values.
pub fn checksums() -> impl clap::builder::TypedValueParser<Value = diskstream_engine::digest::Checksum> {
    choice::<diskstream_engine::digest::Checksum>(&["blake3", "sha256"])
}

/// Whether a one-letter unit (`K`, `M`, …) means a power of 1024 (sizes) or 1000 (rates).
#[derive(Clone, Copy)]
enum Letters {
    Binary,
    Decimal,
}

/// Parses a size: bytes, with an optional unit (see the module docs; `1G` is 2^30 bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse(s, Letters::Binary).map_err(|why| {
        format!("{s:?} is not a size ({why}): give bytes with an optional unit, e.g. 4096, 512K, 1.5G, 1GiB, 200MB")
    })
}

/// Parses a rate in bytes per second, with an optional unit (see the module docs; `50M` and
/// `50MB/s` are 50·10⁶ bytes/s, `50MiB` is 50·2^20). `0` is 0, which `--bwlimit` reads as no
/// limit (as rsync and vzdump do); a rate above 0 but below 1 byte per second (`0.5`) is refused.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let body = s.strip_suffix("/s").unwrap_or(s);
    let refuse = |why: &str| {
        format!(
            "{s:?} is not a rate ({why}): give bytes per second with an optional unit, e.g. 50M, 1.5G, 100MiB, 20MB/s (0: no limit)"
        )
    };
    let v = parse(body, Letters::Decimal).map_err(refuse)?;
    if v == 0 && body.bytes().any(|b| matches!(b, b'1'..=b'9')) {
        return Err(refuse("below 1 byte per second"));
    }
    Ok(v)
}

fn parse(s: &str, letters: Letters) -> Result<u64, &'static str> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let multiplier = unit_multiplier(unit, letters)?;
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err("no number");
    }
    if frac.contains('.') {
        return Err("more than one decimal point");
    }
    // value = (int . frac) × multiplier, computed exactly in integers, then rounded down.
    let digits = frac.len().min(18);
    let scale = 10u128.pow(digits as u32);
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse::<u64>().map_err(|_| "too large")?.into()
    };
    let frac: u128 = if digits == 0 {
        0
    } else {
        frac[..digits].parse().map_err(|_| "not a number")?
    };
    let total = (int * scale + frac).checked_mul(multiplier.into()).ok_or("too large")? / scale;
    u64::try_from(total).map_err(|_| "too large")
}

fn unit_multiplier(unit: &str, letters: Letters) -> Result<u64, &'static str> {
    let lower = unit.to_ascii_lowercase();
    let (letter, rest) = match lower.as_bytes() {
        [] => return Ok(1),
        [b'b'] => return Ok(1),
        [l, rest @ ..] => (*l, rest),
    };
    let power = match letter {
        b'k' => 1,
        b'm' => 2,
        b'g' => 3,
        b't' => 4,
        b'p' => 5,
        _ => return Err("unknown unit"),
    };
    let base: u64 = match (rest, letters) {
        ([], Letters::Binary) => 1024,
        ([], Letters::Decimal) => 1000,
        (b"ib", _) => 1024,
        (b"b", _) => 1000,
        _ => return Err("unknown unit"),
    };
    Ok(base.pow(power))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_letters_as_binary_and_explicit_units_as_written() {
        for (s, want) in [
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("1K", 1024),
            ("1k", 1024),
            ("4M", 4 << 20),
            ("1G", 1 << 30),
            ("2T", 2 << 40),
            ("1P", 1 << 50),
            ("1.5G", 3 << 29),
            (".5M", 1 << 19),
            ("1.", 1),
            ("1GiB", 1 << 30),
            ("1gib", 1 << 30),
            ("200MB", 200_000_000),
            ("1.5GB", 1_500_000_000),
            ("1.3G", 1_395_864_371),
            ("0.0000000001K", 0),
            ("16777215.9999999999T", u64::MAX - 109),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rates_read_letters_as_decimal() {
        for (s, want) in [
            ("50M", 50_000_000),
            ("50M/s", 50_000_000),
            ("50MB/s", 50_000_000),
            ("50MiB", 50 << 20),
            ("1.5G", 1_500_000_000),
            ("800K", 800_000),
            ("123", 123),
            ("1.5", 1),
            ("0", 0),
            ("0M", 0),
            ("0.0/s", 0),
        ] {
            assert_eq!(parse_rate(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rates_above_0_below_a_byte_per_second_are_refused() {
        for s in ["0.5", ".9", "0.1/s", "0.0000000001K", "0.0000001M"] {
            let e = parse_rate(s).expect_err(s);
            assert!(
                e.starts_with(&format!("{s:?} is not a rate (below 1 byte per second)")),
                "{s}: {e}"
            );
        }
        assert_eq!(parse_rate("0.001K"), Ok(1), "a whole byte per second is a rate");
    }

    #[test]
    fn refuses_what_is_not_a_size_and_says_why() {
        for (s, why) in [
            ("", "no number"),
            ("G", "no number"),
            (".", "no number"),
            ("-1", "unknown unit"),
            ("+1", "unknown unit"),
            (" 1G", "unknown unit"),
            ("1G ", "unknown unit"),
            ("1 G", "unknown unit"),
            ("1e9", "unknown unit"),
            ("inf", "unknown unit"),
            ("NaN", "unknown unit"),
            ("1X", "unknown unit"),
            ("1GIBB", "unknown unit"),
            ("1Gb/s", "unknown unit"),
            ("1.5.5", "more than one decimal point"),
            ("18446744073709551616", "too large"),
            ("16777216T", "too large"),
            ("99999999999999999999999K", "too large"),
            ("١٢", "unknown unit"),
        ] {
            let e = parse_size(s).expect_err(s);
            assert!(e.contains(&format!("{s:?} is not a size ({why})")), "{s}: {e}");
            assert!(e.contains("1.5G"), "the message shows examples: {e}");
        }
        let e = parse_rate("fast").expect_err("fast");
        assert!(e.starts_with("\"fast\" is not a rate (unknown unit)"), "{e}");
    }
}
