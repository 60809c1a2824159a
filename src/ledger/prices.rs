//! Prices: the rate in force at a time, and the price list (`prices set/list/remove`).

use super::events::{insert_event, Event};
use super::{Ledger, Result};
use crate::clock;
use crate::money::{self, Price};
use rusqlite::{params, OptionalExtension};
use rust_decimal::Decimal;
use std::str::FromStr;

pub(super) fn price_in_force(tx: &rusqlite::Connection, at: &str) -> Result<Price> {
    let row: Option<(String, String, String)> = tx
        .prepare_cached(
            "SELECT model, per_megapixel, effective_from FROM prices
             WHERE model = ?1 AND effective_from <= ?2
               AND id NOT IN (SELECT price_id FROM price_removals)
             ORDER BY effective_from DESC, id DESC LIMIT 1",
        )?
        .query_row(params![money::MODEL, at], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((model, rate, from)) = row else {
        return Ok(Price::default_rate());
    };
    Ok(Price {
        model,
        per_megapixel: Decimal::from_str(&rate).map_err(|_| super::LedgerError::Corrupt {
            what: "prices.per_megapixel",
            value: rate.clone(),
        })?,
        effective_from: clock::parse_remote(&from).unwrap_or_else(clock::now),
    })
}

impl Ledger {
    /// The price in force now.
    pub fn current_price(&self) -> Result<Price> {
        price_in_force(&self.conn, &clock::now_stamp())
    }

    /// Every price row, oldest first.
    pub fn prices(&self) -> Result<Vec<(i64, Price, Option<String>)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, model, per_megapixel, effective_from, note FROM prices ORDER BY effective_from, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, model, rate, from, note) = row?;
            let per_megapixel =
                Decimal::from_str(&rate).map_err(|_| super::LedgerError::Corrupt {
                    what: "prices.per_megapixel",
                    value: rate.clone(),
                })?;
            let effective_from = clock::parse_remote(&from).ok_or(super::LedgerError::Corrupt {
                what: "prices.effective_from",
                value: from.clone(),
            })?;
            out.push((
                id,
                Price {
                    model,
                    per_megapixel,
                    effective_from,
                },
                note,
            ));
        }
        Ok(out)
    }

    /// The prices withdrawn by `prices remove`: price id, when, and why.
    pub fn price_removals(&self) -> Result<Vec<(i64, String, Option<String>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT price_id, removed_at, reason FROM price_removals ORDER BY price_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Withdraws a price: a new row in `price_removals` and a `price` event; the price row
    /// itself is kept. The last price of the model in force cannot be removed.
    pub fn remove_price(&mut self, id: i64, reason: Option<&str>) -> Result<()> {
        let tx = self.conn.transaction()?;
        let refuse = |reason: &str| super::LedgerError::PriceNotRemovable {
            id,
            reason: reason.to_string(),
        };
        let row: Option<(String, String, String)> = tx
            .query_row(
                "SELECT model, per_megapixel, effective_from FROM prices WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((model, rate, from)) = row else {
            return Err(refuse("there is no such price (see `prices list`)"));
        };
        let removed: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM price_removals WHERE price_id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        if removed {
            return Err(refuse("it was already removed"));
        }
        let others: i64 = tx.query_row(
            "SELECT count(*) FROM prices WHERE model = ?1 AND id != ?2
               AND id NOT IN (SELECT price_id FROM price_removals)",
            params![model, id],
            |r| r.get(0),
        )?;
        if others == 0 {
            return Err(refuse(
                "it is the only price left; record the right one first (`prices set USD_PER_MP --from DATE`)",
            ));
        }
        let now = clock::Stamp::now();
        tx.execute(
            "INSERT INTO price_removals (price_id, removed_at, reason) VALUES (?1, ?2, ?3)",
            params![id, now, reason],
        )?;
        insert_event(
            &tx,
            Event::new(None, None, "price").detail(format!(
                "price {id} ({rate} USD per megapixel for {model} from {from}) removed{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
            &now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a new price, in force from its date.
    pub fn set_price(&mut self, price: &Price, note: Option<&str>) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        tx.execute(
            "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at, note)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                price.model,
                money::exact(price.per_megapixel),
                clock::stamp(price.effective_from),
                now,
                note
            ],
        )?;
        let id = tx.last_insert_rowid();
        insert_event(
            &tx,
            Event::new(None, None, "price").detail(format!(
                "{} USD per megapixel for {} from {}",
                money::exact(price.per_megapixel),
                price.model,
                clock::stamp(price.effective_from)
            )),
            &now,
        )?;
        tx.commit()?;
        Ok(id)
    }
}
