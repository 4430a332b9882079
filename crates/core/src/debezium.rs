//! Debezium change events (PostgreSQL connector, JSON converter) as typed values.
//!
//! A record on `cdc.public.<table>` is either a change event — operation `c` (insert), `u` (update),
//! `d` (delete), `r` (snapshot read) or `t` (truncate) with before/after images and a `source` block —
//! or a tombstone (null value) that follows a delete for log compaction.
//!
//! The JSON converter may embed the Connect schema (`{"schema": …, "payload": …}`) or not. With a
//! schema, each field's logical type decides how its value is encoded; without one, the caller's
//! [`ColumnType`] (what the PostgreSQL column is) decides, using Debezium's default encodings:
//!
//! | PostgreSQL | Debezium encoding |
//! |---|---|
//! | UUID | string (`io.debezium.data.Uuid`) |
//! | DATE | int32 days since 1970-01-01 (`io.debezium.time.Date`) |
//! | TIMESTAMPTZ | ISO-8601 string (`io.debezium.time.ZonedTimestamp`) |
//! | TIMESTAMP | int64 µs (`MicroTimestamp`), ms (`Timestamp`) or ns (`NanoTimestamp`) since the epoch |
//! | NUMERIC | `decimal.handling.mode`: precise = base64 big-endian two's-complement unscaled bytes with the scale in the schema; string; double |
//! | BOOLEAN, INTEGER, BIGINT, TEXT | JSON boolean, number, string |
//!
//! An unchanged TOASTed column arrives as `__debezium_unavailable_value`: [`Field::Unavailable`]
//! means "leave this column as it is", never a value to write.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

pub use crate::tables::ColumnType;

/// Debezium's default `unavailable.value.placeholder`: what it writes for an unchanged TOASTed
/// column. A real value can equal it, so deployments set a placeholder of their own
/// ([`Encoding::unavailable`]); the local stack does.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// A row read by the initial (or an incremental) snapshot.
    Read,
    Truncate,
}

impl Op {
    fn parse(code: &str) -> Result<Self, EnvelopeError> {
        match code {
            "c" => Ok(Self::Create),
            "u" => Ok(Self::Update),
            "d" => Ok(Self::Delete),
            "r" => Ok(Self::Read),
            "t" => Ok(Self::Truncate),
            other => Err(EnvelopeError::UnknownOp(other.to_owned())),
        }
    }
}

/// Where a change comes from in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub db: String,
    pub schema: String,
    pub table: String,
    /// WAL position of the change (absent for some snapshot events).
    pub lsn: Option<i64>,
    pub tx_id: Option<i64>,
    /// Commit time in the source, milliseconds (and microseconds when Debezium sends them).
    pub ts_ms: i64,
    pub ts_us: Option<i64>,
    /// `true`, `first`, `last`, `incremental`, … while snapshotting; `false` when streaming.
    pub snapshot: Option<String>,
    /// The highest position in `source.sequence` (a JSON array, as a string, of the last commit
    /// LSN and the LSN, each a string or null). An incremental snapshot's reads have no `lsn`;
    /// their `sequence` is the stream's position when the chunk was sent: where its window ended.
    pub sequence: Option<i64>,
}

impl Source {
    pub fn is_snapshot(&self) -> bool {
        self.snapshot.as_deref().is_some_and(|s| s != "false")
    }

    /// Commit time in microseconds since the epoch.
    pub fn commit_micros(&self) -> i64 {
        self.ts_us.unwrap_or(self.ts_ms.saturating_mul(1000))
    }
}

/// One before or after image: column name → JSON value, with what the column's Connect schema
/// says if the converter embedded one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Image {
    values: serde_json::Map<String, Value>,
    schemas: Columns,
}

/// Column schemas of one image by column name, shared by every record that embeds the same
/// Connect schema.
type Columns = Arc<BTreeMap<String, ColumnSchema>>;

/// The before and after images' column schemas of one embedded Connect schema.
#[derive(Debug, Clone)]
struct EnvelopeColumns {
    before: Columns,
    after: Columns,
}

/// The parts of a column's Connect schema that decide its decoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ColumnSchema {
    /// Connect type (`string`, `int32`, `bytes`, …).
    kind: Option<String>,
    /// Logical type (`io.debezium.time.Date`, `org.apache.kafka.connect.data.Decimal`, …).
    name: Option<String>,
    /// `parameters.scale` of a decimal, as sent.
    scale: Option<String>,
}

/// A Connect schema as the JSON converter embeds it, read without building a JSON tree: only the
/// field names, logical names, decimal scales and nested fields are kept.
#[derive(Debug, Deserialize)]
struct SchemaNode<'a> {
    #[serde(borrow, default)]
    field: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<Parameters<'a>>,
    #[serde(borrow, default)]
    fields: Vec<SchemaNode<'a>>,
}

#[derive(Debug, Deserialize)]
struct Parameters<'a> {
    #[serde(borrow, default)]
    scale: Option<Cow<'a, str>>,
}

/// A record value with an embedded schema, the common case, read in one pass with the schema's
/// text left unparsed (see [`envelope_columns`]). Anything else (no schema, or a schema of
/// unexpected shape) is read as a plain JSON tree instead.
#[derive(Debug, Deserialize)]
struct Document<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<Payload<'a>>,
}

/// A change event's payload read into its parts: the images as JSON trees, the source block's
/// fields typed. A payload whose fields have other types than these fails to read, and the record
/// is then read as a plain JSON tree, which gives the same result (or names what is wrong); the
/// envelope's and source block's other fields are skipped without building them.
#[derive(Debug, Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(default)]
    before: Option<Value>,
    #[serde(default)]
    after: Option<Value>,
    #[serde(borrow, default)]
    source: Option<SourceFields<'a>>,
}

/// The fields of a source block that [`Source`] keeps.
#[derive(Debug, Deserialize)]
struct SourceFields<'a> {
    #[serde(borrow, default)]
    db: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(default)]
    lsn: Option<i64>,
    #[serde(default, rename = "txId")]
    tx_id: Option<i64>,
    #[serde(default)]
    ts_ms: Option<i64>,
    #[serde(default)]
    ts_us: Option<i64>,
    #[serde(borrow, default)]
    snapshot: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sequence: Option<Cow<'a, str>>,
}

/// How many distinct embedded schemas each thread remembers: one per table the thread decodes,
/// and a table's old and new schema while it changes.
const SCHEMA_MEMO_ENTRIES: usize = 8;

thread_local! {
    /// Embedded schema texts seen last on this thread, most recent first, with their column
    /// schemas. Every record of a table embeds the same schema text until the table changes, and
    /// parsing it was most of the work of decoding a record; a text is compared whole, so a hit
    /// gives exactly what parsing it would.
    static SCHEMA_MEMO: RefCell<VecDeque<(Box<str>, EnvelopeColumns)>> =
        const { RefCell::new(VecDeque::new()) };
}

/// The images' column schemas of an embedded Connect schema, parsed once per distinct text on
/// this thread; `None` if it is not a struct schema of the expected shape.
fn envelope_columns(schema: &RawValue) -> Option<EnvelopeColumns> {
    let text = schema.get();
    let remembered = SCHEMA_MEMO.with_borrow(|memo| {
        memo.iter()
            .find(|(seen, _)| **seen == *text)
            .map(|(_, columns)| columns.clone())
    });
    if remembered.is_some() {
        return remembered;
    }
    let node: SchemaNode<'_> = serde_json::from_str(text).ok()?;
    let columns = |image: &str| {
        Arc::new(
            node.child(image)
                .map(SchemaNode::columns)
                .unwrap_or_default(),
        )
    };
    let parsed = EnvelopeColumns {
        before: columns("before"),
        after: columns("after"),
    };
    SCHEMA_MEMO.with_borrow_mut(|memo| {
        memo.truncate(SCHEMA_MEMO_ENTRIES - 1);
        memo.push_front((text.into(), parsed.clone()));
    });
    Some(parsed)
}

/// How the JSON converter writes a record value with an embedded schema: `{"schema":S,"payload":P}`,
/// compact, schema first.
const SCHEMA_OPEN: &[u8] = br#"{"schema":"#;
const PAYLOAD_KEY: &[u8] = br#","payload":"#;

/// For a value that is byte for byte `{"schema":S,"payload":P}` with `S` a schema text this thread
/// remembers: its column schemas and the bytes of `P`, without reading `S` again (scanning it only
/// to find where it ends was half the time of decoding an envelope). A prefix of the value equal to
/// a complete JSON value ends exactly where that value does, so this finds what [`Document`] would;
/// `P` must then be one JSON value and nothing more, or the caller reads the value the other way.
fn remembered_schema(value: &[u8]) -> Option<(EnvelopeColumns, &[u8])> {
    let rest = value.strip_prefix(SCHEMA_OPEN)?;
    SCHEMA_MEMO.with_borrow(|memo| {
        memo.iter().find_map(|(seen, columns)| {
            let payload = rest
                .strip_prefix(seen.as_bytes())?
                .strip_prefix(PAYLOAD_KEY)?
                .strip_suffix(b"}")?;
            Some((columns.clone(), payload))
        })
    })
}

impl SchemaNode<'_> {
    /// The struct field called `name` (`before`, `after`, …).
    fn child(&self, name: &str) -> Option<&Self> {
        self.fields
            .iter()
            .find(|f| f.field.as_deref() == Some(name))
    }

    /// Column schemas of a struct schema, by column name.
    fn columns(&self) -> BTreeMap<String, ColumnSchema> {
        self.fields
            .iter()
            .filter_map(|f| {
                let column = ColumnSchema {
                    kind: f.kind.as_deref().map(str::to_owned),
                    name: f.name.as_deref().map(str::to_owned),
                    scale: f
                        .parameters
                        .as_ref()
                        .and_then(|p| p.scale.as_deref())
                        .map(str::to_owned),
                };
                Some((f.field.as_deref()?.to_owned(), column))
            })
            .collect()
    }
}

/// A decoded column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<T> {
    Null,
    Value(T),
    /// Unchanged TOAST column: keep what the sink has.
    Unavailable,
}

impl<T> Field<T> {
    pub fn value(self) -> Option<T> {
        match self {
            Self::Value(v) => Some(v),
            Self::Null | Self::Unavailable => None,
        }
    }
}

/// How the connector encodes what a record does not say itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// `decimal.handling.mode`, for records without an embedded schema.
    pub decimals: DecimalMode,
    /// `unavailable.value.placeholder`: an unchanged TOASTed column's value. It is honoured only in
    /// columns whose type PostgreSQL can TOAST (text here); in any other column it is just a
    /// (wrong) value.
    pub unavailable: String,
}

impl Default for Encoding {
    fn default() -> Self {
        Self {
            decimals: DecimalMode::Precise,
            unavailable: UNAVAILABLE.to_owned(),
        }
    }
}

/// The connector's `decimal.handling.mode`, needed only for schema-less records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecimalMode {
    #[default]
    Precise,
    String,
    Double,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a Debezium envelope: {0}")]
    NotAnEnvelope(String),
    #[error("unknown operation `{0}`")]
    UnknownOp(String),
    #[error("operation {op:?} without its {image} image")]
    MissingImage { op: Op, image: &'static str },
    #[error("column `{column}` missing")]
    MissingColumn { column: String },
    #[error("column `{column}`: {problem}")]
    BadValue { column: String, problem: String },
}

impl EnvelopeError {
    /// Short machine-readable reason for the dead-letter topic.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "undecodable",
            Self::NotAnEnvelope(_) => "not_an_envelope",
            Self::UnknownOp(_) => "unknown_op",
            Self::MissingImage { .. } => "missing_image",
            Self::MissingColumn { .. } => "missing_column",
            Self::BadValue { .. } => "bad_value",
        }
    }
}

/// A change event.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub op: Op,
    pub before: Option<Image>,
    pub after: Option<Image>,
    pub source: Source,
}

impl Change {
    /// The image that describes the row now: `after`, or `before` for a delete.
    pub fn row(&self) -> Option<&Image> {
        match self.op {
            Op::Delete => self.before.as_ref(),
            _ => self.after.as_ref(),
        }
    }
}

/// What a record on a Debezium topic is.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Change(Box<Change>),
    /// Null value after a delete; `key` holds the primary key columns.
    Tombstone {
        key: Image,
    },
}

fn bad(column: &str, problem: impl Into<String>) -> EnvelopeError {
    EnvelopeError::BadValue {
        column: column.to_owned(),
        problem: problem.into(),
    }
}

/// What a column's Connect schema makes of it: a type the pipeline mirrors, or a description of
/// one it does not (`float64`, `string io.debezium.data.Json`, a numeric without a fixed scale).
pub type Declared = Result<ColumnType, String>;

/// The pipeline type of a column whose Connect type is `kind` and logical type `logical`, as the
/// PostgreSQL connector encodes it (`time.precision.mode` adaptive or connect,
/// `decimal.handling.mode` precise or string).
fn declared_type(kind: &str, logical: Option<&str>, scale: Option<&str>) -> Declared {
    Ok(match (kind, logical) {
        ("string", Some("io.debezium.data.Uuid")) => ColumnType::Uuid,
        ("string", Some("io.debezium.time.ZonedTimestamp")) => ColumnType::TimestampTz,
        ("int32", Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date")) => {
            ColumnType::Date
        }
        (
            "int64",
            Some(
                "io.debezium.time.Timestamp"
                | "io.debezium.time.MicroTimestamp"
                | "io.debezium.time.NanoTimestamp"
                | "org.apache.kafka.connect.data.Timestamp",
            ),
        ) => ColumnType::Timestamp,
        ("bytes", Some("org.apache.kafka.connect.data.Decimal")) => match scale
            .and_then(|s| s.parse().ok())
        {
            Some(scale) => ColumnType::Numeric { scale },
            None => {
                return Err("bytes org.apache.kafka.connect.data.Decimal without a scale".into())
            }
        },
        ("string", None) => ColumnType::Text,
        ("int64", None) => ColumnType::BigInt,
        ("int32" | "int16" | "int8", None) => ColumnType::Int,
        ("boolean", None) => ColumnType::Bool,
        (kind, Some(logical)) => return Err(format!("{kind} {logical}")),
        (kind, None) => return Err(kind.to_owned()),
    })
}

/// Splits `{"schema": …, "payload": …}` into its parts; a bare payload has no schema.
fn unwrap_schema(document: Value) -> (Value, Option<Value>) {
    match document {
        Value::Object(mut map) if map.contains_key("payload") && map.contains_key("schema") => {
            let payload = map.remove("payload").unwrap_or(Value::Null);
            let schema = map.remove("schema");
            (payload, schema)
        }
        other => (other, None),
    }
}

/// Column schemas of a struct schema given as a JSON tree, by column name; fields of unexpected
/// shape are skipped.
fn columns_of(struct_schema: Option<&Value>) -> BTreeMap<String, ColumnSchema> {
    struct_schema
        .and_then(|s| s.get("fields"))
        .and_then(Value::as_array)
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| {
                    let column = ColumnSchema {
                        kind: f.get("type").and_then(Value::as_str).map(str::to_owned),
                        name: f.get("name").and_then(Value::as_str).map(str::to_owned),
                        scale: f
                            .get("parameters")
                            .and_then(|p| p.get("scale"))
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    };
                    Some((f.get("field")?.as_str()?.to_owned(), column))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The struct field called `name` of a struct schema given as a JSON tree.
fn child_of<'v>(struct_schema: Option<&'v Value>, name: &str) -> Option<&'v Value> {
    struct_schema?
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("field").and_then(Value::as_str) == Some(name))
}

fn image(value: Option<Value>, schemas: Columns) -> Result<Option<Image>, EnvelopeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(values)) => Ok(Some(Image { values, schemas })),
        Some(_) => Err(EnvelopeError::NotAnEnvelope(
            "an image that is not an object".into(),
        )),
    }
}

fn source(value: &Value) -> Result<Source, EnvelopeError> {
    let object = value
        .as_object()
        .ok_or_else(|| EnvelopeError::NotAnEnvelope("no source block".into()))?;
    let text = |k: &str| object.get(k).and_then(Value::as_str).map(Cow::Borrowed);
    let int = |k: &str| object.get(k).and_then(Value::as_i64);
    typed_source(Some(SourceFields {
        db: text("db"),
        schema: text("schema"),
        table: text("table"),
        lsn: int("lsn"),
        tx_id: int("txId"),
        ts_ms: int("ts_ms"),
        ts_us: int("ts_us"),
        snapshot: text("snapshot"),
        sequence: text("sequence"),
    }))
}

fn typed_source(fields: Option<SourceFields<'_>>) -> Result<Source, EnvelopeError> {
    let fields = fields.ok_or_else(|| EnvelopeError::NotAnEnvelope("no source block".into()))?;
    let owned = |text: Option<Cow<'_, str>>| text.map(Cow::into_owned);
    Ok(Source {
        db: owned(fields.db).unwrap_or_default(),
        schema: owned(fields.schema).unwrap_or_default(),
        table: owned(fields.table).unwrap_or_default(),
        lsn: fields.lsn,
        tx_id: fields.tx_id,
        ts_ms: fields
            .ts_ms
            .ok_or_else(|| EnvelopeError::NotAnEnvelope("source without ts_ms".into()))?,
        ts_us: fields.ts_us,
        snapshot: owned(fields.snapshot),
        sequence: fields.sequence.as_deref().and_then(sequence_position),
    })
}

/// The highest LSN of a `source.sequence` such as `["316748056","316748112"]`.
fn sequence_position(text: &str) -> Option<i64> {
    let items: Vec<Option<String>> = serde_json::from_str(text).ok()?;
    items
        .into_iter()
        .flatten()
        .filter_map(|item| item.parse::<i64>().ok())
        .max()
}

/// Parses one record: `key` and `value` as they came from Kafka (`value` None for a tombstone).
pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Record, EnvelopeError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        let key =
            key.ok_or_else(|| EnvelopeError::NotAnEnvelope("tombstone without key".into()))?;
        let document: Value =
            serde_json::from_slice(key).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let (payload, schema) = unwrap_schema(document);
        let key = image(Some(payload), Arc::new(columns_of(schema.as_ref())))?
            .ok_or_else(|| EnvelopeError::NotAnEnvelope("null tombstone key".into()))?;
        return Ok(Record::Tombstone { key });
    };
    // A schema seen before, matched byte for byte, is not read again: only the payload is.
    let remembered = || {
        let (columns, payload) = remembered_schema(value)?;
        Some((
            columns,
            serde_json::from_slice::<Payload<'_>>(payload).ok()?,
        ))
    };
    // The common case in one pass; the JSON tree below also tells what is wrong with bad input.
    let one_pass = || match serde_json::from_slice::<Document<'_>>(value) {
        Ok(Document {
            schema: Some(schema),
            payload: Some(payload),
        }) => Some((envelope_columns(schema)?, payload)),
        _ => None,
    };
    if let Some((columns, payload)) = remembered().or_else(one_pass) {
        return assemble(
            payload.op.as_deref(),
            payload.before,
            payload.after,
            || typed_source(payload.source),
            columns,
        );
    }
    parse_tree(value)
}

/// Parses a record value as a plain JSON tree: what [`parse`] does with anything but the common
/// case, and with it gives the same result.
fn parse_tree(value: &[u8]) -> Result<Record, EnvelopeError> {
    let document: Value =
        serde_json::from_slice(value).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let (payload, schema) = unwrap_schema(document);
    let columns = |image: &str| Arc::new(columns_of(child_of(schema.as_ref(), image)));
    let (before, after) = (columns("before"), columns("after"));
    change(payload, before, after)
}

/// The change event in `payload`, its images' column schemas given.
fn change(
    payload: Value,
    before_columns: Columns,
    after_columns: Columns,
) -> Result<Record, EnvelopeError> {
    let Value::Object(mut envelope) = payload else {
        return Err(EnvelopeError::NotAnEnvelope(
            "payload is not an object".into(),
        ));
    };
    let before = envelope.remove("before");
    let after = envelope.remove("after");
    assemble(
        envelope.get("op").and_then(Value::as_str),
        before,
        after,
        || source(envelope.get("source").unwrap_or(&Value::Null)),
        EnvelopeColumns {
            before: before_columns,
            after: after_columns,
        },
    )
}

/// A change event from its parts, checked in this order: the op, the images, the source block,
/// the image the op needs.
fn assemble(
    op_code: Option<&str>,
    before: Option<Value>,
    after: Option<Value>,
    source: impl FnOnce() -> Result<Source, EnvelopeError>,
    columns: EnvelopeColumns,
) -> Result<Record, EnvelopeError> {
    let op_code = op_code.ok_or_else(|| EnvelopeError::NotAnEnvelope("no op".into()))?;
    let op = Op::parse(op_code)?;
    let before = image(before, columns.before)?;
    let after = image(after, columns.after)?;
    let source = source()?;
    match op {
        Op::Create | Op::Read | Op::Update if after.is_none() => {
            return Err(EnvelopeError::MissingImage { op, image: "after" })
        }
        Op::Delete if before.is_none() => {
            return Err(EnvelopeError::MissingImage {
                op,
                image: "before",
            })
        }
        _ => {}
    }
    Ok(Record::Change(Box::new(Change {
        op,
        before,
        after,
        source,
    })))
}

impl Image {
    pub fn has(&self, column: &str) -> bool {
        self.values.contains_key(column)
    }

    /// The raw JSON value of a column, or an error if the column is not in the image.
    fn raw(&self, column: &str) -> Result<&Value, EnvelopeError> {
        self.values
            .get(column)
            .ok_or_else(|| EnvelopeError::MissingColumn {
                column: column.to_owned(),
            })
    }

    /// Whether the record embedded this image's Connect schema: only then does it say which
    /// columns the table has.
    pub fn has_schema(&self) -> bool {
        !self.schemas.is_empty()
    }

    /// The columns the embedded schema declares (none without a schema), in name order.
    pub fn declared_columns(&self) -> impl Iterator<Item = &str> {
        self.schemas.keys().map(String::as_str)
    }

    /// The type the embedded schema gives `column`, as the pipeline mirrors it; `None` when the
    /// schema does not declare the column (or there is no schema).
    pub fn declared(&self, column: &str) -> Option<Declared> {
        let schema = self.schemas.get(column)?;
        Some(declared_type(
            schema.kind.as_deref().unwrap_or("?"),
            schema.name.as_deref(),
            schema.scale.as_deref(),
        ))
    }

    /// Logical type name from the embedded schema (`io.debezium.time.Date`, …), if any.
    fn logical(&self, column: &str) -> Option<&str> {
        self.schemas.get(column)?.name.as_deref()
    }

    fn decimal_scale(&self, column: &str) -> Option<u32> {
        self.schemas.get(column)?.scale.as_deref()?.parse().ok()
    }

    /// Decodes a column as the PostgreSQL type `ty` (a schema-less NUMERIC string as
    /// `decimal.handling.mode=precise` sends it; see [`Image::get_with`]).
    pub fn get(&self, column: &str, ty: ColumnType) -> Result<Field<Cell>, EnvelopeError> {
        self.get_with(column, ty, &Encoding::default())
    }

    /// Decodes a column as the PostgreSQL type `ty`, as the connector was configured to encode it
    /// (`encoding`): its `decimal.handling.mode` decides a NUMERIC value's encoding when the record
    /// has no embedded schema (a schema, when present, always decides), and its placeholder marks an
    /// unchanged TOASTed column.
    pub fn get_with(
        &self,
        column: &str,
        ty: ColumnType,
        encoding: &Encoding,
    ) -> Result<Field<Cell>, EnvelopeError> {
        let raw = self.raw(column)?;
        match raw {
            Value::Null => return Ok(Field::Null),
            Value::String(s) if ty.toastable() && *s == encoding.unavailable => {
                return Ok(Field::Unavailable)
            }
            _ => {}
        }
        let cell = match ty {
            ColumnType::Uuid => Cell::Uuid(
                raw.as_str()
                    .and_then(|s| Uuid::from_str(s).ok())
                    .ok_or_else(|| bad(column, "not a UUID"))?,
            ),
            ColumnType::Text => Cell::Text(
                raw.as_str()
                    .ok_or_else(|| bad(column, "not a string"))?
                    .to_owned(),
            ),
            ColumnType::Int | ColumnType::BigInt => {
                Cell::Int(raw.as_i64().ok_or_else(|| bad(column, "not an integer"))?)
            }
            ColumnType::Bool => {
                Cell::Bool(raw.as_bool().ok_or_else(|| bad(column, "not a boolean"))?)
            }
            ColumnType::Date => Cell::Date(self.date(column, raw)?),
            ColumnType::TimestampTz | ColumnType::Timestamp => {
                Cell::Timestamp(self.timestamp(column, raw)?)
            }
            ColumnType::Numeric { scale } => {
                Cell::Decimal(self.decimal(column, raw, scale, encoding.decimals)?)
            }
        };
        Ok(Field::Value(cell))
    }

    fn date(&self, column: &str, raw: &Value) -> Result<NaiveDate, EnvelopeError> {
        if let Some(days) = raw.as_i64() {
            return NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| epoch.checked_add_signed(TimeDelta::try_days(days)?))
                .ok_or_else(|| bad(column, format!("{days} days is out of range")));
        }
        raw.as_str()
            .and_then(|s| NaiveDate::from_str(s).ok())
            .ok_or_else(|| bad(column, "not a date"))
    }

    fn timestamp(&self, column: &str, raw: &Value) -> Result<DateTime<Utc>, EnvelopeError> {
        if let Some(text) = raw.as_str() {
            return zoned_timestamp(text).map_err(|problem| bad(column, problem));
        }
        let n = raw.as_i64().ok_or_else(|| bad(column, "not a timestamp"))?;
        let parsed = match self.logical(column) {
            Some("io.debezium.time.Timestamp")
            | Some("org.apache.kafka.connect.data.Timestamp") => DateTime::from_timestamp_millis(n),
            Some("io.debezium.time.NanoTimestamp") => Some(DateTime::from_timestamp_nanos(n)),
            // MicroTimestamp, and the default for TIMESTAMP(6) columns without a schema
            _ => DateTime::from_timestamp_micros(n),
        };
        parsed.ok_or_else(|| bad(column, format!("{n} is out of range")))
    }

    fn decimal(
        &self,
        column: &str,
        raw: &Value,
        scale: u32,
        mode: DecimalMode,
    ) -> Result<Decimal, EnvelopeError> {
        match raw {
            // double mode
            Value::Number(n) => {
                let text = n.to_string();
                Decimal::from_str(&text)
                    .or_else(|_| Decimal::from_scientific(&text))
                    .map_err(|e| bad(column, format!("not a decimal: {e}")))
            }
            Value::String(text) => {
                let precise = match self.logical(column) {
                    Some("org.apache.kafka.connect.data.Decimal") => true,
                    Some(_) => false,
                    None if self.schemas.contains_key(column) => false,
                    None => mode == DecimalMode::Precise,
                };
                if precise {
                    let scale = self.decimal_scale(column).unwrap_or(scale);
                    decode_precise(text, scale).map_err(|p| bad(column, p))
                } else {
                    Decimal::from_str(text).map_err(|e| bad(column, format!("not a decimal: {e}")))
                }
            }
            // {"scale": 2, "value": "base64"} for variable-scale numerics
            Value::Object(map) => {
                let scale = map
                    .get("scale")
                    .and_then(Value::as_u64)
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or_else(|| bad(column, "variable-scale decimal without scale"))?;
                let bytes = map
                    .get("value")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(column, "variable-scale decimal without value"))?;
                decode_precise(bytes, scale).map_err(|p| bad(column, p))
            }
            _ => Err(bad(column, "not a decimal")),
        }
    }
}

/// A `ZonedTimestamp` string: ISO-8601 in UTC, as Debezium writes it — also with the extended years
/// Java prints beyond 9999 (`+10000-01-01T00:00:00Z`) and before year 1 (`-0043-03-15T…Z`, the
/// proleptic year: 1 BC is `0000`). `infinity` and `-infinity` cannot be mirrored (the schema refuses
/// them; a record carrying one is refused with that reason).
fn zoned_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    if text == "infinity" || text == "-infinity" {
        return Err(format!(
            "`{text}` cannot be mirrored: Cassandra has no infinite timestamp"
        ));
    }
    if let Ok(parsed) = DateTime::parse_from_rfc3339(text) {
        return Ok(parsed.with_timezone(&Utc));
    }
    // A signed year of any width, then the usual `-MM-DDTHH:MM:SS[.f]Z`.
    let invalid = || format!("`{text}` is not an ISO-8601 timestamp");
    let (sign, unsigned) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(invalid()),
    };
    let (year, rest) = unsigned.split_once('-').ok_or_else(invalid)?;
    let year: i32 = year.parse().map_err(|_| invalid())?;
    let (date, time) = rest.split_once('T').ok_or_else(invalid)?;
    let (month, day) = date.split_once('-').ok_or_else(invalid)?;
    let date = NaiveDate::from_ymd_opt(
        sign * year,
        month.parse().map_err(|_| invalid())?,
        day.parse().map_err(|_| invalid())?,
    )
    .ok_or_else(|| format!("`{text}` is out of the representable range"))?;
    let time = time.strip_suffix('Z').ok_or_else(invalid)?;
    let time = chrono::NaiveTime::parse_from_str(time, "%H:%M:%S%.f").map_err(|_| invalid())?;
    Ok(date.and_time(time).and_utc())
}

/// Base64 big-endian two's-complement unscaled integer with `scale` decimal places.
fn decode_precise(base64_text: &str, scale: u32) -> Result<Decimal, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_text)
        .map_err(|e| format!("not base64: {e}"))?;
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(format!(
            "{} bytes cannot be a NUMERIC value here",
            bytes.len()
        ));
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut buffer = if negative { [0xFF_u8; 16] } else { [0_u8; 16] };
    buffer[16 - bytes.len()..].copy_from_slice(&bytes);
    let unscaled = i128::from_be_bytes(buffer);
    Decimal::try_from_i128_with_scale(unscaled, scale).map_err(|e| e.to_string())
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Uuid(Uuid),
    Text(String),
    Int(i64),
    Bool(bool),
    Date(NaiveDate),
    Timestamp(DateTime<Utc>),
    Decimal(Decimal),
}

#[cfg(test)]
mod tests {
    /// Every captured record's value with an embedded schema, and each of them altered in ways the
    /// typed fast path does not read (another type for a source field, no source block, a payload
    /// that is not an object, …): `parse` gives exactly what reading it as a JSON tree gives.
    #[test]
    fn the_fast_path_reads_what_the_json_tree_reads() {
        use serde_json::{json, Value};
        let fixtures = [
            include_str!("../tests/fixtures/debezium/users_c.json"),
            include_str!("../tests/fixtures/debezium/users_u.json"),
            include_str!("../tests/fixtures/debezium/users_d.json"),
            include_str!("../tests/fixtures/debezium/users_r.json"),
            include_str!("../tests/fixtures/debezium/users_t.json"),
            include_str!("../tests/fixtures/debezium/orders_c.json"),
            include_str!("../tests/fixtures/debezium/orders_u.json"),
            include_str!("../tests/fixtures/debezium/orders_r.json"),
            include_str!("../tests/fixtures/debezium/orders_t.json"),
        ];
        type Edit = fn(&mut Value);
        let edits: [(&str, Edit); 12] = [
            ("as captured", |_| {}),
            ("lsn as text", |v| {
                v["payload"]["source"]["lsn"] = json!("42")
            }),
            ("lsn as float", |v| {
                v["payload"]["source"]["lsn"] = json!(42.5)
            }),
            ("table as number", |v| {
                v["payload"]["source"]["table"] = json!(7)
            }),
            ("sequence as array", |v| {
                v["payload"]["source"]["sequence"] = json!(["1", "2"]);
            }),
            ("no ts_ms", |v| {
                if let Some(source) = v["payload"]["source"].as_object_mut() {
                    source.remove("ts_ms");
                }
            }),
            ("no source", |v| {
                if let Some(payload) = v["payload"].as_object_mut() {
                    payload.remove("source");
                }
            }),
            ("source as text", |v| v["payload"]["source"] = json!("x")),
            ("op as number", |v| v["payload"]["op"] = json!(1)),
            ("after as number", |v| v["payload"]["after"] = json!(1)),
            ("payload as array", |v| v["payload"] = json!([1])),
            ("escaped table name", |v| {
                v["payload"]["source"]["table"] = json!("us\"ers\u{e9}");
            }),
        ];
        for fixture in fixtures {
            let record: Value = serde_json::from_str(fixture).expect("fixture is JSON");
            let key = serde_json::to_vec(&record["key"]).expect("key");
            for (what, edit) in edits {
                let mut value = record["value"].clone();
                edit(&mut value);
                let bytes = serde_json::to_vec(&value).expect("value");
                let fast = super::parse(Some(&key), Some(&bytes));
                let tree = super::parse_tree(&bytes);
                assert_eq!(fast, tree, "{what}: {}", &fixture[..200.min(fixture.len())]);
                // As the JSON converter writes it (schema first, compact), read once with the
                // schema unseen and again with it remembered, and with what follows the schema
                // changed in ways the remembered path must not take for the record's end.
                let (schema, payload) = (&value["schema"], value["payload"].to_string());
                let written = format!(r#"{{"schema":{schema},"payload":{payload}}}"#);
                let variants = [
                    written.clone(),
                    written.clone(),
                    format!(r#"{{"schema":{schema},"payload":{payload},"payload":null}}"#),
                    format!(r#"{{"schema":{schema},"payload":{payload},"schema":{{}}}}"#),
                    format!(r#"{{"schema":{schema},"payload":{payload},"x":1}}"#),
                    format!(r#"{{"schema":{schema},"payload":{payload}}} "#),
                    format!(r#"{{"schema":{schema}, "payload":{payload}}}"#),
                    format!(r#"{{"schema":{schema},"payload":{payload}"#),
                    format!(r#"{{"schema":{schema},"payload":null}}"#),
                ];
                for bytes in variants {
                    let fast = super::parse(Some(&key), Some(bytes.as_bytes()));
                    let tree = super::parse_tree(bytes.as_bytes());
                    assert_eq!(fast, tree, "{what}: {}", &bytes[bytes.len() - 80..]);
                }
            }
        }
    }

    /// A value whose schema text was read before is found by its bytes, its payload given whole.
    #[test]
    fn a_remembered_schema_is_found_by_its_bytes() {
        use serde_json::Value;
        let fixture = include_str!("../tests/fixtures/debezium/orders_u.json");
        let record: Value = serde_json::from_str(fixture).expect("fixture is JSON");
        // A schema text no other test reads, so that this thread cannot have seen it.
        let mut schema = record["value"]["schema"].clone();
        schema["doc"] = Value::from("a_remembered_schema_is_found_by_its_bytes");
        let payload = record["value"]["payload"].to_string();
        let written = format!(r#"{{"schema":{schema},"payload":{payload}}}"#);
        let other = format!(r#"{{"schema":{{"type":"struct"}},"payload":{payload}}}"#);
        assert!(super::remembered_schema(written.as_bytes()).is_none());
        assert!(matches!(
            super::parse(None, Some(written.as_bytes())),
            Ok(super::Record::Change(_))
        ));
        let (_, found) = super::remembered_schema(written.as_bytes()).expect("remembered");
        assert_eq!(found, payload.as_bytes());
        assert!(super::remembered_schema(other.as_bytes()).is_none());
        let spaced = written.replacen(r#"{"schema":"#, r#"{ "schema":"#, 1);
        assert!(super::remembered_schema(spaced.as_bytes()).is_none());
    }

    #[test]
    fn a_sequence_gives_its_highest_position() {
        assert_eq!(
            super::sequence_position(r#"["316748056","316748112"]"#),
            Some(316_748_112)
        );
        assert_eq!(super::sequence_position(r#"[null,"42"]"#), Some(42));
        assert_eq!(super::sequence_position("[null,null]"), None);
        assert_eq!(super::sequence_position("not json"), None);
        assert_eq!(super::sequence_position(r#"["x"]"#), None);
    }

    use super::*;

    #[test]
    fn precise_decimals_decode_in_both_signs() {
        // 0x4C1D = 19485 → 194.85
        assert_eq!(decode_precise("TB0=", 2), Ok(Decimal::new(19485, 2)));
        // 0xFF38 = -200 → -2.00
        assert_eq!(decode_precise("/zg=", 2), Ok(Decimal::new(-200, 2)));
        assert_eq!(decode_precise("AA==", 2), Ok(Decimal::new(0, 2)));
        assert!(decode_precise("not base64!", 2).is_err());
    }

    #[test]
    fn schemaless_values_follow_the_column_type() -> Result<(), EnvelopeError> {
        let record = parse(
            Some(br#"{"id": 1}"#),
            Some(
                br#"{"op": "c", "before": null, "source": {"ts_ms": 1, "lsn": 42},
                     "after": {"id": 1, "d": 20758, "ts": 1795562214538720, "amount": "19.99",
                               "raw": "TB0=", "big": "__debezium_unavailable_value", "f": 1.5,
                               "tz": "2026-11-01T08:00:31.619Z", "flag": true}}"#,
            ),
        )?;
        let Record::Change(change) = record else {
            panic!("expected a change")
        };
        let after = change.after.as_ref().ok_or(EnvelopeError::MissingColumn {
            column: "after".into(),
        })?;
        assert_eq!(
            after.get("d", ColumnType::Date)?,
            Field::Value(Cell::Date(
                NaiveDate::from_ymd_opt(2026, 11, 1).unwrap_or_default()
            ))
        );
        assert_eq!(
            after.get("ts", ColumnType::Timestamp)?.value(),
            DateTime::from_timestamp_micros(1_795_562_214_538_720).map(Cell::Timestamp)
        );
        let amount = ColumnType::Numeric { scale: 2 };
        let mode = |decimals| Encoding {
            decimals,
            ..Encoding::default()
        };
        assert_eq!(
            after.get_with("amount", amount, &mode(DecimalMode::String))?,
            Field::Value(Cell::Decimal(Decimal::new(1999, 2)))
        );
        assert_eq!(
            after.get_with("raw", amount, &mode(DecimalMode::Precise))?,
            Field::Value(Cell::Decimal(Decimal::new(19485, 2)))
        );
        assert_eq!(
            after.get_with("f", amount, &mode(DecimalMode::Double))?,
            Field::Value(Cell::Decimal(Decimal::new(15, 1)))
        );
        assert!(
            after
                .get_with("raw", amount, &mode(DecimalMode::String))
                .is_err(),
            "base64 is not a decimal string"
        );
        assert_eq!(after.get("big", ColumnType::Text)?, Field::Unavailable);
        assert_eq!(
            after.get("flag", ColumnType::Bool)?,
            Field::Value(Cell::Bool(true))
        );
        assert!(matches!(
            after.get("tz", ColumnType::TimestampTz)?,
            Field::Value(Cell::Timestamp(_))
        ));
        assert_eq!(change.source.lsn, Some(42));
        assert_eq!(change.source.sequence, None);
        assert!(after.get("missing", ColumnType::Text).is_err());
        assert!(after.get("flag", ColumnType::Uuid).is_err());
        Ok(())
    }

    /// An envelope whose embedded schema gives the `amount` column of `after` the decimal scale
    /// `scale`, its value the unscaled bytes 0x4C1D (19485).
    fn envelope_with_scale(scale: &str) -> Vec<u8> {
        format!(
            r#"{{"schema": {{"type": "struct", "fields": [
                    {{"field": "before", "type": "struct", "optional": true, "fields": []}},
                    {{"field": "after", "type": "struct", "optional": true, "fields": [
                        {{"field": "amount", "type": "bytes",
                          "name": "org.apache.kafka.connect.data.Decimal",
                          "parameters": {{"scale": "{scale}"}}}}]}}]}},
                "payload": {{"op": "c", "before": null, "after": {{"amount": "TB0="}},
                             "source": {{"ts_ms": 1, "lsn": 42}}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn each_embedded_schema_decodes_its_own_records() -> Result<(), EnvelopeError> {
        let amount = |value: &[u8]| -> Result<Field<Cell>, EnvelopeError> {
            let Record::Change(change) = parse(Some(br#"{"id": 1}"#), Some(value))? else {
                return Err(EnvelopeError::NotAnEnvelope("expected a change".into()));
            };
            let after = change.after.ok_or(EnvelopeError::MissingImage {
                op: change.op,
                image: "after",
            })?;
            after.get("amount", ColumnType::Numeric { scale: 2 })
        };
        let (two, three) = (envelope_with_scale("2"), envelope_with_scale("3"));
        // Alternating texts: a remembered schema must never answer for another one.
        for _ in 0..2 {
            assert_eq!(
                amount(&two)?,
                Field::Value(Cell::Decimal(Decimal::new(19485, 2)))
            );
            assert_eq!(
                amount(&three)?,
                Field::Value(Cell::Decimal(Decimal::new(19485, 3)))
            );
        }
        // More distinct schemas than are remembered, then the first again.
        for scale in 4..=(4 + SCHEMA_MEMO_ENTRIES) {
            let value = envelope_with_scale(&scale.to_string());
            let expected = Decimal::new(19485, u32::try_from(scale).unwrap_or(0));
            assert_eq!(amount(&value)?, Field::Value(Cell::Decimal(expected)));
        }
        assert_eq!(
            amount(&two)?,
            Field::Value(Cell::Decimal(Decimal::new(19485, 2)))
        );
        Ok(())
    }

    #[test]
    fn zoned_timestamps_beyond_four_digit_years_parse() {
        let at = |text: &str| zoned_timestamp(text).map(|t| t.timestamp_millis());
        assert_eq!(at("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert_eq!(at("+10000-01-01T00:00:00.000000Z"), Ok(253_402_300_800_000));
        // 44 BC is the proleptic year -43.
        let ides = NaiveDate::from_ymd_opt(-43, 3, 15).map(|d| {
            d.and_hms_opt(12, 0, 0)
                .map(|t| t.and_utc().timestamp_millis())
        });
        assert_eq!(at("-0043-03-15T12:00:00.000000Z").ok(), ides.flatten());
        for refused in [
            "infinity",
            "-infinity",
            "+300000-01-01T00:00:00Z",
            "yesterday",
        ] {
            assert!(at(refused).is_err(), "{refused}");
        }
        assert!(zoned_timestamp("infinity")
            .err()
            .is_some_and(|e| e.contains("cannot be mirrored")));
    }

    #[test]
    fn hostile_envelopes_are_refused_with_a_reason() {
        let reason = |v: &[u8]| {
            parse(Some(b"{}"), Some(v))
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(reason(b"{oops"), Err("undecodable"));
        assert_eq!(
            reason(br#"{"op": "x", "source": {"ts_ms": 1}}"#),
            Err("unknown_op")
        );
        assert_eq!(
            reason(br#"{"op": "c", "after": null, "source": {"ts_ms": 1}}"#),
            Err("missing_image")
        );
        assert_eq!(
            reason(br#"{"op": "d", "before": null, "source": {"ts_ms": 1}}"#),
            Err("missing_image")
        );
        assert_eq!(
            reason(br#"{"op": "c", "after": {"id": 1}}"#),
            Err("not_an_envelope")
        );
        assert_eq!(reason(br#"[1, 2]"#), Err("not_an_envelope"));
        assert_eq!(
            reason(br#"{"op": "c", "after": 7, "source": {"ts_ms": 1}}"#),
            Err("not_an_envelope")
        );
    }
}
