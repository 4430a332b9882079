//! The expected state: the rows a stream of business events must leave behind, computed from the
//! events alone (an oracle independent of the sinks): per entity the state with the highest
//! version; an order of a deleted user is deleted at the user's deletion time unless it was
//! deleted before (the rule of PostgreSQL's trigger and of the consumer).

use std::collections::BTreeMap;

use cdc_core::events::{Event, Order, User};
use cdc_core::tables::{self, Table};
use cdcconsumer::verify::compare::{keyed, Rows, Value};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::rows::{
    differences, ensure_no_differences, expected_orders_by_user, CassandraReader, Precision,
};

/// The final state of every entity of a stream, with its version.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    pub users: BTreeMap<Uuid, (User, i64)>,
    pub orders: BTreeMap<Uuid, (Order, i64)>,
}

fn keep_latest<T: Clone>(map: &mut BTreeMap<Uuid, (T, i64)>, id: Uuid, state: &T, version: i64) {
    let entry = map.entry(id).or_insert_with(|| (state.clone(), version));
    if version > entry.1 {
        *entry = (state.clone(), version);
    }
}

fn timestamp(at: DateTime<Utc>, precision: Precision) -> Value {
    match precision {
        Precision::Millis => Value::timestamp(at),
        Precision::Micros => Value::TimestampMicros(at.timestamp_micros()),
    }
}

fn optional(at: Option<DateTime<Utc>>, precision: Precision) -> Value {
    at.map_or(Value::Null, |at| timestamp(at, precision))
}

/// A users row in the description's column order.
pub fn user_row(user: &User, version: i64, precision: Precision) -> Vec<Value> {
    row(&tables::USERS, |column| match column {
        "id" => Value::Uuid(user.id),
        "name" => Value::Text(user.name.clone()),
        "email" => Value::Text(user.email.clone()),
        "created_at" => timestamp(user.created_at, precision),
        "updated_at" => timestamp(user.updated_at, precision),
        "deleted_at" => optional(user.deleted_at, precision),
        "version" => Value::Int(version),
        other => Value::Unrepresentable(format!("no field for column {other}")),
    })
}

/// An orders row in the description's column order.
pub fn order_row(order: &Order, version: i64, precision: Precision) -> Vec<Value> {
    row(&tables::ORDERS, |column| match column {
        "id" => Value::Uuid(order.id),
        "user_id" => Value::Uuid(order.user_id),
        "product" => Value::Text(order.product.clone()),
        "quantity" => Value::Int(i64::from(order.quantity)),
        "amount" => Value::Decimal(order.amount),
        "status" => Value::Text(order.status.as_str().to_owned()),
        "order_date" => Value::date(order.order_date),
        "created_at" => timestamp(order.created_at, precision),
        "updated_at" => timestamp(order.updated_at, precision),
        "deleted_at" => optional(order.deleted_at, precision),
        "version" => Value::Int(version),
        other => Value::Unrepresentable(format!("no field for column {other}")),
    })
}

fn row(table: &Table, value: impl Fn(&str) -> Value) -> Vec<Value> {
    table.columns.iter().map(|c| value(c.name)).collect()
}

impl Model {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut model = Self::default();
        for event in events {
            match event {
                Event::User(e) => keep_latest(&mut model.users, e.user.id, &e.user, e.version),
                Event::Order(e) => {
                    keep_latest(&mut model.orders, e.order.id, &e.order, e.version);
                }
            }
        }
        for (order, _) in model.orders.values_mut() {
            let user_deleted = model
                .users
                .get(&order.user_id)
                .and_then(|(u, _)| u.deleted_at);
            if let (None, Some(at)) = (order.deleted_at, user_deleted) {
                order.deleted_at = Some(at);
                order.updated_at = order.updated_at.max(at);
            }
        }
        model
    }

    pub fn user_ids(&self) -> Vec<Uuid> {
        self.users.keys().copied().collect()
    }

    pub fn order_ids(&self) -> Vec<Uuid> {
        self.orders.keys().copied().collect()
    }

    /// Every user, as rows.
    pub fn users(&self, precision: Precision) -> Rows {
        self.users
            .values()
            .map(|(user, version)| keyed(&tables::USERS, user_row(user, *version, precision)))
            .collect()
    }

    /// Every order, as rows.
    pub fn orders(&self, precision: Precision) -> Rows {
        self.orders
            .values()
            .map(|(order, version)| keyed(&tables::ORDERS, order_row(order, *version, precision)))
            .collect()
    }

    /// Every order under its user, as orders_by_user rows.
    pub fn orders_by_user(&self, precision: Precision) -> Rows {
        expected_orders_by_user(&self.orders(precision))
    }

    /// Cassandra holds this model's rows exactly (users, orders, and the orders_by_user rows of
    /// its users), timestamps in whole milliseconds.
    pub async fn check_cassandra(&self, reader: &CassandraReader<'_>) -> anyhow::Result<()> {
        let mut problems = differences(
            "user",
            &self.users(Precision::Millis),
            &reader.rows(&tables::USERS, &self.user_ids()).await?,
        );
        problems.extend(differences(
            "order",
            &self.orders(Precision::Millis),
            &reader.rows(&tables::ORDERS, &self.order_ids()).await?,
        ));
        problems.extend(differences(
            "orders_by_user",
            &self.orders_by_user(Precision::Millis),
            &reader.rows(&tables::ORDERS_BY_USER, &self.owners()).await?,
        ));
        ensure_no_differences(&problems)
    }

    /// PostgreSQL holds this model's rows exactly, at full precision.
    pub async fn check_postgres(&self, pool: &sqlx::PgPool) -> anyhow::Result<()> {
        ensure_no_differences(&self.postgres_differences(pool).await?)
    }

    /// What PostgreSQL holds differently from this model.
    pub async fn postgres_differences(&self, pool: &sqlx::PgPool) -> anyhow::Result<Vec<String>> {
        let users = crate::rows::pg_rows(
            pool,
            &tables::USERS,
            Some(&self.user_ids()),
            Precision::Micros,
        )
        .await?;
        let orders = crate::rows::pg_rows(
            pool,
            &tables::ORDERS,
            Some(&self.order_ids()),
            Precision::Micros,
        )
        .await?;
        let mut problems = differences("user", &self.users(Precision::Micros), &users);
        problems.extend(differences(
            "order",
            &self.orders(Precision::Micros),
            &orders,
        ));
        Ok(problems)
    }

    /// The users of every order and every user: the orders_by_user partitions to look at.
    pub fn owners(&self) -> Vec<Uuid> {
        let mut owners: std::collections::BTreeSet<Uuid> = self.users.keys().copied().collect();
        owners.extend(self.orders.values().map(|(o, _)| o.user_id));
        owners.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_core::generator::{Generator, GeneratorConfig};

    #[test]
    fn rows_fill_every_described_column() {
        let events: Vec<Event> = Generator::new(GeneratorConfig {
            users: 20,
            orders: 60,
            seed: 11,
            start: Utc::now(),
        })
        .collect();
        let model = Model::from_events(&events);
        for rows in [
            model.users(Precision::Micros),
            model.orders(Precision::Millis),
            model.orders_by_user(Precision::Millis),
        ] {
            for (key, row) in rows {
                assert!(
                    !row.iter().any(|v| matches!(v, Value::Unrepresentable(_))),
                    "{key}: {row:?}"
                );
            }
        }
        // Only the highest version of an entity counts.
        let highest = events
            .iter()
            .filter_map(|e| match e {
                Event::User(u) => Some((u.user.id, u.version)),
                Event::Order(_) => None,
            })
            .fold(BTreeMap::new(), |mut m: BTreeMap<Uuid, i64>, (id, v)| {
                let e = m.entry(id).or_default();
                *e = (*e).max(v);
                m
            });
        for (id, (_, version)) in &model.users {
            assert_eq!(highest.get(id), Some(version));
        }
    }
}
