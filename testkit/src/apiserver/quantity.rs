//! Resource quantities (`500m`, `2`, `1.5Gi`, `1e3`) read into integers: CPU in millicores,
//! memory in bytes, rounding up as the scheduler does.

/// Parses a quantity into its value times `scale` (1000 for millicores, 1 for bytes),
/// rounded up. `None` when the string is not a quantity or does not fit.
pub fn parse_scaled(s: &str, scale: u128) -> Option<u64> {
    let s = s.trim();
    let (num, mult_num, mult_den): (&str, u128, u128) = {
        let suffixes: [(&str, u128, u128); 15] = [
            ("Ki", 1 << 10, 1),
            ("Mi", 1 << 20, 1),
            ("Gi", 1 << 30, 1),
            ("Ti", 1 << 40, 1),
            ("Pi", 1 << 50, 1),
            ("Ei", 1 << 60, 1),
            ("n", 1, 1_000_000_000),
            ("u", 1, 1_000_000),
            ("m", 1, 1_000),
            ("k", 1_000, 1),
            ("M", 1_000_000, 1),
            ("G", 1_000_000_000, 1),
            ("T", 1_000_000_000_000, 1),
            ("P", 1_000_000_000_000_000, 1),
            ("E", 1_000_000_000_000_000_000, 1),
        ];
        if let Some((mant, exp)) = s.split_once(['e', 'E']).filter(|(m, _)| !m.is_empty()) {
            let exp: u32 = exp.parse().ok().filter(|e| *e <= 18)?;
            (mant, 10u128.checked_pow(exp)?, 1)
        } else {
            suffixes
                .iter()
                .find_map(|(suf, n, d)| s.strip_suffix(suf).map(|m| (m, *n, *d)))
                .unwrap_or((s, 1, 1))
        }
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || int.len() > 20 {
        return None;
    }
    let frac_den = 10u128.pow(u32::try_from(frac.len()).ok()?);
    let int_v: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let numer = (int_v.checked_mul(frac_den)?.checked_add(frac_v)?)
        .checked_mul(mult_num)?
        .checked_mul(scale)?;
    let denom = frac_den.checked_mul(mult_den)?;
    u64::try_from(numer.div_ceil(denom)).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_scaled;

    #[test]
    fn quantities() {
        assert_eq!(parse_scaled("500m", 1000), Some(500));
        assert_eq!(parse_scaled("2", 1000), Some(2000));
        assert_eq!(parse_scaled("0.5", 1000), Some(500));
        assert_eq!(parse_scaled("1.5Gi", 1), Some(1_610_612_736));
        assert_eq!(parse_scaled("512Mi", 1), Some(536_870_912));
        assert_eq!(parse_scaled("1G", 1), Some(1_000_000_000));
        assert_eq!(parse_scaled("1e3", 1), Some(1000));
        assert_eq!(parse_scaled("1n", 1000), Some(1));
        for bad in [
            "",
            "x",
            "1x",
            "-1",
            "1.2.3",
            "Gi",
            "1e99",
            "99999999999999999999999Ei",
        ] {
            assert_eq!(parse_scaled(bad, 1), None, "{bad}");
        }
    }
}
