//! The call history on the cluster's shared PostgreSQL store: the same queries as the SQLite
//! path of [`super::CallHistory`], written for PostgreSQL, so every gateway of a cluster
//! writes its calls to one place and any gateway lists and analyses all of them.
//!
//! # Same answers as SQLite
//!
//! - Ties in the list order break on the call id in byte order (`COLLATE "C"`), as SQLite's
//!   default collation does, whatever the database's locale.
//! - The confidence bucket is computed with the same double arithmetic (`confidence * 10 +
//!   1e-9`, truncated, clamped to 0..9); the clamp comes before the cast, since PostgreSQL's
//!   cast to an integer rounds and fails out of range where SQLite's truncates and saturates.
//! - The mean duration averages the durations as doubles, as SQLite's `AVG` does.
//! - Text a record carries may hold a NUL character, which PostgreSQL's `TEXT` refuses; the
//!   indexed columns get U+FFFD in its place (the record itself is stored as JSON text, where a
//!   NUL is escaped, and comes back unchanged).

use ::postgres::types::ToSql;

use super::{
    assemble, conditions, Analytics, CallFilter, CallSummary, FilterValue, HistoryError,
    IntentGroup, DEFAULT_LIMIT, MAX_LIMIT,
};
use crate::storage::postgres::{conn, PgPool};

/// The schema, one file per version (`voicebot_schema`, store `history`). Append; never edit
/// a released file.
const MIGRATIONS: &[&str] = &[include_str!(
    "../../migrations/postgres/history/0001_calls.sql"
)];

/// The columns of a [`CallSummary`], in the order [`summary_from_row`] reads them.
const SUMMARY_COLUMNS: &str = "c.id, c.call_id, c.started_at_ms, c.duration_ms, c.caller, c.flow, \
     c.outcome, c.escalated, c.reason, c.transfer_outcome, c.turn_count, c.ended_by, c.node";

/// One bound parameter.
type Param = Box<dyn ToSql + Sync + Send>;

/// Brings the `history` schema up to date.
pub(super) fn migrate(pool: &PgPool) -> Result<(), HistoryError> {
    Ok(crate::storage::postgres::migrate(
        pool, "history", MIGRATIONS,
    )?)
}

/// `text` as PostgreSQL's `TEXT` takes it (no NUL).
fn pg_text(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_string()
    }
}

fn pg_opt(text: &Option<String>) -> Option<String> {
    text.as_deref().map(pg_text)
}

/// Stores one call and its turns in one transaction (a second insert of the same id replaces
/// the first, turns too).
pub(super) fn insert(
    pool: &PgPool,
    s: &CallSummary,
    turns: &[(Option<String>, Option<f64>)],
    record: &str,
) -> Result<(), HistoryError> {
    let mut c = conn(pool)?;
    let mut tx = c.transaction()?;
    let id = pg_text(&s.id);
    tx.execute(
        "INSERT INTO calls (id, call_id, started_at_ms, duration_ms, caller, flow, outcome,
             escalated, reason, transfer_outcome, turn_count, ended_by, node, record)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (id) DO UPDATE SET
             call_id = EXCLUDED.call_id,
             started_at_ms = EXCLUDED.started_at_ms,
             duration_ms = EXCLUDED.duration_ms,
             caller = EXCLUDED.caller,
             flow = EXCLUDED.flow,
             outcome = EXCLUDED.outcome,
             escalated = EXCLUDED.escalated,
             reason = EXCLUDED.reason,
             transfer_outcome = EXCLUDED.transfer_outcome,
             turn_count = EXCLUDED.turn_count,
             ended_by = EXCLUDED.ended_by,
             node = EXCLUDED.node,
             record = EXCLUDED.record",
        &[
            &id,
            &pg_text(&s.call_id),
            &s.started_at_ms,
            &i64::try_from(s.duration_ms).unwrap_or(i64::MAX),
            &pg_text(&s.from),
            &pg_opt(&s.flow),
            &pg_opt(&s.outcome),
            &s.escalated,
            &pg_opt(&s.reason),
            &pg_opt(&s.transfer_outcome),
            &i64::from(s.turns),
            &pg_text(&s.ended_by),
            &pg_opt(&s.node),
            &record,
        ],
    )?;
    tx.execute("DELETE FROM call_turns WHERE id = $1", &[&id])?;
    if !turns.is_empty() {
        // One statement for all turns: one round trip per call, however long it was.
        let idx: Vec<i64> = (1..).take(turns.len()).collect();
        let intents: Vec<Option<String>> = turns.iter().map(|(i, _)| pg_opt(i)).collect();
        let confidences: Vec<Option<f64>> = turns.iter().map(|(_, c)| *c).collect();
        tx.execute(
            "INSERT INTO call_turns (id, idx, intent, confidence)
             SELECT $1, t.idx, t.intent, t.confidence
             FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::FLOAT8[]) AS t (idx, intent, confidence)",
            &[&id, &idx, &intents, &confidences],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The filter's `WHERE` (empty or starting with " WHERE") and its parameters, numbered from
/// `$1`.
fn where_clause(filter: &CallFilter) -> (String, Vec<Param>) {
    let mut text: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    for (condition, value) in conditions(filter) {
        params.push(match value {
            FilterValue::Int(n) => Box::new(n),
            FilterValue::Text(t) => Box::new(pg_text(&t)),
            FilterValue::Bool(b) => Box::new(b),
        });
        text.push(format!("{condition} ${}", params.len()));
    }
    if text.is_empty() {
        (String::new(), params)
    } else {
        (format!(" WHERE {}", text.join(" AND ")), params)
    }
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn summary_from_row(row: &::postgres::Row) -> Result<CallSummary, ::postgres::Error> {
    Ok(CallSummary {
        id: row.try_get(0)?,
        call_id: row.try_get(1)?,
        started_at_ms: row.try_get(2)?,
        duration_ms: u64::try_from(row.try_get::<_, i64>(3)?).unwrap_or(0),
        from: row.try_get(4)?,
        flow: row.try_get(5)?,
        outcome: row.try_get(6)?,
        escalated: row.try_get(7)?,
        reason: row.try_get(8)?,
        transfer_outcome: row.try_get(9)?,
        turns: u32::try_from(row.try_get::<_, i64>(10)?).unwrap_or(u32::MAX),
        ended_by: row.try_get(11)?,
        node: row.try_get(12)?,
    })
}

pub(super) fn list(pool: &PgPool, filter: &CallFilter) -> Result<Vec<CallSummary>, HistoryError> {
    let (clause, mut params) = where_clause(filter);
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    params.push(Box::new(i64::from(limit)));
    params.push(Box::new(i64::from(filter.offset.unwrap_or(0))));
    let n = params.len();
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM calls c{clause}
         ORDER BY c.started_at_ms DESC, c.id COLLATE \"C\" DESC LIMIT ${} OFFSET ${n}",
        n - 1
    );
    let rows = conn(pool)?.query(&sql, &refs(&params))?;
    Ok(rows
        .iter()
        .map(summary_from_row)
        .collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn count(pool: &PgPool, filter: &CallFilter) -> Result<u64, HistoryError> {
    let (clause, params) = where_clause(filter);
    let n: i64 = conn(pool)?
        .query_one(
            &format!("SELECT COUNT(*) FROM calls c{clause}"),
            &refs(&params),
        )?
        .try_get(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(super) fn get(pool: &PgPool, key: &str) -> Result<Option<serde_json::Value>, HistoryError> {
    let key = pg_text(key);
    let mut c = conn(pool)?;
    let mut stored: Option<String> = c
        .query_opt("SELECT record FROM calls WHERE id = $1", &[&key])?
        .map(|row| row.try_get(0))
        .transpose()?;
    if stored.is_none() {
        stored = c
            .query_opt(
                "SELECT record FROM calls WHERE call_id = $1
                 ORDER BY started_at_ms DESC, id COLLATE \"C\" DESC LIMIT 1",
                &[&key],
            )?
            .map(|row| row.try_get(0))
            .transpose()?;
    }
    Ok(stored.map(|t| serde_json::from_str(&t)).transpose()?)
}

pub(super) fn prune(pool: &PgPool, older_than_ms: i64) -> Result<usize, HistoryError> {
    // The turns go with their calls (ON DELETE CASCADE, always enforced here).
    let n = conn(pool)?.execute(
        "DELETE FROM calls WHERE started_at_ms < $1",
        &[&older_than_ms],
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub(super) fn analytics(pool: &PgPool, filter: &CallFilter) -> Result<Analytics, HistoryError> {
    let (clause, params) = where_clause(filter);
    let params = refs(&params);
    let and = if clause.is_empty() { " WHERE" } else { " AND" };
    let mut c = conn(pool)?;
    // One snapshot for the three queries, so they describe the same calls while other
    // gateways keep writing.
    let mut tx = c
        .build_transaction()
        .isolation_level(::postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let row = tx.query_one(
        &format!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE NOT c.escalated),
                 AVG(c.duration_ms::FLOAT8) FROM calls c{clause}"
        ),
        &params,
    )?;
    let totals: (i64, Option<i64>, Option<f64>) =
        (row.try_get(0)?, Some(row.try_get(1)?), row.try_get(2)?);
    let reasons = tx
        .query(
            &format!(
                "SELECT COALESCE(c.reason, 'unknown'), COUNT(*) FROM calls c{clause}{and}
                 c.escalated GROUP BY 1"
            ),
            &params,
        )?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(String, i64)>, ::postgres::Error>>()?;
    let groups = tx
        .query(
            &format!(
                "SELECT t.intent,
                     LEAST(GREATEST(TRUNC(t.confidence * 10 + 1e-9::FLOAT8), 0), 9)::BIGINT
                         AS bucket,
                     COUNT(*), SUM(t.confidence)
                 FROM call_turns t JOIN calls c ON c.id = t.id{clause}{and}
                     t.intent IS NOT NULL AND t.confidence IS NOT NULL
                 GROUP BY t.intent, bucket"
            ),
            &params,
        )?
        .iter()
        .map(|row| {
            Ok(IntentGroup {
                intent: row.try_get(0)?,
                bucket: row.try_get(1)?,
                turns: row.try_get(2)?,
                confidence_sum: row.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, ::postgres::Error>>()?;
    tx.commit()?;
    Ok(assemble(totals, reasons, groups))
}
