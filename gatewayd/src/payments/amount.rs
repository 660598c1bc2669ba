//! Amounts: people write decimals in the asset's unit (`0.01` USDC), the wire and the
//! ledger carry integers of its smallest unit (`10000` for six decimals). Exact, no floats.

use super::PaymentError;

/// Atomic units of `decimal` for an asset with `decimals` places; more places than the
/// asset has, a sign, or an empty number are refused.
pub fn to_atomic(decimal: &str, decimals: u32) -> Result<u128, PaymentError> {
    let bad = || PaymentError::Invalid(format!("`{decimal}` is not an amount with at most {decimals} decimals"));
    let (whole, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > decimals as usize
        || decimal.ends_with('.')
    {
        return Err(bad());
    }
    let scale = 10u128.checked_pow(decimals).ok_or_else(bad)?;
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        let f: u128 = frac.parse().map_err(|_| bad())?;
        f * 10u128.pow(decimals - frac.len() as u32)
    };
    whole.checked_mul(scale).and_then(|w| w.checked_add(frac_value)).ok_or_else(bad)
}

/// `atomic` as a decimal in the asset's unit, without trailing zeros (`10000`, 6 → `0.01`).
pub fn to_decimal(atomic: u128, decimals: u32) -> String {
    let scale = 10u128.pow(decimals);
    let (whole, frac) = (atomic / scale, atomic % scale);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = decimals as usize);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_convert_exactly_both_ways() {
        assert_eq!(to_atomic("0.01", 6).unwrap(), 10_000);
        assert_eq!(to_atomic("1", 6).unwrap(), 1_000_000);
        assert_eq!(to_atomic("12.345678", 6).unwrap(), 12_345_678);
        assert_eq!(to_atomic(".5", 6).unwrap(), 500_000);
        for bad in ["", ".", "1.", "-1", "1e3", "0.0000001", "1,5", " 1", "0x10"] {
            assert!(to_atomic(bad, 6).is_err(), "{bad}");
        }
        assert_eq!(to_decimal(10_000, 6), "0.01");
        assert_eq!(to_decimal(1_000_000, 6), "1");
        assert_eq!(to_decimal(12_345_678, 6), "12.345678");
        assert_eq!(to_decimal(0, 6), "0");
    }

    proptest::proptest! {
        #[test]
        fn a_decimal_round_trips(atomic in 0u128..u128::from(u64::MAX)) {
            proptest::prop_assert_eq!(to_atomic(&to_decimal(atomic, 6), 6).unwrap(), atomic);
        }
    }
}
