//! `prices`: the price table. A new price is data: a row in force from its date.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::{clock, money};

/// The price table (USD per output megapixel, with effective dates).
///
/// A job is priced at the rate in force when it is sent. A price set with the same --from
/// as an earlier one supersedes it (the later record wins); `prices remove ID` withdraws a
/// price recorded by mistake. Both are recorded: no price row is ever edited or deleted.
///
/// Examples:
///   codeformer-ledger prices list
///   codeformer-ledger prices set 0.0025 --from 2027-01-01
///   codeformer-ledger prices remove 3 --reason "typo: meant 0.0025"
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PricesArgs {
    #[command(subcommand)]
    pub action: PricesAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum PricesAction {
    /// Every price, oldest first: `*` marks the one in force; superseded and removed ones say so.
    List,
    /// Record a new price.
    Set {
        /// USD per output megapixel (10^6 pixels), e.g. 0.0021 (a leading `$` means USD too;
        /// quote it, or the shell reads `$0`).
        #[arg(value_name = "USD_PER_MP", allow_negative_numbers = true)]
        rate: String,
        /// In force from this date or time (YYYY-MM-DD or RFC 3339) [default: now]; the same
        /// date as an earlier price supersedes it.
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// A note kept with the price.
        #[arg(long)]
        note: Option<String>,
    },
    /// Withdraw a price (by its id in `prices list`); jobs already sent keep their rate.
    Remove {
        #[arg(value_name = "ID")]
        id: i64,
        /// Why, kept with the removal.
        #[arg(long)]
        reason: Option<String>,
    },
}

pub fn run(global: &Global, args: PricesArgs) -> CmdResult {
    match args.action {
        PricesAction::List => {
            let ledger = global.open_ledger()?;
            let current = ledger.current_price()?;
            let prices = ledger.prices()?;
            let removals = ledger.price_removals()?;
            let mut in_force_marked = false;
            for (id, price, note) in &prices {
                let removed = removals.iter().find(|(r, _, _)| r == id);
                // The later record of the same date wins (see `price_in_force`).
                let superseded_by = prices
                    .iter()
                    .filter(|(other, p, _)| {
                        other > id
                            && p.model == price.model
                            && p.effective_from == price.effective_from
                            && !removals.iter().any(|(r, _, _)| r == other)
                    })
                    .map(|(other, _, _)| *other)
                    .max();
                let status = match (removed, superseded_by) {
                    (Some((_, at, reason)), _) => format!(
                        "  [removed {at}{}]",
                        reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                    (None, Some(other)) => format!("  [superseded by {other}]"),
                    (None, None) => String::new(),
                };
                let in_force = removed.is_none()
                    && superseded_by.is_none()
                    && !in_force_marked
                    && price.per_megapixel == current.per_megapixel
                    && price.effective_from == current.effective_from;
                let mark = if in_force {
                    in_force_marked = true;
                    "*"
                } else {
                    " "
                };
                println!(
                    "{mark} {id:>3}  {}  {} USD/MP  from {}  {}{status}",
                    price.model,
                    money::exact(price.per_megapixel),
                    clock::stamp(price.effective_from),
                    note.as_deref().unwrap_or_default()
                );
            }
            Ok(codeformer_ledger::exit::DONE)
        }
        PricesAction::Set { rate, from, note } => {
            let per_megapixel = money::parse_rate("price", &rate)
                .map_err(|e| CliError::usage(format!("{e}{}", shell_hint(&rate))))?;
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
            let removals = ledger.price_removals()?;
            let superseded: Vec<String> = ledger
                .prices()?
                .into_iter()
                .filter(|(id, p, _)| {
                    p.model == price.model
                        && p.effective_from == effective_from
                        && !removals.iter().any(|(r, _, _)| r == id)
                })
                .map(|(id, _, _)| id.to_string())
                .collect();
            let id = ledger.set_price(&price, note.as_deref())?;
            println!(
                "price {id}: {} USD per megapixel from {}{}",
                money::exact(per_megapixel),
                clock::stamp(effective_from),
                if superseded.is_empty() {
                    String::new()
                } else {
                    format!("; supersedes price {} (same date)", superseded.join(", "))
                }
            );
            Ok(codeformer_ledger::exit::DONE)
        }
        PricesAction::Remove { id, reason } => {
            let mut ledger = global.open_ledger()?;
            ledger.remove_price(id, reason.as_deref())?;
            let current = ledger.current_price()?;
            println!(
                "price {id} removed; in force now: {} USD per megapixel (from {})",
                money::exact(current.per_megapixel),
                clock::stamp(current.effective_from)
            );
            Ok(codeformer_ledger::exit::DONE)
        }
    }
}

/// A hint for a price the shell changed: unquoted, `$0.002` reaches the program as the
/// shell's name followed by `.002`.
fn shell_hint(text: &str) -> &'static str {
    let tail = text.rsplit_once('.');
    match tail {
        Some((head, digits))
            if !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
                && !head.is_empty()
                && head.chars().any(|c| c.is_alphabetic()) =>
        {
            "; if you typed $0.…, the shell replaced `$0` with its own name: write the price without `$` (0.002), or in single quotes ('$0.002')"
        }
        _ => "",
    }
}

/// A date (`2026-11-25`, midnight UTC) or a full timestamp.
pub fn parse_date(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    clock::parse_remote(text)
}
