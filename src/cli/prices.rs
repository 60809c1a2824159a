//! `prices`: the price table. A new price is data: a row in force from its date.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::{clock, money};

/// The price table (USD per output megapixel, with effective dates).
///
/// Examples:
///   codeformer-ledger prices list
///   codeformer-ledger prices set 0.0025 --from 2027-01-01
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PricesArgs {
    #[command(subcommand)]
    pub action: PricesAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum PricesAction {
    /// Every price, oldest first, and which one is in force.
    List,
    /// Record a new price.
    Set {
        /// USD per output megapixel (10^6 pixels), e.g. 0.0021.
        #[arg(value_name = "USD_PER_MP", allow_negative_numbers = true)]
        rate: String,
        /// In force from this date or time (YYYY-MM-DD or RFC 3339) [default: now].
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// A note kept with the price.
        #[arg(long)]
        note: Option<String>,
    },
}

pub fn run(global: &Global, args: PricesArgs) -> CmdResult {
    match args.action {
        PricesAction::List => {
            let ledger = global.open_ledger()?;
            let current = ledger.current_price()?;
            for (id, price, note) in ledger.prices()? {
                let mark = if price.per_megapixel == current.per_megapixel
                    && price.effective_from == current.effective_from
                {
                    "*"
                } else {
                    " "
                };
                println!(
                    "{mark} {id:>3}  {}  {} USD/MP  from {}  {}",
                    price.model,
                    money::exact(price.per_megapixel),
                    clock::stamp(price.effective_from),
                    note.unwrap_or_default()
                );
            }
            Ok(codeformer_ledger::exit::DONE)
        }
        PricesAction::Set { rate, from, note } => {
            let per_megapixel =
                money::parse_rate("price", &rate).map_err(|e| CliError::usage(e.to_string()))?;
            let effective_from = match from {
                None => clock::now(),
                Some(text) => parse_date(&text).ok_or_else(|| {
                    CliError::usage(format!(
                        "--from `{text}` is not a date (YYYY-MM-DD) or an RFC 3339 time"
                    ))
                })?,
            };
            let price = money::Price {
                model: money::MODEL.to_string(),
                per_megapixel,
                effective_from,
            };
            let mut ledger = global.open_ledger()?;
            let id = ledger.set_price(&price, note.as_deref())?;
            println!(
                "price {id}: {} USD per megapixel from {}",
                money::exact(per_megapixel),
                clock::stamp(effective_from)
            );
            Ok(codeformer_ledger::exit::DONE)
        }
    }
}

/// A date (`2026-11-25`, midnight UTC) or a full timestamp.
pub fn parse_date(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    clock::parse_remote(text)
}
