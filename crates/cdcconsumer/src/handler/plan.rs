//! Decoding and planning: one Debezium record → the Cassandra mutations it implies. Pure, so it is
//! tested on captured envelopes without a database.
//!
//! Rows are built from the tables' one description ([`cdc_core::tables`]): every column of the
//! captured table, in order, converted to the CQL value of its mirrored column. An unchanged TOAST
//! column stays [`Field::Unavailable`] and is never written.

use std::sync::Arc;

use cdc_core::debezium::{
    self, Cell, Change, Declared, Encoding, EnvelopeError, Field, Image, Op, Record,
};
use cdc_core::tables::{self, ColumnType, Table};
use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp, CqlValue};
use uuid::Uuid;

pub use crate::cassandra::{Col, ExtraCell, Write};
use crate::columns::Registry;

/// Every dead-letter reason of planning ([`PlanError::reason`]).
pub const REASONS: &[&str] = &[
    "undecodable",
    "not_an_envelope",
    "unknown_op",
    "missing_image",
    "missing_column",
    "bad_value",
    "no_position",
    "unknown_table",
    "schema_mismatch",
];

/// A change whose Connect schema disagrees with what the mirror holds of its table. When
/// PostgreSQL's table agrees with the change, the table's mirroring stops (the schema really
/// changed); otherwise the change itself is wrong and is parked as `schema_mismatch`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Drift {
    #[error(
        "column `{column}` of {table} is not in the change's schema: dropped or renamed in          PostgreSQL (mirrored since position {since})"
    )]
    Gone {
        schema: String,
        table: &'static str,
        column: String,
        since: i64,
    },
    #[error("column `{column}` of {table} is mirrored as {mirrored}, but the change declares {declared}")]
    Retyped {
        schema: String,
        table: &'static str,
        column: String,
        mirrored: String,
        declared: String,
    },
    #[error(
        "column `{column}` of {table} has a type cdcconsumer cannot mirror ({declared});          supported: uuid, text, varchar, smallint, integer, bigint, boolean, date, timestamp,          timestamptz, numeric(p, s)"
    )]
    Unmirrorable {
        schema: String,
        table: &'static str,
        column: String,
        declared: String,
    },
}

impl Drift {
    /// The PostgreSQL schema and captured table, and the column.
    pub fn place(&self) -> (&str, &'static str, &str) {
        match self {
            Self::Gone {
                schema,
                table,
                column,
                ..
            }
            | Self::Retyped {
                schema,
                table,
                column,
                ..
            }
            | Self::Unmirrorable {
                schema,
                table,
                column,
                ..
            } => (schema, table, column),
        }
    }

    /// Whether PostgreSQL's table as it is now (`columns`: name → mirrored type) shows the same
    /// change: then the schema changed, and the record is not at fault.
    pub fn confirmed_by(&self, columns: &std::collections::BTreeMap<String, Declared>) -> bool {
        match self {
            Self::Gone { column, .. } => !columns.contains_key(column),
            Self::Retyped {
                column, mirrored, ..
            } => match (columns.get(column), ColumnType::parse(mirrored)) {
                (Some(Ok(now)), Some(mirrored)) => !mirrored.holds(*now),
                (Some(Err(_)), _) => true,
                _ => false,
            },
            Self::Unmirrorable { column, .. } => {
                matches!(columns.get(column), Some(Err(_)))
            }
        }
    }
}

/// Why a change cannot be turned into writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("change without a source LSN: its place in PostgreSQL's history is unknown")]
    NoPosition,
    #[error("change of table `{0}`, which this sink does not mirror")]
    UnknownTable(String),
    #[error(transparent)]
    Drift(#[from] Drift),
}

impl PlanError {
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Envelope(e) => e.reason(),
            Self::NoPosition => "no_position",
            Self::UnknownTable(_) => "unknown_table",
            Self::Drift(_) => "schema_mismatch",
        }
    }
}

/// The writes one change implies.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The captured table the change is of.
    pub table: &'static Table,
    /// The row's primary key: changes of one row stay in order.
    pub key: Uuid,
    /// Source LSN: the change's place in PostgreSQL's history, and the write timestamp of every
    /// mutation — except for a snapshot read ([`Plan::fill`]).
    pub lsn: i64,
    /// A snapshot read (`op` `r`, initial or incremental): it only fills what Cassandra lacks. Its
    /// `source.lsn` is where the snapshot (or its chunk's window) ended, not when the row last
    /// changed: a transaction that wrote the row before that point but committed after it is
    /// streamed later with a lower LSN, and must still win. So a read is written just above the
    /// table's latest truncation ([`Plan::write_timestamp`]), below every change it did not see.
    pub fill: bool,
    /// Source commit time, µs since the epoch (for the end-to-end lag).
    pub commit_micros: i64,
    pub writes: Vec<Write>,
}

impl Plan {
    /// The write timestamp of the plan's mutations, given the latest truncation LSN of its table:
    /// its LSN, or for a snapshot read one above the truncation it followed (1 if none). Every
    /// change the read did not see was logged after that truncation, so it wins; a truncation
    /// after the read deletes it (see `handler::truncate`).
    pub fn write_timestamp(&self, truncated_at: i64) -> i64 {
        if !self.fill {
            self.lsn
        } else if truncated_at < self.lsn {
            truncated_at.saturating_add(1).max(1)
        } else {
            1
        }
    }
}

/// What a record asks of the sink.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    Writes(Plan),
    /// Delete everything in `table` older than `lsn`.
    Truncate {
        table: &'static Table,
        lsn: i64,
        commit_micros: i64,
    },
    /// A tombstone: the delete before it already did the work.
    Nothing,
}

fn bad(column: &str, problem: impl Into<String>) -> EnvelopeError {
    EnvelopeError::BadValue {
        column: column.to_owned(),
        problem: problem.into(),
    }
}

/// A decoded value as the CQL value of a column of type `ty`.
fn cql(column: &str, ty: ColumnType, cell: Cell) -> Result<CqlValue, EnvelopeError> {
    Ok(match (ty, cell) {
        (ColumnType::Uuid, Cell::Uuid(u)) => CqlValue::Uuid(u),
        (ColumnType::Text, Cell::Text(t)) => CqlValue::Text(t),
        (ColumnType::Int, Cell::Int(n)) => CqlValue::Int(
            i32::try_from(n).map_err(|_| bad(column, format!("{n} does not fit an int")))?,
        ),
        (ColumnType::BigInt, Cell::Int(n)) => CqlValue::BigInt(n),
        (ColumnType::Bool, Cell::Bool(b)) => CqlValue::Boolean(b),
        (ColumnType::Date, Cell::Date(d)) => CqlValue::Date(CqlDate::from(d)),
        (ColumnType::TimestampTz | ColumnType::Timestamp, Cell::Timestamp(t)) => {
            CqlValue::Timestamp(CqlTimestamp(t.timestamp_millis()))
        }
        (ColumnType::Numeric { .. }, Cell::Decimal(d)) => CqlValue::Decimal(decimal(&d)),
        (ty, cell) => return Err(bad(column, format!("{cell:?} is not a {ty:?}"))),
    })
}

/// A `rust_decimal` as Cassandra's decimal: the shortest two's-complement unscaled bytes, and the
/// scale.
pub fn decimal(value: &rust_decimal::Decimal) -> CqlDecimal {
    let mantissa = value.mantissa().to_be_bytes();
    let mut start = 0;
    while start + 1 < mantissa.len() {
        let (byte, next) = (mantissa[start], mantissa[start + 1]);
        let redundant = (byte == 0x00 && next & 0x80 == 0) || (byte == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    // rust_decimal's scale is at most 28.
    let scale = i32::try_from(value.scale()).unwrap_or(i32::MAX);
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&mantissa[start..], scale)
}

/// Every column of `table` read from `image`, in order, as CQL values.
fn row(image: &Image, table: &Table, encoding: &Encoding) -> Result<Vec<Col>, EnvelopeError> {
    table
        .columns
        .iter()
        .map(|column| cell_of(image, column.name, column.ty, encoding))
        .collect()
}

/// Whether a column mirrored as `mirrored` can take values the change declares as `declared`
/// (a NUMERIC also as `decimal.handling.mode` string or double sends it).
fn accepts(mirrored: ColumnType, declared: &Declared) -> bool {
    match declared {
        Ok(declared) => {
            mirrored.holds(*declared)
                || (matches!(mirrored, ColumnType::Numeric { .. }) && *declared == ColumnType::Text)
        }
        Err(kind) => matches!(mirrored, ColumnType::Numeric { .. }) && kind == "float64",
    }
}

fn declared_name(declared: &Declared) -> String {
    match declared {
        Ok(ty) => ty.name(),
        Err(kind) => kind.clone(),
    }
}

/// Checks the image's schema against the mirror's columns of `table` and decodes the columns
/// added since the description ([`crate::columns`]). Without an embedded schema nothing can be
/// checked and no added column is known: none is written.
fn added_columns(
    image: &Image,
    change: &Change,
    table: &'static Table,
    lsn: i64,
    registry: &Registry,
    encoding: &Encoding,
) -> Result<Vec<ExtraCell>, PlanError> {
    if !image.has_schema() {
        return Ok(Vec::new());
    }
    let schema = || change.source.schema.clone();
    for column in table.columns {
        match image.declared(column.name) {
            None => {
                return Err(Drift::Gone {
                    schema: schema(),
                    table: table.name,
                    column: column.name.to_owned(),
                    since: 0,
                }
                .into())
            }
            Some(declared) if !accepts(column.ty, &declared) => {
                return Err(Drift::Retyped {
                    schema: schema(),
                    table: table.name,
                    column: column.name.to_owned(),
                    mirrored: column.ty.name(),
                    declared: declared_name(&declared),
                }
                .into())
            }
            Some(_) => {}
        }
    }
    // A change at or below `since` may predate the column; one above it cannot.
    if let Some(gone) = registry
        .of(table)
        .iter()
        .find(|added| lsn > added.since && image.declared(&added.name).is_none())
    {
        return Err(Drift::Gone {
            schema: schema(),
            table: table.name,
            column: gone.name.to_string(),
            since: gone.since,
        }
        .into());
    }
    let mut extra = Vec::new();
    for name in image.declared_columns() {
        if table.column(name).is_some() {
            continue;
        }
        let declared = image.declared(name).unwrap_or_else(|| Err("?".into()));
        let ty = match (registry.get(table, name), &declared) {
            (Some(added), declared) if accepts(added.ty, declared) => added.ty,
            (Some(added), declared) => {
                return Err(Drift::Retyped {
                    schema: schema(),
                    table: table.name,
                    column: name.to_owned(),
                    mirrored: added.ty.name(),
                    declared: declared_name(declared),
                }
                .into())
            }
            (None, Ok(ty)) => *ty,
            (None, Err(kind)) => {
                return Err(Drift::Unmirrorable {
                    schema: schema(),
                    table: table.name,
                    column: name.to_owned(),
                    declared: kind.clone(),
                }
                .into())
            }
        };
        extra.push(ExtraCell {
            name: Arc::from(name),
            ty,
            value: cell_of(image, name, ty, encoding)?,
        });
    }
    Ok(extra)
}

/// One column of `image` as the CQL value of a column of type `ty`.
fn cell_of(
    image: &Image,
    name: &str,
    ty: ColumnType,
    encoding: &Encoding,
) -> Result<Col, EnvelopeError> {
    Ok(match image.get_with(name, ty, encoding)? {
        Field::Null => Field::Null,
        Field::Unavailable => Field::Unavailable,
        Field::Value(cell) => Field::Value(cql(name, ty, cell)?),
    })
}

/// The single uuid key of a captured table's row.
fn key(table: &Table, cells: &[Col]) -> Result<Uuid, EnvelopeError> {
    let name = table.key.first().copied().unwrap_or("id");
    match table.position(name).and_then(|at| cells.get(at)) {
        Some(Field::Value(CqlValue::Uuid(id))) => Ok(*id),
        _ => Err(bad(name, "a key column must have a value")),
    }
}

fn user_of(orders: &[Col]) -> Option<&Col> {
    tables::ORDERS
        .position("user_id")
        .and_then(|at| orders.get(at))
}

fn delete(table: &'static Table, key: Vec<CqlValue>) -> Write {
    Write::Delete { table, key }
}

/// Turns one Debezium record into the writes it implies, given the columns added to the
/// captured tables so far (`registry`).
pub fn plan(
    record: &Record,
    encoding: &Encoding,
    registry: &Registry,
) -> Result<Planned, PlanError> {
    let change = match record {
        Record::Tombstone { .. } => return Ok(Planned::Nothing),
        Record::Change(change) => change,
    };
    let table = table_of(change)?;
    // An incremental snapshot's reads carry no `lsn`; their `sequence` says where the chunk's
    // window ended, which is all a read's position is used for (see `Plan::fill`).
    let lsn = match (change.source.lsn, change.op) {
        (Some(lsn), _) => lsn,
        (None, Op::Read) => change.source.sequence.ok_or(PlanError::NoPosition)?,
        (None, _) => return Err(PlanError::NoPosition),
    };
    let commit_micros = change.source.commit_micros();
    let missing = |image: &'static str| EnvelopeError::MissingImage {
        op: change.op,
        image,
    };
    let is_orders = table.name == tables::ORDERS.name;
    let (key, writes) = match change.op {
        Op::Truncate => {
            return Ok(Planned::Truncate {
                table,
                lsn,
                commit_micros,
            })
        }
        Op::Create | Op::Read | Op::Update => {
            let after = change.after.as_ref().ok_or_else(|| missing("after"))?;
            let mut extra = added_columns(after, change, table, lsn, registry, encoding)?;
            let mut cells = row(after, table, encoding)?;
            let id = key(table, &cells)?;
            let mut writes = Vec::with_capacity(3);
            if is_orders && change.op == Op::Update {
                // REPLICA IDENTITY FULL: the before image holds the old user_id.
                if let Some(before) = change.before.as_ref().filter(|b| b.has("user_id")) {
                    let old = row(before, table, encoding)?;
                    let moved_from = match (user_of(&old), user_of(&cells)) {
                        (Some(Field::Value(old_user)), Some(Field::Value(new_user)))
                            if old_user != new_user =>
                        {
                            Some(old_user.clone())
                        }
                        _ => None,
                    };
                    if let Some(old_user) = moved_from {
                        writes.push(delete(
                            &tables::ORDERS_BY_USER,
                            vec![old_user, CqlValue::Uuid(id)],
                        ));
                        // The new orders_by_user row is written whole: columns the after image
                        // left out as unchanged TOAST values come from the before image.
                        for (cell, previous) in cells.iter_mut().zip(old) {
                            if matches!(cell, Field::Unavailable) {
                                *cell = previous;
                            }
                        }
                        for added in extra
                            .iter_mut()
                            .filter(|added| matches!(added.value, Field::Unavailable))
                        {
                            added.value = cell_of(before, &added.name, added.ty, encoding)?;
                        }
                    }
                }
            }
            let by_user = is_orders.then(|| Write::Upsert {
                table: &tables::ORDERS_BY_USER,
                cells: tables::orders_by_user_row(&cells, || Field::Null),
                extra: extra.clone(),
            });
            writes.push(Write::Upsert {
                table,
                cells,
                extra,
            });
            writes.extend(by_user);
            (id, writes)
        }
        Op::Delete => {
            let before = change.before.as_ref().ok_or_else(|| missing("before"))?;
            let cells = row(before, table, encoding)?;
            let id = key(table, &cells)?;
            let mut writes = vec![delete(table, vec![CqlValue::Uuid(id)])];
            if is_orders {
                match user_of(&cells) {
                    Some(Field::Value(user)) => writes.push(delete(
                        &tables::ORDERS_BY_USER,
                        vec![user.clone(), CqlValue::Uuid(id)],
                    )),
                    _ => return Err(bad("user_id", "a deleted order needs its user").into()),
                }
            }
            (id, writes)
        }
    };
    Ok(Planned::Writes(Plan {
        table,
        key,
        lsn,
        fill: change.op == Op::Read,
        commit_micros,
        writes,
    }))
}

fn table_of(change: &Change) -> Result<&'static Table, PlanError> {
    tables::captured(&change.source.table)
        .ok_or_else(|| PlanError::UnknownTable(change.source.table.clone()))
}

/// The upserts of `plan` undone (for a truncation newer than the plan).
pub fn undo(plan: &Plan) -> Vec<Write> {
    plan.writes
        .iter()
        .filter_map(|write| match write {
            Write::Upsert { table, .. } => Some(delete(table, write.key())),
            Write::Delete { .. } => None,
        })
        .collect()
}

/// Parses and plans one record as it came from Kafka.
pub fn plan_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    encoding: &Encoding,
    registry: &Registry,
) -> Result<Planned, PlanError> {
    debezium::parse(key, value)
        .map_err(PlanError::from)
        .and_then(|record| plan(&record, encoding, registry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::str::FromStr;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/../core/tests/fixtures/debezium/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("fixture");
        serde_json::from_str(&text).expect("fixture JSON")
    }

    fn planned(record: &Value) -> Result<Planned, PlanError> {
        let key = (!record["key"].is_null()).then(|| record["key"].to_string());
        let value = (!record["value"].is_null()).then(|| record["value"].to_string());
        plan_record(
            key.as_deref().map(str::as_bytes),
            value.as_deref().map(str::as_bytes),
            &Encoding::default(),
            &Registry::default(),
        )
    }

    fn writes(record: &Value) -> Plan {
        match planned(record).expect("plan") {
            Planned::Writes(plan) => plan,
            other => panic!("expected writes, got {other:?}"),
        }
    }

    fn payload(record: &mut Value) -> &mut Value {
        &mut record["value"]["payload"]
    }

    fn names(writes: &[Write]) -> Vec<(&'static str, bool)> {
        writes
            .iter()
            .map(|w| (w.table().name, matches!(w, Write::Upsert { .. })))
            .collect()
    }

    fn uuid(value: &Value) -> CqlValue {
        CqlValue::Uuid(value.as_str().and_then(|s| s.parse().ok()).expect("uuid"))
    }

    #[test]
    fn user_insert_and_delete() {
        let insert = writes(&fixture("users_c"));
        assert_eq!(insert.table.name, "users");
        assert_eq!(
            Some(insert.lsn),
            fixture("users_c")["value"]["payload"]["source"]["lsn"].as_i64()
        );
        assert_eq!(names(&insert.writes), [("users", true)]);
        let write = &insert.writes[0];
        assert_eq!(write.key(), vec![CqlValue::Uuid(insert.key)]);
        assert!(matches!(
            write.cell("name"),
            Some(Field::Value(CqlValue::Text(_)))
        ));
        assert_eq!(write.cell("deleted_at"), Some(&Field::Null));
        assert!(matches!(
            write.cell("version"),
            Some(Field::Value(CqlValue::BigInt(_)))
        ));
        let delete = writes(&fixture("users_d"));
        assert_eq!(
            delete.writes,
            vec![Write::Delete {
                table: &tables::USERS,
                key: vec![CqlValue::Uuid(delete.key)]
            }]
        );
        assert_eq!(planned(&fixture("users_tombstone")), Ok(Planned::Nothing));
    }

    #[test]
    fn order_insert_writes_both_tables_and_snapshot_reads_count_as_inserts() {
        for name in ["orders_c", "orders_r"] {
            let plan = writes(&fixture(name));
            assert_eq!(
                names(&plan.writes),
                [("orders", true), ("orders_by_user", true)],
                "{name}"
            );
            let (order, by_user) = (&plan.writes[0], &plan.writes[1]);
            for column in [
                "product",
                "quantity",
                "amount",
                "status",
                "order_date",
                "version",
            ] {
                assert_eq!(order.cell(column), by_user.cell(column), "{name}.{column}");
            }
            assert_eq!(order.cell("id"), by_user.cell("order_id"));
            assert_eq!(by_user.key()[1], CqlValue::Uuid(plan.key));
            assert!(matches!(
                order.cell("amount"),
                Some(Field::Value(CqlValue::Decimal(_)))
            ));
            assert!(matches!(
                order.cell("quantity"),
                Some(Field::Value(CqlValue::Int(_)))
            ));
        }
    }

    #[test]
    fn order_moving_to_another_user_removes_the_old_orders_by_user_row() {
        let mut record = fixture("orders_u");
        let old_user = payload(&mut record)["before"]["user_id"].clone();
        let new_user = "0b7a4b2e-3a40-4d8e-9a53-8d0b6b1a7f11";
        payload(&mut record)["after"]["user_id"] = Value::from(new_user);
        // An unchanged TOAST column in the after image: the new row takes the old value.
        payload(&mut record)["after"]["product"] = Value::from(debezium::UNAVAILABLE);
        let plan = writes(&record);
        assert_eq!(
            names(&plan.writes),
            [
                ("orders_by_user", false),
                ("orders", true),
                ("orders_by_user", true)
            ]
        );
        assert_eq!(
            plan.writes[0].key(),
            vec![uuid(&old_user), CqlValue::Uuid(plan.key)]
        );
        assert_eq!(
            plan.writes[1].cell("user_id"),
            Some(&Field::Value(uuid(&Value::from(new_user))))
        );
        assert_eq!(
            plan.writes[2].cell("product"),
            Some(&Field::Value(CqlValue::Text("Phone charger".to_owned())))
        );
    }

    #[test]
    fn the_placeholder_counts_only_in_toastable_columns_and_only_as_configured() {
        let custom = Encoding {
            unavailable: "__unchanged_3f9a".to_owned(),
            ..Encoding::default()
        };
        let planned_with = |record: &Value, encoding: &Encoding| {
            plan_record(
                Some(record["key"].to_string().as_bytes()),
                Some(record["value"].to_string().as_bytes()),
                encoding,
                &Registry::default(),
            )
        };
        let mut record = fixture("orders_u");
        payload(&mut record)["after"]["product"] = Value::from("__unchanged_3f9a");
        let Ok(Planned::Writes(plan)) = planned_with(&record, &custom) else {
            panic!("no plan");
        };
        assert_eq!(plan.writes[0].cell("product"), Some(&Field::Unavailable));
        // Debezium's default string is an ordinary value once another placeholder is set.
        payload(&mut record)["after"]["product"] = Value::from(debezium::UNAVAILABLE);
        let Ok(Planned::Writes(plan)) = planned_with(&record, &custom) else {
            panic!("no plan");
        };
        assert_eq!(
            plan.writes[0].cell("product"),
            Some(&Field::Value(CqlValue::Text(
                debezium::UNAVAILABLE.to_owned()
            )))
        );
        // Never in a column that cannot be TOASTed: there it is a bad value, not "unchanged".
        payload(&mut record)["after"]["user_id"] = Value::from("__unchanged_3f9a");
        assert_eq!(
            planned_with(&record, &custom).map_err(|e| e.reason()),
            Err("bad_value")
        );
    }

    #[test]
    fn unchanged_toast_column_is_left_unset_when_the_user_stays() {
        let mut record = fixture("orders_u");
        payload(&mut record)["after"]["product"] = Value::from(debezium::UNAVAILABLE);
        let plan = writes(&record);
        assert_eq!(
            names(&plan.writes),
            [("orders", true), ("orders_by_user", true)]
        );
        for write in &plan.writes {
            assert_eq!(write.cell("product"), Some(&Field::Unavailable));
        }
    }

    #[test]
    fn order_delete_removes_both_rows() {
        let mut record = fixture("orders_u");
        payload(&mut record)["op"] = Value::from("d");
        payload(&mut record)["after"] = Value::Null;
        let plan = writes(&record);
        let user = uuid(&payload(&mut record)["before"]["user_id"]);
        assert_eq!(
            plan.writes,
            vec![
                Write::Delete {
                    table: &tables::ORDERS,
                    key: vec![CqlValue::Uuid(plan.key)]
                },
                Write::Delete {
                    table: &tables::ORDERS_BY_USER,
                    key: vec![user, CqlValue::Uuid(plan.key)]
                }
            ]
        );
    }

    #[test]
    fn truncate_names_its_table_and_position() {
        let record = fixture("orders_t");
        let lsn = record["value"]["payload"]["source"]["lsn"].as_i64();
        match planned(&record).expect("plan") {
            Planned::Truncate { table, lsn: at, .. } => {
                assert_eq!(table.name, "orders");
                assert_eq!(Some(at), lsn);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changes_without_position_or_of_other_tables_are_refused() {
        let mut record = fixture("users_u");
        payload(&mut record)["source"]
            .as_object_mut()
            .expect("source")
            .remove("lsn");
        assert_eq!(planned(&record), Err(PlanError::NoPosition));
        let mut record = fixture("users_u");
        payload(&mut record)["source"]["table"] = Value::from("invoices");
        assert_eq!(
            planned(&record).map_err(|e| e.reason()),
            Err("unknown_table")
        );
        let mut record = fixture("users_u");
        payload(&mut record)["after"]["id"] = Value::Null;
        assert_eq!(planned(&record).map_err(|e| e.reason()), Err("bad_value"));
        let mut record = fixture("orders_c");
        payload(&mut record)["after"]["quantity"] = Value::from(1_i64 << 40);
        assert_eq!(planned(&record).map_err(|e| e.reason()), Err("bad_value"));
    }

    #[test]
    fn an_incremental_snapshot_read_takes_its_position_from_the_sequence() {
        let mut record = fixture("orders_r");
        let source = payload(&mut record)["source"]
            .as_object_mut()
            .expect("source");
        source.insert("lsn".into(), Value::Null);
        source.insert("snapshot".into(), Value::from("incremental"));
        source.insert(
            "sequence".into(),
            Value::from(r#"["316748056","316748112"]"#),
        );
        let read = writes(&record);
        assert!(read.fill);
        assert_eq!(read.lsn, 316_748_112);
        // Without a sequence it has no position at all.
        payload(&mut record)["source"]["sequence"] = Value::Null;
        assert_eq!(planned(&record), Err(PlanError::NoPosition));
        // A change is never placed by its sequence.
        let mut record = fixture("users_u");
        let source = payload(&mut record)["source"]
            .as_object_mut()
            .expect("source");
        source.remove("lsn");
        source.insert("sequence".into(), Value::from(r#"["1","2"]"#));
        assert_eq!(planned(&record), Err(PlanError::NoPosition));
    }

    #[test]
    fn snapshot_reads_only_fill_below_every_change_they_did_not_see() {
        let read = writes(&fixture("orders_r"));
        assert!(read.fill);
        // Never truncated: the lowest timestamp, so any streamed change wins.
        assert_eq!(read.write_timestamp(0), 1);
        // Just above a truncation before the read.
        assert_eq!(read.write_timestamp(read.lsn - 10), read.lsn - 9);
        // A truncation after the read deletes it at its own LSN anyway.
        assert_eq!(read.write_timestamp(read.lsn + 10), 1);
        let change = writes(&fixture("orders_c"));
        assert!(!change.fill);
        assert_eq!(change.write_timestamp(change.lsn - 10), change.lsn);
    }

    #[test]
    fn undo_deletes_what_the_upserts_wrote() {
        let plan = writes(&fixture("orders_c"));
        let undone = undo(&plan);
        assert_eq!(
            names(&undone),
            [("orders", false), ("orders_by_user", false)]
        );
        assert_eq!(undone[0].key(), vec![CqlValue::Uuid(plan.key)]);
        assert_eq!(undone[1].key()[1], CqlValue::Uuid(plan.key));
        assert_eq!(undone[1].source().name, "orders");
    }

    #[test]
    fn decimals_keep_value_and_scale() {
        for text in [
            "0",
            "0.00",
            "12.50",
            "-12.50",
            "127",
            "128",
            "-128",
            "-129",
            "9999999999.99",
        ] {
            let value = rust_decimal::Decimal::from_str(text).expect("decimal");
            let encoded = decimal(&value);
            let (bytes, scale) = encoded.as_signed_be_bytes_slice_and_exponent();
            let mut wide = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                [0xffu8; 16]
            } else {
                [0u8; 16]
            };
            wide[16 - bytes.len()..].copy_from_slice(bytes);
            let back = rust_decimal::Decimal::from_i128_with_scale(
                i128::from_be_bytes(wide),
                u32::try_from(scale).expect("scale"),
            );
            assert_eq!(back.to_string(), value.to_string(), "{text}");
            assert!(bytes.len() <= 8, "{text}: {bytes:?}");
        }
    }

    /// The field schemas of the record's `after` image.
    fn after_fields(record: &mut Value) -> &mut Vec<Value> {
        image_fields(record, "after")
    }

    /// The field schemas of the record's `image` ("before" or "after").
    fn image_fields<'a>(record: &'a mut Value, image: &str) -> &'a mut Vec<Value> {
        record["value"]["schema"]["fields"]
            .as_array_mut()
            .and_then(|images| images.iter_mut().find(|f| f["field"] == image))
            .and_then(|fields| fields["fields"].as_array_mut())
            .expect("image fields")
    }

    /// Declares `field` (a Connect field schema) in the record's `after` image and sets its value.
    fn declare(record: &mut Value, field: Value, value: Value) {
        let name = field["field"].as_str().expect("field name").to_owned();
        after_fields(record).push(field);
        payload(record)["after"][name.as_str()] = value;
    }

    /// Removes `column` from the `after` image's schema and values.
    fn undeclare(record: &mut Value, column: &str) {
        after_fields(record).retain(|f| f["field"] != column);
        if let Some(after) = payload(record)["after"].as_object_mut() {
            after.remove(column);
        }
    }

    fn plan_with(record: &Value, registry: &Registry) -> Result<Planned, PlanError> {
        plan_record(
            Some(record["key"].to_string().as_bytes()),
            Some(record["value"].to_string().as_bytes()),
            &Encoding::default(),
            registry,
        )
    }

    fn tier(since: i64) -> Registry {
        Registry::default().with(
            &tables::USERS,
            crate::columns::Added {
                name: Arc::from("tier"),
                ty: ColumnType::Text,
                since,
            },
        )
    }

    #[test]
    fn a_column_added_in_postgresql_is_written_with_its_declared_type() {
        let mut record = fixture("orders_u");
        declare(
            &mut record,
            serde_json::json!({"type": "string", "optional": true, "field": "gift_note"}),
            Value::from("with love"),
        );
        declare(
            &mut record,
            serde_json::json!({"type": "bytes", "optional": true, "field": "discount",
                "name": "org.apache.kafka.connect.data.Decimal",
                "parameters": {"scale": "2", "connect.decimal.precision": "5"}}),
            Value::from("AfQ="), // 5.00
        );
        let Ok(Planned::Writes(plan)) = plan_with(&record, &Registry::default()) else {
            panic!("no plan");
        };
        for write in &plan.writes {
            let Write::Upsert { extra, .. } = write else {
                continue;
            };
            let added: Vec<(&str, ColumnType)> = extra.iter().map(|e| (&*e.name, e.ty)).collect();
            assert_eq!(
                added,
                [
                    ("discount", ColumnType::Numeric { scale: 2 }),
                    ("gift_note", ColumnType::Text)
                ],
                "{}",
                write.table().name
            );
            assert_eq!(
                write.cell("gift_note"),
                Some(&Field::Value(CqlValue::Text("with love".into())))
            );
            assert_eq!(
                write.cell("discount"),
                Some(&Field::Value(CqlValue::Decimal(decimal(
                    &rust_decimal::Decimal::from_str("5.00").expect("decimal")
                ))))
            );
        }
        assert_eq!(
            names(&plan.writes),
            [("orders", true), ("orders_by_user", true)]
        );
        // A type the mirror cannot hold stops the table rather than being dropped silently.
        declare(
            &mut record,
            serde_json::json!({"type": "float64", "optional": true, "field": "score"}),
            Value::from(1.5),
        );
        assert!(matches!(
            plan_with(&record, &Registry::default()),
            Err(PlanError::Drift(Drift::Unmirrorable { .. }))
        ));
    }

    #[test]
    fn an_added_column_unchanged_in_toast_moves_with_its_order_to_the_new_user() {
        let mut record = fixture("orders_u");
        let note = serde_json::json!({"type": "string", "optional": true, "field": "gift_note"});
        declare(
            &mut record,
            note.clone(),
            Value::from(debezium::UNAVAILABLE),
        );
        image_fields(&mut record, "before").push(note);
        payload(&mut record)["before"]["gift_note"] = Value::from("with love");
        // The user stays: the unchanged value is left unset everywhere.
        let Ok(Planned::Writes(plan)) = plan_with(&record, &Registry::default()) else {
            panic!("no plan");
        };
        for write in &plan.writes {
            assert_eq!(write.cell("gift_note"), Some(&Field::Unavailable));
        }
        // The order moves: the new orders_by_user row is written whole, the added column from
        // the before image.
        payload(&mut record)["after"]["user_id"] =
            Value::from("0b7a4b2e-3a40-4d8e-9a53-8d0b6b1a7f11");
        let Ok(Planned::Writes(plan)) = plan_with(&record, &Registry::default()) else {
            panic!("no plan");
        };
        assert_eq!(
            names(&plan.writes),
            [
                ("orders_by_user", false),
                ("orders", true),
                ("orders_by_user", true)
            ]
        );
        assert_eq!(
            plan.writes[2].cell("gift_note"),
            Some(&Field::Value(CqlValue::Text("with love".into())))
        );
    }

    #[test]
    fn a_mirrored_column_missing_above_its_position_is_gone_and_below_it_older() {
        let record = fixture("users_u");
        let lsn = record["value"]["payload"]["source"]["lsn"]
            .as_i64()
            .expect("lsn");
        // Logged before the column was first seen: an older change, its cells left alone.
        let Ok(Planned::Writes(plan)) = plan_with(&record, &tier(lsn)) else {
            panic!("no plan");
        };
        assert_eq!(plan.writes[0].cell("tier"), None);
        // Logged after it: the column is gone.
        match plan_with(&record, &tier(lsn - 1)) {
            Err(PlanError::Drift(drift @ Drift::Gone { .. })) => {
                assert_eq!(drift.place(), ("public", "users", "tier"));
                let mut pg = std::collections::BTreeMap::new();
                assert!(drift.confirmed_by(&pg), "dropped in PostgreSQL");
                pg.insert("tier".to_owned(), Ok(ColumnType::Text));
                assert!(!drift.confirmed_by(&pg), "still there: the record is wrong");
                assert_eq!(PlanError::Drift(drift).reason(), "schema_mismatch");
            }
            other => panic!("expected the column gone, got {other:?}"),
        }
        // Carried with another type than mirrored.
        let mut retyped = fixture("users_u");
        declare(
            &mut retyped,
            serde_json::json!({"type": "int64", "optional": true, "field": "tier"}),
            Value::from(3),
        );
        assert!(matches!(
            plan_with(&retyped, &tier(lsn - 1)),
            Err(PlanError::Drift(Drift::Retyped { .. }))
        ));
    }

    #[test]
    fn a_described_column_dropped_or_retyped_is_drift_but_a_missing_value_is_the_records() {
        let mut dropped = fixture("users_u");
        undeclare(&mut dropped, "email");
        assert!(matches!(
            plan_with(&dropped, &Registry::default()),
            Err(PlanError::Drift(Drift::Gone { ref column, .. })) if column == "email"
        ));
        let mut retyped = fixture("users_u");
        for field in after_fields(&mut retyped) {
            if field["field"] == "version" {
                field["type"] = Value::from("string");
            }
        }
        match plan_with(&retyped, &Registry::default()) {
            Err(PlanError::Drift(drift @ Drift::Retyped { .. })) => {
                let pg = std::collections::BTreeMap::from([(
                    "version".to_owned(),
                    Ok(ColumnType::Text),
                )]);
                assert!(drift.confirmed_by(&pg));
            }
            other => panic!("expected a type change, got {other:?}"),
        }
        // The schema declares the column but the value is absent: the record's own defect.
        let mut missing = fixture("users_u");
        payload(&mut missing)["after"]
            .as_object_mut()
            .expect("after")
            .remove("email");
        assert_eq!(
            plan_with(&missing, &Registry::default()).map(|_| ()),
            Err(PlanError::Envelope(EnvelopeError::MissingColumn {
                column: "email".into()
            }))
        );
    }
}
