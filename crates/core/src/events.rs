//! Business events: what the producer writes to the `users` and `orders` topics and the consumer
//! applies to PostgreSQL.
//!
//! Every event carries the **whole state of its entity after the change**, a per-entity `version`
//! that grows by one with every change, and a unique `event_id`. A sink therefore never needs the
//! previous state: it keeps, per entity, the state with the highest version. Replays, duplicates and
//! reordering then cannot regress a row, and a delete that overtakes its create still wins.
//!
//! Wire format (JSON, one event per Kafka record, key = entity id as text):
//!
//! ```json
//! {"type": "order", "schema_version": 1, "event_id": "1f0c…", "op": "UPDATE", "version": 2,
//!  "order": {"id": "9b2e…", "user_id": "51d7…", "product": "Desk lamp", "quantity": 2,
//!            "amount": "59.90", "status": "SHIPPED", "order_date": "2026-11-24",
//!            "created_at": "2026-11-24T10:00:00.000001Z", "updated_at": "2026-11-24T10:05:00Z",
//!            "deleted_at": null}}
//! ```
//!
//! Dates are `YYYY-MM-DD`, timestamps RFC 3339, money an exact decimal string (never a float).
//!
//! **Compatibility.** The reader is tolerant: fields it does not know are ignored (and named in
//! [`Decoded::unknown_fields`], so they can be counted), so a producer may add new optional fields
//! without coordinating with its readers. Removing, renaming or retyping a field, or changing what
//! one means, needs a new `schema_version`; a reader refuses a version it does not support
//! ([`InvalidEvent::UnsupportedSchemaVersion`]) instead of guessing. A record without
//! `schema_version` is version 1: records written before the field existed stay readable.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The wire format's version: what [`Event::to_json`] (and so the producer) stamps on every event.
pub const SCHEMA_VERSION: u64 = 1;

/// Whether this reader understands events of wire-format `version`.
pub const fn supports_schema_version(version: u64) -> bool {
    version == SCHEMA_VERSION
}

/// Largest record the consumer accepts; bigger ones are dead-lettered unread.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// What happened to the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Op {
    Create,
    Update,
    /// A soft delete: the state carries `deleted_at`.
    Delete,
}

/// Lifecycle of an order: PLACED → SHIPPED → DELIVERED, or PLACED/SHIPPED → CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Placed,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "PLACED",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Whether an order may move from `self` to `next`.
    pub const fn can_move_to(self, next: Self) -> bool {
        matches!(
            (self, next),
            (Self::Placed, Self::Shipped)
                | (Self::Shipped, Self::Delivered)
                | (Self::Placed | Self::Shipped, Self::Cancelled)
        )
    }

    pub const fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Cancelled)
    }
}

/// A user as stored in `users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// An order as stored in `orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub product: String,
    pub quantity: i32,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub status: OrderStatus,
    pub order_date: NaiveDate,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    pub event_id: Uuid,
    pub op: Op,
    pub version: i64,
    pub user: User,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    pub event_id: Uuid,
    pub op: Op,
    pub version: i64,
    pub order: Order,
}

/// Any business event; `type` on the wire tells which. Written with [`Event::to_json`] (or
/// serde), read with [`from_json`] or [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    User(UserEvent),
    Order(OrderEvent),
}

/// An event as it is written: the envelope, stamped with [`SCHEMA_VERSION`], and one body.
#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema_version: u64,
    event_id: Uuid,
    op: Op,
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<&'a Order>,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (event_id, op, version, user, order) = match self {
            Self::User(e) => (e.event_id, e.op, e.version, Some(&e.user), None),
            Self::Order(e) => (e.event_id, e.op, e.version, None, Some(&e.order)),
        };
        Outgoing {
            kind: self.kind().as_str(),
            schema_version: SCHEMA_VERSION,
            event_id,
            op,
            version,
            user,
            order,
        }
        .serialize(serializer)
    }
}

impl Event {
    /// The Kafka record key: the entity id, so one entity's events share a partition and stay ordered.
    pub fn key(&self) -> String {
        match self {
            Self::User(e) => e.user.id.to_string(),
            Self::Order(e) => e.order.id.to_string(),
        }
    }

    pub fn kind(&self) -> EntityKind {
        match self {
            Self::User(_) => EntityKind::User,
            Self::Order(_) => EntityKind::Order,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain types cannot fail: no maps with non-string keys, no custom errors.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Which table an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityKind {
    User,
    Order,
}

impl EntityKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Order => "order",
        }
    }
}

/// Why a record is not a valid event. Every variant is permanent: retrying cannot fix the input,
/// so the record goes to the dead-letter topic with [`InvalidEvent::reason`] as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    #[error("empty payload")]
    EmptyPayload,
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("undecodable: {0}")]
    Undecodable(String),
    #[error("{found} event on a topic of {expected} events")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("record key is missing")]
    MissingKey,
    #[error("record key `{key}` is not the entity id `{id}`")]
    KeyMismatch { key: String, id: Uuid },
    #[error("invalid field `{field}`: {problem}")]
    InvalidField {
        field: &'static str,
        problem: String,
    },
    #[error(
        "schema version {version} is not supported (this reader knows version {SCHEMA_VERSION})"
    )]
    UnsupportedSchemaVersion { version: u64 },
}

/// Every value [`InvalidEvent::reason`] can return.
pub const REASONS: [&str; 8] = [
    "empty_payload",
    "too_large",
    "undecodable",
    "wrong_type",
    "missing_key",
    "key_mismatch",
    "invalid_field",
    "unsupported_schema_version",
];

impl InvalidEvent {
    /// Short machine-readable reason, used as the dead-letter header and metrics label.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::TooLarge { .. } => "too_large",
            Self::Undecodable(_) => "undecodable",
            Self::WrongType { .. } => "wrong_type",
            Self::MissingKey => "missing_key",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::InvalidField { .. } => "invalid_field",
            Self::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidEvent {
    InvalidEvent::InvalidField {
        field,
        problem: problem.into(),
    }
}

/// Largest amount NUMERIC(12, 2) holds.
fn max_amount() -> Decimal {
    Decimal::new(999_999_999_999, 2)
}

fn check_text(field: &'static str, value: &str, max_chars: usize) -> Result<(), InvalidEvent> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(invalid(
            field,
            format!("longer than {max_chars} characters"),
        ));
    }
    if value.contains('\0') {
        return Err(invalid(field, "contains a NUL character"));
    }
    Ok(())
}

fn check_common(
    op: Op,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
) -> Result<(), InvalidEvent> {
    if version < 1 {
        return Err(invalid("version", format!("{version} is not positive")));
    }
    if updated_at < created_at {
        return Err(invalid("updated_at", "earlier than created_at"));
    }
    match (op, deleted_at) {
        (Op::Delete, None) => Err(invalid("deleted_at", "a DELETE must carry deleted_at")),
        (Op::Create | Op::Update, Some(_)) => {
            Err(invalid("deleted_at", "only a DELETE may carry deleted_at"))
        }
        (Op::Delete, Some(at)) if at < created_at => {
            Err(invalid("deleted_at", "earlier than created_at"))
        }
        _ => Ok(()),
    }
}

impl UserEvent {
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        let u = &self.user;
        check_text("user.name", &u.name, 200)?;
        check_text("user.email", &u.email, 320)?;
        if !u.email.contains('@') {
            return Err(invalid("user.email", "not an e-mail address"));
        }
        check_common(
            self.op,
            self.version,
            u.created_at,
            u.updated_at,
            u.deleted_at,
        )
    }
}

impl OrderEvent {
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        let o = &self.order;
        check_text("order.product", &o.product, 200)?;
        if !(1..=10_000).contains(&o.quantity) {
            return Err(invalid(
                "order.quantity",
                format!("{} is outside 1..=10000", o.quantity),
            ));
        }
        if o.amount.is_sign_negative() && !o.amount.is_zero() {
            return Err(invalid("order.amount", "negative"));
        }
        if o.amount.scale() > 2 && o.amount.normalize().scale() > 2 {
            return Err(invalid("order.amount", "more than 2 decimal places"));
        }
        if o.amount > max_amount() {
            return Err(invalid("order.amount", "exceeds NUMERIC(12, 2)"));
        }
        check_common(
            self.op,
            self.version,
            o.created_at,
            o.updated_at,
            o.deleted_at,
        )
    }
}

/// An event read from its JSON, with what the reader ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub event: Event,
    /// Fields the record carried that this reader does not know, as paths (`channel`,
    /// `order.gift_wrap`), in the order met; an unknown object counts once, by its own name.
    pub unknown_fields: Vec<String>,
}

/// The wire format's `type`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    User,
    Order,
}

/// The envelope as it is read: the bodies are kept as text until `type` says which one counts.
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: Kind,
    schema_version: Option<u64>,
    event_id: Uuid,
    op: Op,
    version: i64,
    user: Option<Box<RawValue>>,
    order: Option<Box<RawValue>>,
}

/// Only the version: read when the envelope is not one this reader understands, to tell an event
/// of an unsupported version (whose shape may differ) from a broken one.
#[derive(Deserialize)]
struct VersionOnly {
    schema_version: Option<u64>,
}

/// `T` from a whole JSON text, every ignored field's path (under `prefix`) added to `unknown`.
fn read_tolerantly<T: DeserializeOwned>(
    json: &[u8],
    prefix: &str,
    unknown: &mut Vec<String>,
) -> Result<T, serde_json::Error> {
    let mut reader = serde_json::Deserializer::from_slice(json);
    let value = serde_ignored::deserialize(&mut reader, |path| {
        unknown.push(format!("{prefix}{path}"));
    })?;
    reader.end()?;
    Ok(value)
}

/// The body called `name` (`user`, `order`), its ignored fields named under `name.`.
fn read_body<T: DeserializeOwned>(
    name: &str,
    body: &RawValue,
    unknown: &mut Vec<String>,
) -> Result<T, InvalidEvent> {
    read_tolerantly(body.get().as_bytes(), &format!("{name}."), unknown)
        .map_err(|error| InvalidEvent::Undecodable(format!("{name}: {error}")))
}

/// Reads an event's JSON (the wire format's rules only; [`decode`] also checks the record).
pub fn from_json(payload: &[u8]) -> Result<Decoded, InvalidEvent> {
    let mut unknown_fields = Vec::new();
    let incoming: Incoming = match read_tolerantly(payload, "", &mut unknown_fields) {
        Ok(incoming) => incoming,
        Err(error) => {
            let version = serde_json::from_slice::<VersionOnly>(payload)
                .ok()
                .and_then(|v| v.schema_version);
            return Err(match version {
                Some(version) if !supports_schema_version(version) => {
                    InvalidEvent::UnsupportedSchemaVersion { version }
                }
                _ => InvalidEvent::Undecodable(error.to_string()),
            });
        }
    };
    let version = incoming.schema_version.unwrap_or(SCHEMA_VERSION);
    if !supports_schema_version(version) {
        return Err(InvalidEvent::UnsupportedSchemaVersion { version });
    }
    let Incoming {
        kind,
        event_id,
        op,
        version,
        user,
        order,
        ..
    } = incoming;
    let (name, body, other, other_name) = match kind {
        Kind::User => ("user", user, order, "order"),
        Kind::Order => ("order", order, user, "user"),
    };
    // The other kind's body is a field this kind of event does not have.
    if other.is_some() {
        unknown_fields.push(other_name.to_owned());
    }
    let body = body.ok_or_else(|| InvalidEvent::Undecodable(format!("missing field `{name}`")))?;
    let event = match kind {
        Kind::User => {
            let user = read_body(name, &body, &mut unknown_fields)?;
            Event::User(UserEvent {
                event_id,
                op,
                version,
                user,
            })
        }
        Kind::Order => {
            let order = read_body(name, &body, &mut unknown_fields)?;
            Event::Order(OrderEvent {
                event_id,
                op,
                version,
                order,
            })
        }
    };
    Ok(Decoded {
        event,
        unknown_fields,
    })
}

/// Decodes and validates one record: the checks every consumer of business events applies before
/// anything reaches a database.
pub fn decode(
    expected: EntityKind,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Decoded, InvalidEvent> {
    let payload = match payload {
        None | Some([]) => return Err(InvalidEvent::EmptyPayload),
        Some(bytes) => bytes,
    };
    if payload.len() > MAX_EVENT_BYTES {
        return Err(InvalidEvent::TooLarge {
            size: payload.len(),
            limit: MAX_EVENT_BYTES,
        });
    }
    let decoded = from_json(payload)?;
    let event = &decoded.event;
    if event.kind() != expected {
        return Err(InvalidEvent::WrongType {
            expected: expected.as_str(),
            found: event.kind().as_str(),
        });
    }
    let id = match event {
        Event::User(e) => e.user.id,
        Event::Order(e) => e.order.id,
    };
    let key = match key {
        None | Some([]) => return Err(InvalidEvent::MissingKey),
        Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
    };
    if key != id.to_string() {
        return Err(InvalidEvent::KeyMismatch { key, id });
    }
    match event {
        Event::User(e) => e.validate()?,
        Event::Order(e) => e.validate()?,
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_795_000_000 + secs, 0)
            .single()
            .unwrap_or_default()
    }

    fn order_event() -> OrderEvent {
        OrderEvent {
            event_id: Uuid::from_u128(1),
            op: Op::Update,
            version: 2,
            order: Order {
                id: Uuid::from_u128(2),
                user_id: Uuid::from_u128(3),
                product: "Desk lamp".into(),
                quantity: 2,
                amount: Decimal::new(5990, 2),
                status: OrderStatus::Shipped,
                order_date: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap_or_default(),
                created_at: at(0),
                updated_at: at(300),
                deleted_at: None,
            },
        }
    }

    fn encoded(event: &Event) -> (String, Vec<u8>) {
        (event.key(), event.to_json())
    }

    #[test]
    fn wire_format_is_exact_and_round_trips() {
        let event = Event::Order(order_event());
        let (key, bytes) = encoded(&event);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(json["type"], "order");
        assert_eq!(json["schema_version"], 1, "every event is stamped");
        assert_eq!(json["op"], "UPDATE");
        assert_eq!(
            json["order"]["amount"], "59.90",
            "money travels as an exact string"
        );
        assert_eq!(json["order"]["order_date"], "2026-11-24");
        assert_eq!(json["order"]["status"], "SHIPPED");
        assert_eq!(json["order"]["updated_at"], "2026-11-18T11:11:40Z");
        let back = decode(EntityKind::Order, Some(key.as_bytes()), Some(&bytes));
        assert_eq!(
            back,
            Ok(Decoded {
                event,
                unknown_fields: Vec::new()
            })
        );
    }

    /// The record `event` with its JSON changed by `edit`, decoded.
    fn decoded_with(
        event: &Event,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Decoded, InvalidEvent> {
        let mut json: serde_json::Value =
            serde_json::from_slice(&event.to_json()).unwrap_or_default();
        edit(&mut json);
        decode(
            event.kind(),
            Some(event.key().as_bytes()),
            Some(json.to_string().as_bytes()),
        )
    }

    #[test]
    fn unknown_fields_are_ignored_and_named() {
        let event = Event::Order(order_event());
        let decoded = decoded_with(&event, |json| {
            json["channel"] = "web".into();
            json["order"]["gift_wrap"] = true.into();
            json["order"]["meta"] = serde_json::json!({"campaign": {"id": 7}, "tags": [1, 2]});
            // A body of the other kind is a field an order event does not have.
            json["user"] = serde_json::json!({"whatever": 1});
        });
        let Ok(decoded) = decoded else {
            panic!("an event with extra fields must be read: {decoded:?}");
        };
        assert_eq!(decoded.event, event, "the known fields are read exactly");
        let mut fields = decoded.unknown_fields;
        fields.sort();
        assert_eq!(
            fields,
            ["channel", "order.gift_wrap", "order.meta", "user"],
            "an unknown object counts once, by its own name"
        );
    }

    #[test]
    fn an_event_without_schema_version_is_version_1() {
        let event = Event::User(UserEvent {
            event_id: Uuid::from_u128(9),
            op: Op::Create,
            version: 1,
            user: User {
                id: Uuid::from_u128(10),
                name: "Ada".into(),
                email: "ada@example.com".into(),
                created_at: at(0),
                updated_at: at(0),
                deleted_at: None,
            },
        });
        let decoded = decoded_with(&event, |json| {
            if let Some(envelope) = json.as_object_mut() {
                envelope.remove("schema_version");
            }
        });
        assert_eq!(decoded.map(|d| d.event), Ok(event));
    }

    #[test]
    fn an_unsupported_schema_version_is_refused_whatever_its_shape() {
        let event = Event::Order(order_event());
        let reason = |edit: &dyn Fn(&mut serde_json::Value)| {
            decoded_with(&event, edit)
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(
            decoded_with(&event, |json| json["schema_version"] = 99.into()).map(|_| ()),
            Err(InvalidEvent::UnsupportedSchemaVersion { version: 99 })
        );
        assert_eq!(
            reason(&|json| json["schema_version"] = 0.into()),
            Err("unsupported_schema_version")
        );
        // A later version may rename or retype fields: its shape is not judged by version 1's rules.
        assert_eq!(
            reason(&|json| {
                json["schema_version"] = 2.into();
                json["order"]["quantity"] = "two".into();
                if let Some(envelope) = json.as_object_mut() {
                    envelope.remove("event_id");
                }
            }),
            Err("unsupported_schema_version")
        );
        assert_eq!(
            reason(&|json| json["schema_version"] = "1".into()),
            Err("undecodable"),
            "a version must be a number"
        );
        assert_eq!(reason(&|json| json["schema_version"] = 1.into()), Ok(()));
    }

    #[test]
    fn trailing_bytes_and_a_missing_body_are_undecodable() {
        let event = Event::Order(order_event());
        let key = event.key();
        let mut bytes = event.to_json();
        bytes.extend_from_slice(b" {}");
        assert_eq!(
            decode(EntityKind::Order, Some(key.as_bytes()), Some(&bytes)).map_err(|e| e.reason()),
            Err("undecodable")
        );
        let missing = decoded_with(&event, |json| {
            if let Some(envelope) = json.as_object_mut() {
                envelope.remove("order");
            }
        });
        assert_eq!(missing.map_err(|e| e.reason()), Err("undecodable"));
    }

    #[test]
    fn hostile_records_are_rejected_with_a_reason() {
        let good = Event::Order(order_event());
        let (key, bytes) = encoded(&good);
        let key = Some(key.as_bytes());
        let reason = |k: Option<&[u8]>, p: Option<&[u8]>| {
            decode(EntityKind::Order, k, p)
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(reason(key, None), Err("empty_payload"));
        assert_eq!(reason(key, Some(b"{not json")), Err("undecodable"));
        assert_eq!(
            reason(key, Some(&vec![b' '; MAX_EVENT_BYTES + 1])),
            Err("too_large")
        );
        assert_eq!(reason(None, Some(&bytes)), Err("missing_key"));
        assert_eq!(reason(Some(b"other"), Some(&bytes)), Err("key_mismatch"));
        assert_eq!(
            decode(EntityKind::User, key, Some(&bytes))
                .map_err(|e| e.reason())
                .map(|_| ()),
            Err("wrong_type")
        );

        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        json["type"] = "refund".into();
        assert_eq!(
            reason(key, Some(json.to_string().as_bytes())),
            Err("undecodable")
        );
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        json["order"]["amount"] = serde_json::json!(59.9);
        assert_eq!(
            reason(key, Some(json.to_string().as_bytes())),
            Err("undecodable"),
            "a float amount"
        );
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        json["order"]["quantity"] = "two".into();
        assert_eq!(
            reason(key, Some(json.to_string().as_bytes())),
            Err("undecodable")
        );
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if let Some(order) = json["order"].as_object_mut() {
            order.remove("user_id");
        }
        assert_eq!(
            reason(key, Some(json.to_string().as_bytes())),
            Err("undecodable")
        );
    }

    #[test]
    fn field_rules() {
        let mut e = order_event();
        e.order.quantity = 0;
        assert_eq!(e.validate().map_err(|e| e.reason()), Err("invalid_field"));
        let mut e = order_event();
        e.order.amount = Decimal::new(-1, 2);
        assert!(e.validate().is_err());
        let mut e = order_event();
        e.order.amount = Decimal::new(1, 3);
        assert!(e.validate().is_err(), "three decimal places");
        let mut e = order_event();
        e.order.amount = Decimal::new(10, 3);
        assert!(e.validate().is_ok(), "0.010 is 0.01");
        let mut e = order_event();
        e.order.amount = Decimal::new(1_000_000_000_000, 2);
        assert!(e.validate().is_err(), "beyond NUMERIC(12, 2)");
        let mut e = order_event();
        e.op = Op::Delete;
        assert!(e.validate().is_err(), "DELETE without deleted_at");
        e.order.deleted_at = Some(at(400));
        assert!(e.validate().is_ok());
        let mut e = order_event();
        e.version = 0;
        assert!(e.validate().is_err());
    }

    #[test]
    fn order_lifecycle() {
        use OrderStatus::*;
        assert!(Placed.can_move_to(Shipped));
        assert!(Shipped.can_move_to(Delivered));
        assert!(Placed.can_move_to(Cancelled));
        assert!(Shipped.can_move_to(Cancelled));
        assert!(!Delivered.can_move_to(Cancelled));
        assert!(!Placed.can_move_to(Delivered));
        assert!(Delivered.is_final() && Cancelled.is_final() && !Shipped.is_final());
    }
}
