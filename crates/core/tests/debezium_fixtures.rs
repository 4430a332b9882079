//! The Debezium envelope parser on records captured from the running connector (pgoutput,
//! JSON converter with schemas, `decimal.handling.mode=precise`), kept in `tests/fixtures/debezium`.

use std::path::Path;

use cdc_core::debezium::{parse, Cell, ColumnType, DecimalMode, Field, Op, Record};
use chrono::{DateTime, NaiveDate};
use rust_decimal::Decimal;
use uuid::Uuid;

/// (key bytes, value bytes or None for a tombstone) of a fixture file.
fn fixture(name: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/debezium")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let document: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let key = serde_json::to_vec(&document["key"]).unwrap_or_default();
    let value = (!document["value"].is_null())
        .then(|| serde_json::to_vec(&document["value"]).unwrap_or_default());
    (key, value)
}

fn change(name: &str) -> cdc_core::debezium::Change {
    let (key, value) = fixture(name);
    match parse(Some(&key), value.as_deref()) {
        Ok(Record::Change(change)) => *change,
        other => panic!("{name}: expected a change event, got {other:?}"),
    }
}

const AMOUNT: ColumnType = ColumnType::Numeric {
    scale: 2,
    mode: DecimalMode::Precise,
};

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
        after.get("version", ColumnType::Int),
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
        before.get("version", ColumnType::Int),
        Ok(Field::Value(Cell::Int(1)))
    );
    assert_eq!(
        after.get("version", ColumnType::Int),
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
        row.get("version", ColumnType::Int),
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
    for name in ["orders_c.json", "users_u.json", "users_d.json"] {
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
            ("version", ColumnType::Int),
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
