//! Memory sizes in flags: `4G`, `512M`, `1.5GiB`, or a plain number of MiB.

/// Parse a size; the error names the flag and the accepted forms.
pub fn parse(flag: &str, s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad =
        || format!("{flag} {s:?}: not a size; write it as 4G, 512M, 1.5GiB or a number of MiB");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "k" | "kb" | "kib" => 10,
        "" | "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < (16u64 << 20) as f64 || bytes > (1u64 << 50) as f64 {
        return Err(format!("{flag} {s:?}: must be between 16M and 1024T"));
    }
    Ok(bytes as u64)
}

/// A size for messages: `1.5 GiB`, `300 MiB`.
pub fn show(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bad_ones_name_the_flag() {
        assert_eq!(parse("--memory-limit", "4G"), Ok(4 << 30));
        assert_eq!(parse("--memory-limit", "512M"), Ok(512 << 20));
        assert_eq!(parse("--memory-limit", "1.5GiB"), Ok(3 << 29));
        assert_eq!(parse("--memory-limit", "300"), Ok(300 << 20));
        for bad in ["", "x", "4X", "-1G", "1K", "nanG"] {
            let e = parse("--memory-limit", bad).unwrap_err();
            assert!(e.starts_with("--memory-limit"), "{e}");
        }
        assert_eq!(show(3 << 29), "1.5 GiB");
        assert_eq!(show(300 << 20), "300 MiB");
    }
}
