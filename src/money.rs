//! Prices and exact money arithmetic.
//!
//! Every amount of money in the project is a [`Decimal`], never a float, and every operation
//! here is exact or fails: nothing rounds except [`display`], which only formats a table cell.
//! Amounts travel between the ledger, JSON and CSV as [`exact`] strings, which [`parse_exact`]
//! reads back to the same value, so a report's total equals the sum of its rows to the last
//! digit.
//!
//! Pricing follows the gateway's published rule: a rate per output megapixel
//! (1 MP = 10^6 pixels), where the output is the input times `upscale` in each dimension.
//!
//! ```
//! use codeformer_ledger::money::{self, Price};
//!
//! let price = Price::default_rate();
//! let (w, h) = money::output_size(1000, 1000, 2);
//! assert_eq!(money::exact(price.cost(w, h)), "0.0084");
//! ```

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// The gateway's model id; prices are recorded per model.
pub const MODEL: &str = "codeformer-image-restoration";

/// The published rate: 0.0021 USD per output megapixel.
pub const DEFAULT_PER_MEGAPIXEL: Decimal = Decimal::from_parts(21, 0, 0, false, 4);

/// Most decimal places a rate may have. With at most 12 places, a cost has at most 18
/// (6 from the megapixels), well inside `Decimal`'s 28, so [`Price::cost`] never rounds.
pub const MAX_RATE_DECIMALS: u32 = 12;

/// Most decimal places an amount may have (the limit of `Decimal`).
const MAX_DECIMALS: u32 = 28;

/// Largest mantissa a `Decimal` holds (96 bits).
const MAX_MANTISSA: u128 = (1 << 96) - 1;

/// Pixels in one megapixel, as the power of ten used for the scale.
const MEGAPIXEL_SCALE: u32 = 6;

/// Money that could not be read or computed exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// Text that is not a plain decimal amount, e.g. `abc`, `1e3` or `1,5`.
    #[error(
        "{field}: `{value}` is not an amount in US dollars (expected a plain decimal such as 1.50 or 0.0021)"
    )]
    NotAnAmount { field: &'static str, value: String },
    /// An amount below zero where only zero or more makes sense.
    #[error("{field}: `{value}` is negative (expected zero or more)")]
    Negative { field: &'static str, value: String },
    /// A rate of zero or less.
    #[error("{field}: `{value}` is not more than zero (a rate must be positive)")]
    NotPositive { field: &'static str, value: String },
    /// More decimal places than the field allows.
    #[error("{field}: `{value}` has more than {max} decimal places")]
    TooPrecise {
        field: &'static str,
        value: String,
        max: u32,
    },
    /// More digits than a 96-bit decimal holds.
    #[error("{field}: `{value}` is too large")]
    TooLarge { field: &'static str, value: String },
    /// A stored amount (ledger, JSON, CSV) that is not an exact decimal string.
    #[error("`{value}` is not an exact decimal amount")]
    Unparsable { value: String },
    /// A sum or product whose exact result does not fit in a `Decimal`.
    #[error("the exact result of {what} does not fit in a 96-bit decimal")]
    Overflow { what: &'static str },
}

/// The price of one model from a date on. The ledger keeps a table of these; the one in force
/// at a job's time prices it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub model: String,
    /// USD per output megapixel (serialised as an exact string).
    pub per_megapixel: Decimal,
    pub effective_from: DateTime<Utc>,
}

impl Price {
    /// The published rate, in force since the beginning of time so that it covers any job that
    /// predates a recorded price.
    pub fn default_rate() -> Self {
        Price {
            model: MODEL.to_string(),
            per_megapixel: DEFAULT_PER_MEGAPIXEL,
            effective_from: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    /// The exact cost of an output of `out_w`×`out_h` pixels.
    ///
    /// Exact whenever the exact result fits in a `Decimal` (96-bit mantissa): at the default
    /// rate that is every output up to (2^32 × 8)² pixels, i.e. any `u32` input at any upscale.
    /// A result that does not fit (only absurd sizes or rates) saturates at [`Decimal::MAX`],
    /// which stops any budget; [`Price::checked_cost`] tells instead.
    pub fn cost(&self, out_w: u64, out_h: u64) -> Decimal {
        self.checked_cost(out_w, out_h).unwrap_or(Decimal::MAX)
    }

    /// The exact cost, or `Overflow` when it does not fit in a `Decimal`.
    pub fn checked_cost(&self, out_w: u64, out_h: u64) -> Result<Decimal, MoneyError> {
        let overflow = MoneyError::Overflow { what: "a cost" };
        let rate = self.per_megapixel.normalize();
        let pixels = u128::from(out_w) * u128::from(out_h);
        let mantissa = pixels
            .checked_mul(rate.mantissa().unsigned_abs())
            .ok_or(overflow.clone())?;
        let negative = rate.is_sign_negative();
        from_parts_exact(mantissa, negative, rate.scale() + MEGAPIXEL_SCALE).ok_or(overflow)
    }

    /// The cost of a job whose input is `width`×`height` at `upscale`.
    pub fn estimate(&self, width: u32, height: u32, upscale: u32) -> Decimal {
        let (w, h) = output_size(width, height, upscale);
        self.cost(w, h)
    }
}

/// The output dimensions of an input at an upscale factor.
pub fn output_size(width: u32, height: u32, upscale: u32) -> (u64, u64) {
    (
        u64::from(width) * u64::from(upscale),
        u64::from(height) * u64::from(upscale),
    )
}

/// `w`×`h` pixels in megapixels, exactly (saturating at [`Decimal::MAX`] beyond 2^96 pixels,
/// far past any image).
pub fn megapixels(w: u64, h: u64) -> Decimal {
    let pixels = u128::from(w) * u128::from(h);
    from_parts_exact(pixels, false, MEGAPIXEL_SCALE).unwrap_or(Decimal::MAX)
}

/// Reads a non-negative amount in US dollars typed by a user (`--budget`, `--wallet`).
///
/// Accepts a plain decimal with an optional leading `$` and surrounding spaces: `2`, `$2`,
/// `1.5`, `.5`, `0.0021`. Rejects signs, exponents, separators and anything else, naming the
/// field and quoting the value.
pub fn parse_usd(field: &'static str, text: &str) -> Result<Decimal, MoneyError> {
    let mut rest = text.trim();
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r.trim_start();
    }
    if let Some(r) = rest.strip_prefix('$') {
        rest = r.trim_start();
    }
    if let Some(r) = rest.strip_prefix('-').filter(|_| !negative) {
        negative = true;
        rest = r;
    }
    let (mantissa, scale) = parse_plain(rest).ok_or_else(|| MoneyError::NotAnAmount {
        field,
        value: text.to_string(),
    })?;
    if negative {
        return Err(MoneyError::Negative {
            field,
            value: text.to_string(),
        });
    }
    build_amount(field, text, mantissa, scale)
}

/// Reads a price per megapixel (`prices set`): a plain decimal above zero with at most
/// [`MAX_RATE_DECIMALS`] decimal places (after trailing zeros are dropped).
pub fn parse_rate(field: &'static str, text: &str) -> Result<Decimal, MoneyError> {
    let value = parse_usd(field, text)?;
    if value.is_zero() {
        return Err(MoneyError::NotPositive {
            field,
            value: text.to_string(),
        });
    }
    if value.scale() > MAX_RATE_DECIMALS {
        return Err(MoneyError::TooPrecise {
            field,
            value: text.to_string(),
            max: MAX_RATE_DECIMALS,
        });
    }
    Ok(value)
}

/// Reads an amount written by [`exact`] (ledger columns, JSON, CSV): a plain decimal with an
/// optional leading `-`, no `$`, no exponent.
pub fn parse_exact(text: &str) -> Result<Decimal, MoneyError> {
    let bad = || MoneyError::Unparsable {
        value: text.to_string(),
    };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, scale) = parse_plain(digits).ok_or_else(bad)?;
    if mantissa == 0 {
        return Ok(Decimal::ZERO);
    }
    if scale > MAX_DECIMALS {
        return Err(bad());
    }
    from_parts_exact(mantissa, negative, scale).ok_or_else(bad)
}

/// The exact decimal string of an amount: no exponent, no trailing zeros, `0` for zero
/// (`0.0084`, `0.00435456`). This is the form stored and exchanged; [`parse_exact`] reads it back.
pub fn exact(d: Decimal) -> String {
    d.normalize().to_string()
}

/// An amount for a table cell: `$0.0084`, `$0.004355`, `-$1.2500`. Rounded half-even to six
/// decimal places and shown with at least four. For display only: store [`exact`].
pub fn display(d: Decimal) -> String {
    let mut shown = d
        .round_dp_with_strategy(6, RoundingStrategy::MidpointNearestEven)
        .normalize();
    if shown.scale() < 4 {
        shown.rescale(4);
    }
    if shown.is_sign_negative() && !shown.is_zero() {
        format!("-${}", shown.abs())
    } else {
        format!("${}", shown.abs())
    }
}

/// Adds amounts exactly: a sum that would need rounding is refused rather than rounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecimalSum {
    total: Decimal,
    count: u64,
}

impl DecimalSum {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one amount. On error the sum is unchanged.
    pub fn add(&mut self, value: Decimal) -> Result<(), MoneyError> {
        self.total = exact_add(self.total, value).ok_or(MoneyError::Overflow { what: "a sum" })?;
        self.count += 1;
        Ok(())
    }

    /// Adds an amount stored as an [`exact`] string. A value that does not parse is returned
    /// as `Unparsable` (naming it) and the sum is unchanged.
    pub fn add_exact(&mut self, text: &str) -> Result<(), MoneyError> {
        self.add(parse_exact(text)?)
    }

    /// Adds another sum (e.g. a group's) into this one.
    pub fn merge(&mut self, other: &DecimalSum) -> Result<(), MoneyError> {
        self.total =
            exact_add(self.total, other.total).ok_or(MoneyError::Overflow { what: "a sum" })?;
        self.count += other.count;
        Ok(())
    }

    /// The exact total so far.
    pub fn total(&self) -> Decimal {
        self.total.normalize()
    }

    /// How many amounts were added.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// `a + b` exactly, or `None` when the exact result does not fit. (`Decimal`'s own `+` rounds
/// when the operands' scales make the result too long.)
pub fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (a, b) = (a.normalize(), b.normalize());
    let scale = a.scale().max(b.scale());
    let widen = |d: Decimal| {
        d.mantissa()
            .checked_mul(10i128.checked_pow(scale - d.scale())?)
    };
    let mut sum = widen(a)?.checked_add(widen(b)?)?;
    let mut scale = scale;
    while scale > 0 && sum % 10 == 0 {
        sum /= 10;
        scale -= 1;
    }
    from_parts_exact(sum.unsigned_abs(), sum < 0, scale)
}

/// A decimal from an unsigned mantissa, or `None` if it needs more than 96 bits or 28 places.
fn from_parts_exact(mantissa: u128, negative: bool, scale: u32) -> Option<Decimal> {
    if mantissa > MAX_MANTISSA || scale > MAX_DECIMALS {
        return None;
    }
    let mut d = Decimal::from_i128_with_scale(mantissa as i128, scale);
    d.set_sign_negative(negative);
    Some(d.normalize())
}

/// Parses `D+`, `D+.D+` or `.D+` (ASCII digits only) into a mantissa and a scale without
/// trailing zeros, or `None`. The mantissa saturates past `u128`, which callers report as too
/// large.
fn parse_plain(text: &str) -> Option<(u128, u32)> {
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return None,
        None => (text, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    let mut mantissa: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .saturating_mul(10)
            .saturating_add(u128::from(b - b'0'));
    }
    let scale = u32::try_from(frac.len()).unwrap_or(u32::MAX);
    Some((mantissa, scale))
}

/// Turns a parsed mantissa and scale into an amount, naming the field on failure.
fn build_amount(
    field: &'static str,
    text: &str,
    mantissa: u128,
    scale: u32,
) -> Result<Decimal, MoneyError> {
    if mantissa == 0 {
        return Ok(Decimal::ZERO);
    }
    if scale > MAX_DECIMALS {
        return Err(MoneyError::TooPrecise {
            field,
            value: text.to_string(),
            max: MAX_DECIMALS,
        });
    }
    from_parts_exact(mantissa, false, scale).ok_or_else(|| MoneyError::TooLarge {
        field,
        value: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn documented_examples() {
        let price = Price::default_rate();
        let (w, h) = output_size(1000, 1000, 2);
        assert_eq!((w, h), (2000, 2000));
        assert_eq!(exact(megapixels(w, h)), "4");
        assert_eq!(exact(price.cost(w, h)), "0.0084");

        let (w, h) = output_size(1920, 1080, 1);
        assert_eq!(exact(megapixels(w, h)), "2.0736");
        assert_eq!(exact(price.cost(w, h)), "0.00435456");
        assert_eq!(price.estimate(1920, 1080, 1), dec("0.00435456"));
    }

    #[test]
    fn documented_rules() {
        let price = Price::default_rate();
        // "4 quadruples them": each dimension times the upscale.
        assert_eq!(output_size(500, 500, 4), (2000, 2000));
        assert_eq!(exact(price.estimate(500, 500, 4)), "0.0084");
        // 1 MP is 10^6 pixels, not 2^20.
        assert_eq!(exact(megapixels(1024, 1024)), "1.048576");
        assert_eq!(exact(price.estimate(1024, 1024, 1)), "0.0022020096");
        // The documentation's "1080p ≈ $0.00449735" does not follow its own rate; the stated
        // rate wins.
        assert_ne!(price.estimate(1920, 1080, 1), dec("0.00449735"));
        // The smallest job, and the pricing pipeline's odd sizes, stay exact.
        assert_eq!(exact(price.estimate(1, 1, 1)), "0.0000000021");
        assert_eq!(exact(price.estimate(1, 1, 8)), "0.0000001344");
        assert_eq!(exact(price.estimate(333, 517, 2)), "0.0014461524");
        assert_eq!(exact(price.estimate(4000, 3000, 2)), "0.1008");
        // A rate with 12 decimal places gives an 18-place cost, still exact.
        let fine = Price {
            per_megapixel: dec("0.002100000001"),
            ..Price::default_rate()
        };
        assert_eq!(exact(fine.estimate(1, 1, 1)), "0.000000002100000001");
    }

    #[test]
    fn largest_job_does_not_overflow() {
        let (w, h) = output_size(65535, 65535, 8);
        let cost = Price::default_rate().checked_cost(w, h).unwrap();
        // 524280^2 = 274_869_518_400 pixels.
        assert_eq!(exact(megapixels(w, h)), "274869.5184");
        assert_eq!(exact(cost), "577.22598864");
        let (w, h) = output_size(u32::MAX, u32::MAX, 8);
        assert!(Price::default_rate().checked_cost(w, h).is_ok());
    }

    #[test]
    fn costs_beyond_a_decimal_saturate_and_say_so() {
        let price = Price {
            per_megapixel: dec("999999999.999999999999"),
            ..Price::default_rate()
        };
        let err = price.checked_cost(u64::MAX, u64::MAX).unwrap_err();
        assert_eq!(err, MoneyError::Overflow { what: "a cost" });
        assert_eq!(price.cost(u64::MAX, u64::MAX), Decimal::MAX);
    }

    #[test]
    fn parse_usd_accepts_plain_decimals() {
        for (text, want) in [
            ("1.5", "1.5"),
            ("0.0021", "0.0021"),
            ("$2", "2"),
            (" $ 2.50 ", "2.5"),
            (".5", "0.5"),
            ("0", "0"),
            ("0.000", "0"),
            ("007", "7"),
            ("1.000000000000000000000000000000000000000000000", "1"),
        ] {
            assert_eq!(exact(parse_usd("budget", text).unwrap()), want, "{text}");
        }
    }

    #[test]
    fn parse_usd_rejects_with_field_and_value() {
        for text in [
            "abc", "0.0O21", "1e3", "", " ", "1.", "1,5", "+1", "1.2.3", "$", "١",
        ] {
            let err = parse_usd("budget", text).unwrap_err();
            assert!(
                matches!(
                    err,
                    MoneyError::NotAnAmount {
                        field: "budget",
                        ..
                    }
                ),
                "{text}: {err:?}"
            );
            assert!(err.to_string().starts_with("budget: `"), "{err}");
            assert!(err.to_string().contains(&format!("`{text}`")), "{err}");
        }
        for text in ["-1", "-0.5", "$-2", "-$2"] {
            let err = parse_usd("wallet", text).unwrap_err();
            assert!(
                matches!(err, MoneyError::Negative { .. }),
                "{text}: {err:?}"
            );
        }
        assert_eq!(
            parse_usd("budget", "-1").unwrap_err().to_string(),
            "budget: `-1` is negative (expected zero or more)"
        );
        assert!(matches!(
            parse_usd("budget", &"9".repeat(40)).unwrap_err(),
            MoneyError::TooLarge { .. }
        ));
        assert!(matches!(
            parse_usd("budget", &format!("0.{}1", "0".repeat(28))).unwrap_err(),
            MoneyError::TooPrecise { .. }
        ));
    }

    #[test]
    fn rates_must_be_positive_and_short() {
        assert_eq!(parse_rate("rate", "0.0021").unwrap(), DEFAULT_PER_MEGAPIXEL);
        assert_eq!(
            parse_rate("rate", "0.00210000000000000000").unwrap(),
            dec("0.0021")
        );
        assert!(matches!(
            parse_rate("rate", "0").unwrap_err(),
            MoneyError::NotPositive { .. }
        ));
        assert!(matches!(
            parse_rate("rate", "0.0000000000001").unwrap_err(),
            MoneyError::TooPrecise { max: 12, .. }
        ));
        assert!(matches!(
            parse_rate("rate", "-0.1").unwrap_err(),
            MoneyError::Negative { .. }
        ));
    }

    #[test]
    fn exact_strings() {
        assert_eq!(exact(Decimal::ZERO), "0");
        assert_eq!(exact(dec("0.000")), "0");
        assert_eq!(exact(dec("-0.0")), "0");
        assert_eq!(exact(dec("0.00840")), "0.0084");
        assert_eq!(exact(dec("120.00")), "120");
        assert_eq!(exact(Decimal::MAX), "79228162514264337593543950335");
        assert_eq!(
            exact(dec("0.0000000000000000000000000001")),
            "0.0000000000000000000000000001"
        );
        assert_eq!(parse_exact("-0.5").unwrap(), dec("-0.5"));
        assert!(parse_exact("$1").is_err());
        assert!(parse_exact("1e-3").is_err());
        assert!(parse_exact(" 1").is_err());
    }

    #[test]
    fn display_strings() {
        assert_eq!(display(dec("0.0084")), "$0.0084");
        assert_eq!(display(dec("0.00435456")), "$0.004355");
        assert_eq!(display(dec("0.0000005")), "$0.0000");
        assert_eq!(display(dec("0.0000015")), "$0.000002");
        assert_eq!(display(dec("0.0000025")), "$0.000002");
        assert_eq!(display(Decimal::ZERO), "$0.0000");
        assert_eq!(display(dec("12.5")), "$12.5000");
        assert_eq!(display(dec("-1.25")), "-$1.2500");
        assert_eq!(display(dec("-0.0000001")), "$0.0000");
    }

    #[test]
    fn sums_refuse_to_round() {
        let mut sum = DecimalSum::new();
        sum.add(Decimal::MAX).unwrap();
        let err = sum.add(dec("0.5")).unwrap_err();
        assert_eq!(err, MoneyError::Overflow { what: "a sum" });
        assert_eq!(sum.total(), Decimal::MAX);
        assert_eq!(sum.count(), 1);
        // Decimal's own `+` would silently round this to 10^28.
        let mut sum = DecimalSum::new();
        sum.add(dec("10000000000000000000000000000")).unwrap();
        assert!(sum.add(dec("0.1")).is_err());
    }

    #[test]
    fn sums_of_stored_strings() {
        let mut sum = DecimalSum::new();
        sum.add_exact("0.0084").unwrap();
        sum.add_exact("0.00435456").unwrap();
        let err = sum.add_exact("0.0O84").unwrap_err();
        assert_eq!(err.to_string(), "`0.0O84` is not an exact decimal amount");
        assert_eq!(exact(sum.total()), "0.01275456");
        assert_eq!(sum.count(), 2);
    }

    #[test]
    fn price_serialises_rate_as_string() {
        let json = serde_json::to_value(Price::default_rate()).unwrap();
        assert_eq!(json["per_megapixel"], "0.0021");
        assert_eq!(json["model"], MODEL);
    }

    fn job() -> impl Strategy<Value = (u32, u32, u32)> {
        (
            1u32..=65535,
            1u32..=65535,
            1u32..=crate::params::MAX_UPSCALE,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Guarantee 4: a total equals the sum of its groups, whatever the grouping, and both
        /// equal an independent integer computation.
        #[test]
        fn sums_are_exact_whatever_the_grouping(
            jobs in prop::collection::vec(job(), 0..100_000),
            groups in 1usize..50,
            seed in any::<u64>(),
        ) {
            let price = Price::default_rate();
            let mut total = DecimalSum::new();
            let mut by_group = vec![DecimalSum::new(); groups];
            let mut pixels: u128 = 0;
            let mut rng = seed;
            for &(w, h, up) in &jobs {
                let (ow, oh) = output_size(w, h, up);
                let cost = price.cost(ow, oh);
                total.add(cost).unwrap();
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                by_group[(rng >> 33) as usize % groups].add_exact(&exact(cost)).unwrap();
                pixels += u128::from(ow) * u128::from(oh);
            }
            let mut regrouped = DecimalSum::new();
            for g in by_group.iter().rev() {
                regrouped.merge(g).unwrap();
            }
            let oracle = Decimal::from_i128_with_scale((pixels * 21) as i128, 10).normalize();
            prop_assert_eq!(total.total(), regrouped.total());
            prop_assert_eq!(exact(total.total()), exact(oracle));
            prop_assert_eq!(total.count(), jobs.len() as u64);
        }

        #[test]
        fn exact_round_trips(mantissa in -(MAX_MANTISSA as i128)..=(MAX_MANTISSA as i128),
                             scale in 0u32..=28) {
            let d = Decimal::from_i128_with_scale(mantissa, scale);
            let text = exact(d);
            prop_assert!(!text.contains(['e', 'E']));
            let back = parse_exact(&text).unwrap();
            prop_assert_eq!(back, d);
            prop_assert_eq!(exact(back), text.clone());
            prop_assert_eq!(Decimal::from_str(&text).unwrap(), d);
        }

        #[test]
        fn parse_usd_never_panics(text in "\\PC*") {
            let _ = parse_usd("budget", &text);
            let _ = parse_rate("rate", &text);
            let _ = parse_exact(&text);
        }

        #[test]
        fn parse_usd_reads_what_exact_writes(mantissa in 0i128..=(MAX_MANTISSA as i128),
                                             scale in 0u32..=28) {
            let d = Decimal::from_i128_with_scale(mantissa, scale);
            prop_assert_eq!(parse_usd("budget", &exact(d)).unwrap(), d);
        }
    }
}
