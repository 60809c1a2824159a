//! placeholder until the money module lands
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
pub const MODEL: &str = "codeformer-image-restoration";
#[derive(Debug, Clone)]
pub struct Price {
    pub model: String,
    pub per_megapixel: Decimal,
    pub effective_from: DateTime<Utc>,
}
impl Price {
    pub fn default_rate() -> Price {
        Price {
            model: MODEL.into(),
            per_megapixel: Decimal::new(21, 4),
            effective_from: DateTime::from_timestamp(0, 0).unwrap(),
        }
    }
    pub fn cost(&self, w: u64, h: u64) -> Decimal {
        (Decimal::from(w) * Decimal::from(h) / Decimal::from(1_000_000u64) * self.per_megapixel)
            .normalize()
    }
}
pub fn output_size(w: u32, h: u32, upscale: u32) -> (u64, u64) {
    (w as u64 * upscale as u64, h as u64 * upscale as u64)
}
pub fn exact(d: Decimal) -> String {
    d.normalize().to_string()
}
pub fn megapixels(w: u64, h: u64) -> Decimal {
    (Decimal::from(w) * Decimal::from(h) / Decimal::from(1_000_000u64)).normalize()
}
pub fn display(d: Decimal) -> String {
    format!("${}", d.round_dp(4))
}
#[derive(Debug)]
pub struct MoneyError(pub String);
impl std::fmt::Display for MoneyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
pub fn parse_usd(_f: &'static str, t: &str) -> Result<Decimal, MoneyError> {
    t.parse().map_err(|_| MoneyError(t.into()))
}
pub fn parse_rate(_f: &'static str, t: &str) -> Result<Decimal, MoneyError> {
    t.parse().map_err(|_| MoneyError(t.into()))
}
