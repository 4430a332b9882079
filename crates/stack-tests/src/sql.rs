//! Changes made directly in PostgreSQL, as another application would make them, and what a test
//! expects of them: the rows' final versions, owners and soft deletes ([`Written`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_core::tables;
use cdcconsumer::verify::compare::{Key, Value};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::rows::{column, differences, ensure_no_differences, id_key, CassandraReader};
use crate::wait_for;

/// Inserts a live user at version 1.
pub async fn insert_user(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at, deleted_at, version) \
         VALUES ($1, $2, $3, now(), now(), NULL, 1)",
    )
    .bind(id)
    .bind(name)
    .bind(format!("{}@example.com", name.replace(' ', ".")))
    .execute(tx)
    .await?;
    Ok(())
}

/// Inserts a PLACED order at version 1.
pub async fn insert_order(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    user_id: Uuid,
    product: &str,
    cents: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (id, user_id, product, quantity, amount, status, order_date, \
         created_at, updated_at, deleted_at, version) \
         VALUES ($1, $2, $3, 1, $4, 'PLACED', CURRENT_DATE, now(), now(), NULL, 1)",
    )
    .bind(id)
    .bind(user_id)
    .bind(product)
    .bind(Decimal::new(cents, 2))
    .execute(tx)
    .await?;
    Ok(())
}

/// What a test wrote to PostgreSQL itself, at the row's final state.
#[derive(Debug, Default, Clone)]
pub struct Written {
    /// id → (version, soft-deleted)
    pub users: BTreeMap<Uuid, (i64, bool)>,
    /// id → (user_id, version, soft-deleted)
    pub orders: BTreeMap<Uuid, (Uuid, i64, bool)>,
}

fn version_and_deleted(table: &tables::Table, row: &[Value]) -> (i64, bool) {
    let version = match column(table, row, "version") {
        Value::Int(v) => *v,
        _ => -1,
    };
    (version, *column(table, row, "deleted_at") != Value::Null)
}

impl Written {
    /// PostgreSQL's trigger, mirrored: a user's soft delete marks their live orders deleted.
    pub fn soft_delete_user(&mut self, id: Uuid) {
        if let Some(user) = self.users.get_mut(&id) {
            user.0 += 1;
            user.1 = true;
        }
        for order in self.orders.values_mut().filter(|o| o.0 == id) {
            order.2 = true;
        }
    }

    /// Cassandra holds every row written, at its final version and owner, orders_by_user included.
    pub async fn check_cassandra(&self, reader: &CassandraReader<'_>) -> Result<()> {
        let user_ids: Vec<Uuid> = self.users.keys().copied().collect();
        let order_ids: Vec<Uuid> = self.orders.keys().copied().collect();
        let expected_users: BTreeMap<Key, (i64, bool)> = self
            .users
            .iter()
            .map(|(id, state)| (id_key(&tables::USERS, *id), *state))
            .collect();
        let users: BTreeMap<Key, (i64, bool)> = reader
            .rows(&tables::USERS, &user_ids)
            .await?
            .into_iter()
            .map(|(key, row)| (key, version_and_deleted(&tables::USERS, &row)))
            .collect();
        let expected_orders: BTreeMap<Key, (Value, i64, bool)> = self
            .orders
            .iter()
            .map(|(id, (user, version, deleted))| {
                (
                    id_key(&tables::ORDERS, *id),
                    (Value::Uuid(*user), *version, *deleted),
                )
            })
            .collect();
        let orders: BTreeMap<Key, (Value, i64, bool)> = reader
            .rows(&tables::ORDERS, &order_ids)
            .await?
            .into_iter()
            .map(|(key, row)| {
                let (version, deleted) = version_and_deleted(&tables::ORDERS, &row);
                let user = column(&tables::ORDERS, &row, "user_id").clone();
                (key, (user, version, deleted))
            })
            .collect();
        let expected_by_user: BTreeMap<Key, (i64, bool)> = self
            .orders
            .iter()
            .map(|(id, (user, version, deleted))| {
                (
                    Key {
                        values: vec![Value::Uuid(*user), Value::Uuid(*id)],
                        names: tables::ORDERS_BY_USER.key,
                    },
                    (*version, *deleted),
                )
            })
            .collect();
        let by_user: BTreeMap<Key, (i64, bool)> = reader
            .rows(&tables::ORDERS_BY_USER, &user_ids)
            .await?
            .into_iter()
            .map(|(key, row)| (key, version_and_deleted(&tables::ORDERS_BY_USER, &row)))
            .collect();
        let mut problems = differences("user", &expected_users, &users);
        problems.extend(differences("order", &expected_orders, &orders));
        problems.extend(differences("orders_by_user", &expected_by_user, &by_user));
        ensure_no_differences(&problems)
    }
}

/// Ids derived from one random base, so that a test can name the rows a writer makes before it
/// makes them.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    base: u128,
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

impl Ids {
    pub fn new() -> Self {
        Self {
            base: Uuid::new_v4().as_u128() & !0xffff_ffff,
        }
    }

    fn id(&self, n: usize, kind: u128) -> Uuid {
        let n = u128::try_from(n).unwrap_or_default();
        uuid::Builder::from_random_bytes((self.base + n * 4 + kind).to_be_bytes()).into_uuid()
    }

    pub fn user(&self, n: usize) -> Uuid {
        self.id(n, 0)
    }

    pub fn order(&self, n: usize, which: u128) -> Uuid {
        self.id(n, 1 + which % 2)
    }
}

/// A SQL client writing rounds of changes until told to stop, as another application would: each
/// round one transaction that inserts a user with two orders, renames the previous user, ships the
/// previous user's first order; every 10th round moves an order to the new user, every 25th
/// soft-deletes a user (the trigger marks their orders deleted).
#[derive(Debug)]
pub struct SqlWriter {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    pub ids: Ids,
    task: Option<tokio::task::JoinHandle<Result<Written>>>,
}

impl SqlWriter {
    /// Starts writing, `pause` between rounds, `max_rounds` at most.
    pub fn start(pool: PgPool, max_rounds: usize, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let ids = Ids::new();
        let task = tokio::spawn(write_rounds(
            pool,
            ids,
            Arc::clone(&stop),
            Arc::clone(&rounds),
            max_rounds,
            pause,
        ));
        Self {
            stop,
            rounds,
            ids,
            task: Some(task),
        }
    }

    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` rounds are committed.
    pub async fn wait_rounds(&self, n: usize, timeout: Duration) -> Result<()> {
        let task = self.task.as_ref().context("writer already finished")?;
        wait_for(&format!("{n} writer rounds"), timeout, || async move {
            if self.rounds() >= n {
                return Ok(Some(()));
            }
            ensure!(!task.is_finished(), "the SQL writer stopped early");
            Ok(None)
        })
        .await
    }

    pub async fn finish(mut self) -> Result<Written> {
        self.stop.store(true, Ordering::SeqCst);
        let task = self.task.take().context("writer already finished")?;
        task.await?
    }
}

impl Drop for SqlWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_rounds(
    pool: PgPool,
    ids: Ids,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    max_rounds: usize,
    pause: Duration,
) -> Result<Written> {
    let mut written = Written::default();
    for n in 0..max_rounds {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let next = &mut written;
        let mut tx = pool.begin().await?;
        let user = ids.user(n);
        insert_user(&mut tx, user, &format!("writer user {n}")).await?;
        next.users.insert(user, (1, false));
        for which in 0..2 {
            let order = ids.order(n, which);
            let cents = 1000 + i64::try_from(n)? * 3 + i64::try_from(which)?;
            insert_order(&mut tx, order, user, &format!("product {n}/{which}"), cents).await?;
            next.orders.insert(order, (user, 1, false));
        }
        if n >= 1 {
            let previous = ids.user(n - 1);
            sqlx::query(
                "UPDATE users SET name = name || ' (renamed)', updated_at = now(), \
                 version = version + 1 WHERE id = $1",
            )
            .bind(previous)
            .execute(&mut *tx)
            .await?;
            if let Some(u) = next.users.get_mut(&previous) {
                u.0 += 1;
            }
            let shipped = ids.order(n - 1, 0);
            sqlx::query(
                "UPDATE orders SET status = 'SHIPPED', quantity = quantity + 1, \
                 updated_at = now(), version = version + 1 WHERE id = $1",
            )
            .bind(shipped)
            .execute(&mut *tx)
            .await?;
            if let Some(o) = next.orders.get_mut(&shipped) {
                o.1 += 1;
            }
        }
        if n >= 2 && n % 10 == 0 {
            let moved = ids.order(n - 2, 1);
            sqlx::query(
                "UPDATE orders SET user_id = $2, updated_at = now(), version = version + 1 \
                 WHERE id = $1",
            )
            .bind(moved)
            .bind(user)
            .execute(&mut *tx)
            .await?;
            if let Some(o) = next.orders.get_mut(&moved) {
                o.0 = user;
                o.1 += 1;
            }
        }
        if n >= 3 && n % 25 == 0 {
            let deleted = ids.user(n - 3);
            sqlx::query(
                "UPDATE users SET deleted_at = now(), updated_at = now(), version = version + 1 \
                 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(deleted)
            .execute(&mut *tx)
            .await?;
            next.soft_delete_user(deleted);
        }
        tx.commit().await?;
        rounds.store(n + 1, Ordering::SeqCst);
        // A steady stream rather than a burst: the faults hit while changes keep coming.
        tokio::time::sleep(pause).await;
    }
    Ok(written)
}
