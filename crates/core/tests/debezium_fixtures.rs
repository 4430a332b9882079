//! The Debezium envelope parser on records captured from the running connector (pgoutput,
//! JSON converter with schemas, `decimal.handling.mode=precise`), kept in `tests/fixtures/debezium`.
//!
//! Each fixture file is one Kafka record, `{"key": …, "value": …}` (a null key or value is a record
//! without one), or an array of records in the order they were read from one partition.
//!
//! The snapshot (`*_r.json`), truncate (`*_t.json`) and same-transaction (`orders_tx_same_row.json`)
//! fixtures come from a second connector with the same settings as `debezium-config.sh`
//! (`snapshot.mode=initial`, `skipped.operations=none`) on scratch copies of `users` and `orders`
//! (same column types, `REPLICA IDENTITY FULL`) in their own schema, publication and slot, so that a
//! snapshot and a truncate could be recorded without touching the live tables. Their topic prefix and
//! schema name were then rewritten to `cdc` and `public` (in `source.name`, `source.schema` and the
//! Connect schema names); nothing else was changed. The sequence they were captured from:
//!
//! 1. the connector's initial snapshot of two users and two orders (`op: r`);
//! 2. `BEGIN; UPDATE orders … version = 2 …; UPDATE orders … version = 3 …; COMMIT` on one row
//!    (transaction 5995; `pg_current_wal_lsn()` was 735489200 before it, 735490536 after);
//! 3. `TRUNCATE orders, users` in one statement (transaction 5999).

use std::path::Path;

use cdc_core::debezium::{parse, Cell, Change, ColumnType, Field, Op, Record};
use chrono::{DateTime, NaiveDate};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

/// A fixture file as JSON.
fn document(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/debezium")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (key bytes or None, value bytes or None) of one `{"key": …, "value": …}` record.
fn record_bytes(record: &Value) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let bytes = |v: &Value| (!v.is_null()).then(|| serde_json::to_vec(v).unwrap_or_default());
    (bytes(&record["key"]), bytes(&record["value"]))
}

/// (key bytes, value bytes or None for a tombstone) of a fixture file holding a keyed record.
fn fixture(name: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let (key, value) = record_bytes(&document(name));
    (
        key.unwrap_or_else(|| panic!("{name}: record without a key")),
        value,
    )
}

fn as_change(name: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Change {
    match parse(key, value) {
        Ok(Record::Change(change)) => *change,
        other => panic!("{name}: expected a change event, got {other:?}"),
    }
}

fn change(name: &str) -> Change {
    let (key, value) = record_bytes(&document(name));
    as_change(name, key.as_deref(), value.as_deref())
}

/// The change events of a fixture file holding an array of records, in order.
fn changes(name: &str) -> Vec<Change> {
    let document = document(name);
    let records = document
        .as_array()
        .unwrap_or_else(|| panic!("{name}: expected an array of records"));
    records
        .iter()
        .map(|record| {
            let (key, value) = record_bytes(record);
            as_change(name, key.as_deref(), value.as_deref())
        })
        .collect()
}

const AMOUNT: ColumnType = ColumnType::Numeric { scale: 2 };

#[test]
fn order_insert_decodes_every_column_type() {
    let event = change("orders_c.json");
    assert_eq!(event.op, Op::Create);
    assert!(event.before.is_none());
    assert_eq!(event.source.table, "orders");
    assert_eq!(event.source.db, "cdc_db");
    assert_eq!(event.source.lsn, Some(27_433_480));
    assert_eq!(event.source.tx_id, Some(1105));
    assert!(!event.source.is_snapshot());
    assert_eq!(event.source.commit_micros(), 1_795_562_214_538_720);
    let after = event
        .after
        .as_ref()
        .unwrap_or_else(|| panic!("no after image"));
    let id = Uuid::parse_str("0386895e-d261-4864-9ec2-e9046613b84a").unwrap_or_default();
    assert_eq!(
        after.get("id", ColumnType::Uuid),
        Ok(Field::Value(Cell::Uuid(id)))
    );
    assert_eq!(
        after.get("product", ColumnType::Text),
        Ok(Field::Value(Cell::Text("Backpack".into())))
    );
    assert_eq!(
        after.get("quantity", ColumnType::Int),
        Ok(Field::Value(Cell::Int(3)))
    );
    // "TB0=" = 0x4C1D = 19485 unscaled, scale 2 from the schema
    assert_eq!(
        after.get("amount", AMOUNT),
        Ok(Field::Value(Cell::Decimal(Decimal::new(19485, 2))))
    );
    // 20758 days after 1970-01-01, the day the order was created
    assert_eq!(
        after.get("order_date", ColumnType::Date),
        Ok(Field::Value(Cell::Date(
            NaiveDate::from_ymd_opt(2026, 11, 1).unwrap_or_default()
        )))
    );
    assert_eq!(
        after.get("created_at", ColumnType::TimestampTz),
        Ok(Field::Value(Cell::Timestamp(
            DateTime::parse_from_rfc3339("2026-11-01T08:00:31.619Z")
                .unwrap_or_default()
                .to_utc()
        )))
    );
    assert_eq!(
        after.get("deleted_at", ColumnType::TimestampTz),
        Ok(Field::Null)
    );
    assert_eq!(
        after.get("version", ColumnType::BigInt),
        Ok(Field::Value(Cell::Int(3)))
    );
}

#[test]
fn user_update_carries_the_full_before_image() {
    let event = change("users_u.json");
    assert_eq!(event.op, Op::Update);
    let before = event
        .before
        .as_ref()
        .unwrap_or_else(|| panic!("no before image"));
    let after = event
        .after
        .as_ref()
        .unwrap_or_else(|| panic!("no after image"));
    assert_eq!(
        before.get("name", ColumnType::Text),
        Ok(Field::Value(Cell::Text("Grady Murazik".into())))
    );
    assert_eq!(
        after.get("name", ColumnType::Text),
        Ok(Field::Value(Cell::Text("Grady Bechtelar".into())))
    );
    assert_eq!(
        before.get("version", ColumnType::BigInt),
        Ok(Field::Value(Cell::Int(1)))
    );
    assert_eq!(
        after.get("version", ColumnType::BigInt),
        Ok(Field::Value(Cell::Int(2)))
    );
}

#[test]
fn soft_deletes_are_updates_with_deleted_at() {
    for name in ["users_u_softdelete.json", "orders_u_softdelete.json"] {
        let event = change(name);
        assert_eq!(event.op, Op::Update, "{name}");
        let after = event
            .after
            .as_ref()
            .unwrap_or_else(|| panic!("no after image"));
        assert!(
            matches!(
                after.get("deleted_at", ColumnType::TimestampTz),
                Ok(Field::Value(Cell::Timestamp(_)))
            ),
            "{name}"
        );
    }
}

#[test]
fn delete_then_tombstone() {
    let event = change("users_d.json");
    assert_eq!(event.op, Op::Delete);
    assert!(event.after.is_none());
    let row = event
        .row()
        .unwrap_or_else(|| panic!("a delete's row is its before image"));
    assert_eq!(
        row.get("version", ColumnType::BigInt),
        Ok(Field::Value(Cell::Int(2)))
    );

    let (key, value) = fixture("users_tombstone.json");
    assert!(value.is_none());
    match parse(Some(&key), None) {
        Ok(Record::Tombstone { key }) => {
            let id = Uuid::parse_str("f9cbcb87-65c3-4941-85d8-17dd0c0d1460").unwrap_or_default();
            assert_eq!(
                key.get("id", ColumnType::Uuid),
                Ok(Field::Value(Cell::Uuid(id)))
            );
        }
        other => panic!("expected a tombstone, got {other:?}"),
    }
}

#[test]
fn the_same_records_without_embedded_schemas_decode_the_same() {
    // value.converter.schemas.enable=false sends the payload alone; the column types then decide.
    for name in [
        "orders_c.json",
        "users_u.json",
        "users_d.json",
        "users_r.json",
        "orders_r.json",
    ] {
        let (key, value) = fixture(name);
        let strip = |bytes: &[u8]| {
            let document: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
            serde_json::to_vec(&document["payload"]).unwrap_or_default()
        };
        let with_schema = parse(Some(&key), value.as_deref());
        let without = parse(Some(&strip(&key)), value.as_deref().map(strip).as_deref());
        let (Ok(Record::Change(a)), Ok(Record::Change(b))) = (with_schema, without) else {
            panic!("{name}: both must parse");
        };
        assert_eq!(a.op, b.op);
        assert_eq!(a.source, b.source);
        let (ra, rb) = (
            a.row().unwrap_or_else(|| panic!("row")),
            b.row().unwrap_or_else(|| panic!("row")),
        );
        for (column, ty) in [
            ("id", ColumnType::Uuid),
            ("created_at", ColumnType::TimestampTz),
            ("deleted_at", ColumnType::TimestampTz),
            ("version", ColumnType::BigInt),
        ] {
            assert_eq!(ra.get(column, ty), rb.get(column, ty), "{name}.{column}");
        }
        if ra.has("amount") {
            assert_eq!(ra.get("amount", AMOUNT), rb.get("amount", AMOUNT));
            assert_eq!(
                ra.get("order_date", ColumnType::Date),
                rb.get("order_date", ColumnType::Date)
            );
        }
    }
}

#[test]
fn a_schema_of_unexpected_shape_is_read_as_a_json_tree_with_the_same_result() {
    // Envelopes with a well-formed embedded schema are read in one typed pass; any other shape
    // goes through a plain JSON tree. A stray entry in the schema's field list forces the second
    // path: every captured record must decode identically both ways.
    let mut checked = 0;
    for name in [
        "orders_c.json",
        "orders_u.json",
        "orders_r.json",
        "orders_u_softdelete.json",
        "users_c.json",
        "users_u.json",
        "users_d.json",
        "users_r.json",
        "users_u_softdelete.json",
        "orders_t.json",
        "users_t.json",
    ] {
        let (key, value) = record_bytes(&document(name));
        let value = value.unwrap_or_else(|| panic!("{name}: no value"));
        let mut odd: Value = serde_json::from_slice(&value).unwrap_or_default();
        let Some(fields) = odd["schema"]["fields"].as_array_mut() else {
            panic!("{name}: no embedded schema");
        };
        fields.push(Value::from(0));
        let odd = serde_json::to_vec(&odd).unwrap_or_default();
        let typed = parse(key.as_deref(), Some(&value));
        assert!(typed.is_ok(), "{name}: {typed:?}");
        assert_eq!(typed, parse(key.as_deref(), Some(&odd)), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 11);
}

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn timestamp(text: &str) -> Field<Cell> {
    Field::Value(Cell::Timestamp(
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .to_utc(),
    ))
}

/// The position and time every record of the initial snapshot carries.
const SNAPSHOT_LSN: i64 = 735_437_240;
const SNAPSHOT_TX: i64 = 5987;
const SNAPSHOT_MICROS: i64 = 1_795_567_763_709_935;

#[test]
fn snapshot_reads_carry_the_after_image_and_the_snapshot_position() {
    let user = change("users_r.json");
    assert_eq!(user.op, Op::Read);
    assert!(user.before.is_none());
    assert!(user.source.is_snapshot());
    assert_eq!(user.source.snapshot.as_deref(), Some("first"));
    assert_eq!(user.source.table, "users");
    assert_eq!(user.source.schema, "public");
    assert_eq!(user.source.db, "cdc_db");
    let after = user
        .row()
        .unwrap_or_else(|| panic!("a read's row is its after image"));
    assert_eq!(
        after.get("id", ColumnType::Uuid),
        Ok(Field::Value(Cell::Uuid(uuid(
            "7c9e6679-7425-40de-944b-e07fc1f90ae7"
        ))))
    );
    assert_eq!(
        after.get("name", ColumnType::Text),
        Ok(Field::Value(Cell::Text("Ada Lovelace".into())))
    );
    assert_eq!(
        after.get("created_at", ColumnType::TimestampTz),
        Ok(timestamp("2026-11-24T10:00:00.000001Z"))
    );
    assert_eq!(
        after.get("deleted_at", ColumnType::TimestampTz),
        Ok(Field::Null)
    );
    assert_eq!(
        after.get("version", ColumnType::BigInt),
        Ok(Field::Value(Cell::Int(2)))
    );

    let order = change("orders_r.json");
    assert_eq!(order.op, Op::Read);
    assert!(order.before.is_none());
    assert!(order.source.is_snapshot());
    // Debezium marks the first and last record of each table and of the whole snapshot; every
    // marker other than "false" is a snapshot.
    assert_eq!(
        order.source.snapshot.as_deref(),
        Some("first_in_data_collection")
    );
    let after = order
        .after
        .as_ref()
        .unwrap_or_else(|| panic!("no after image"));
    // "F2Y=" = 0x1766 = 5990 unscaled, scale 2
    assert_eq!(
        after.get("amount", AMOUNT),
        Ok(Field::Value(Cell::Decimal(Decimal::new(5990, 2))))
    );
    assert_eq!(
        after.get("order_date", ColumnType::Date),
        Ok(Field::Value(Cell::Date(
            NaiveDate::from_ymd_opt(2026, 11, 24).unwrap_or_default()
        )))
    );
    assert_eq!(
        after.get("status", ColumnType::Text),
        Ok(Field::Value(Cell::Text("PLACED".into())))
    );

    // Every record of one snapshot has the same source position: the LSN is the WAL position
    // read when the snapshot began (not where the row was written), the transaction is the
    // snapshot's own, and ts_ms/ts_us are the snapshot's start, not a commit time.
    for event in [&user, &order] {
        assert_eq!(event.source.lsn, Some(SNAPSHOT_LSN));
        assert_eq!(event.source.tx_id, Some(SNAPSHOT_TX));
        assert_eq!(event.source.ts_us, Some(SNAPSHOT_MICROS));
        assert_eq!(event.source.commit_micros(), SNAPSHOT_MICROS);
    }
}

#[test]
fn truncate_has_neither_key_nor_images() {
    let mut lsns = Vec::new();
    for (name, table) in [("users_t.json", "users"), ("orders_t.json", "orders")] {
        let (key, value) = record_bytes(&document(name));
        assert!(key.is_none(), "{name}: a truncate record has no key");
        assert!(value.is_some(), "{name}: a truncate is not a tombstone");
        let event = as_change(name, None, value.as_deref());
        assert_eq!(event.op, Op::Truncate, "{name}");
        assert!(event.before.is_none(), "{name}");
        assert!(event.after.is_none(), "{name}");
        assert!(event.row().is_none(), "{name}");
        assert!(!event.source.is_snapshot(), "{name}");
        assert_eq!(event.source.table, table);
        assert_eq!(event.source.tx_id, Some(5999), "{name}");
        assert_eq!(
            event.source.commit_micros(),
            1_795_567_852_208_489,
            "{name}"
        );
        lsns.push(event.source.lsn);
    }
    // One `TRUNCATE orders, users` is one WAL record: both tables' events carry its LSN.
    assert_eq!(lsns, [Some(735_537_648), Some(735_537_648)]);
}

#[test]
fn two_updates_of_one_row_in_one_transaction_have_increasing_lsns() {
    let events = changes("orders_tx_same_row.json");
    let [first, second] = events.as_slice() else {
        panic!("expected two records, got {}", events.len());
    };
    let id = Field::Value(Cell::Uuid(uuid("9b2e1c3d-4f5a-4b6c-8d7e-0f1a2b3c4d5e")));
    for event in [first, second] {
        assert_eq!(event.op, Op::Update);
        assert!(!event.source.is_snapshot());
        let row = event.row().unwrap_or_else(|| panic!("no after image"));
        assert_eq!(row.get("id", ColumnType::Uuid), Ok(id.clone()));
    }
    let version = |change: &Change| {
        change
            .row()
            .and_then(|row| row.get("version", ColumnType::BigInt).ok())
    };
    assert_eq!(version(first), Some(Field::Value(Cell::Int(2))));
    assert_eq!(version(second), Some(Field::Value(Cell::Int(3))));
    assert_eq!(
        first.after, second.before,
        "the second update starts from the first one's image"
    );

    // Same transaction, same commit time: neither txId nor ts_ms/ts_us can order the two.
    assert_eq!(first.source.tx_id, Some(5995));
    assert_eq!(second.source.tx_id, first.source.tx_id);
    assert_eq!(first.source.ts_us, Some(1_795_567_826_689_330));
    assert_eq!(second.source.ts_us, first.source.ts_us);
    // The LSN is each change's own WAL position, so it differs and increases.
    assert_eq!(first.source.lsn, Some(735_489_200));
    assert_eq!(second.source.lsn, Some(735_489_912));
    assert!(first.source.lsn < second.source.lsn);

    // And the row's history is ordered by LSN from the snapshot through the truncate.
    let snapshot = change("orders_r.json").source.lsn;
    let truncate = change("orders_t.json").source.lsn;
    assert!(snapshot < first.source.lsn && second.source.lsn < truncate);
}
