//! A deterministic, realistic stream of business events for the producer, load tests and checks.
//!
//! The [`Generator`] simulates a small shop: users sign up, sometimes change their name or e-mail
//! address and sometimes delete their account; existing users place orders, which are shipped and
//! delivered or cancelled, and now and then deleted. The next action is drawn at random among
//! everything that may happen next, so events of many entities interleave as they would in a live
//! system.
//!
//! Every run is reproducible: the stream depends only on the [`GeneratorConfig`]. Randomness comes
//! from a [`StdRng`] seeded with `seed` (ids included), time from a simulated clock that starts at
//! `start` and advances a few milliseconds per event, and all bookkeeping uses vectors, never the
//! iteration order of a hash map. The same configuration built from the same `Cargo.lock` therefore
//! yields a byte-identical stream.
//!
//! Rules the stream keeps (the unit tests check each):
//!
//! - every event passes [`UserEvent::validate`] / [`OrderEvent::validate`];
//! - an entity's first event is its CREATE with `version` 1, and each further event of that entity
//!   carries the next version;
//! - an order is placed only by a user created earlier and not deleted, and moves only along
//!   [`OrderStatus::can_move_to`];
//! - a user is deleted only when none of its orders is still open, and after a user's DELETE there
//!   are no more events for that user or its orders;
//! - a DELETE is a soft delete: the full state with `deleted_at` set and `updated_at` equal to it;
//! - e-mail addresses are unique over the whole stream (they carry a running number);
//! - `amount` is `quantity × unit price`, exact, with two decimal places.
//!
//! The stream ends when `users` users and `orders` orders were created and every order that was not
//! deleted has reached a final status. Orders need a user, so with `users == 0` no order is created.

use std::fmt;
use std::iter::FusedIterator;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use fake::faker::internet::en::FreeEmailProvider;
use fake::faker::name::en::{FirstName, LastName};
use fake::Fake;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::events::{Event, Op, Order, OrderEvent, OrderStatus, User, UserEvent};

/// What to generate. The stream is a pure function of these four values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Users to create.
    pub users: usize,
    /// Orders to create.
    pub orders: usize,
    /// Seed of the random number generator.
    pub seed: u64,
    /// Time of the first event. Truncated to microseconds, the precision PostgreSQL keeps.
    pub start: DateTime<Utc>,
}

/// A seed for runs that did not ask for one; log it so the run can be reproduced.
pub fn random_seed() -> u64 {
    rand::random()
}

/// The built-in catalogue: product name and unit price in cents.
const PRODUCTS: &[(&str, i64)] = &[
    ("Desk lamp", 2995),
    ("Mechanical keyboard", 8900),
    ("Wireless mouse", 2499),
    ("USB-C hub", 3950),
    ("27-inch monitor", 24900),
    ("Laptop stand", 3490),
    ("Noise-cancelling headphones", 19900),
    ("Webcam", 5999),
    ("Office chair", 17900),
    ("Notebook (A5, dotted)", 750),
    ("Fountain pen", 4500),
    ("Coffee beans, 1 kg", 2140),
    ("Ceramic mug", 1200),
    ("Water bottle", 1875),
    ("Backpack", 6495),
    ("Phone charger", 1999),
    ("HDMI cable, 2 m", 999),
    ("Desk organiser", 1525),
    ("Plant pot", 1130),
    ("Standing desk", 44900),
];

/// Longest step of the simulated clock between two events, in milliseconds.
const MAX_STEP_MS: i64 = 25;

/// A set of entity indices with O(1) insert, remove and uniform random pick, and a deterministic
/// order (it depends only on the sequence of operations).
#[derive(Debug, Default)]
struct Pool {
    items: Vec<usize>,
    /// Position of each entity in `items`, `None` when absent.
    positions: Vec<Option<usize>>,
}

impl Pool {
    fn insert(&mut self, index: usize) {
        if self.positions.len() <= index {
            self.positions.resize(index + 1, None);
        }
        if self.positions[index].is_none() {
            self.positions[index] = Some(self.items.len());
            self.items.push(index);
        }
    }

    fn remove(&mut self, index: usize) {
        let Some(position) = self.positions.get_mut(index).and_then(Option::take) else {
            return;
        };
        self.items.swap_remove(position);
        if let Some(&moved) = self.items.get(position) {
            self.positions[moved] = Some(position);
        }
    }

    fn pick(&self, rng: &mut StdRng) -> Option<usize> {
        self.items.choose(rng).copied()
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[derive(Debug)]
struct UserSlot {
    user: User,
    first_name: String,
    version: i64,
    /// Orders of this user that are neither final nor deleted.
    open_orders: usize,
    orders: Vec<usize>,
}

#[derive(Debug)]
struct OrderSlot {
    order: Order,
    version: i64,
    owner: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    CreateUser,
    CreateOrder,
    AdvanceOrder,
    UpdateUser,
    DeleteUser,
    DeleteOrder,
}

/// Iterator over the generated events; see the module documentation.
pub struct Generator {
    config: GeneratorConfig,
    rng: StdRng,
    clock: DateTime<Utc>,
    users: Vec<UserSlot>,
    orders: Vec<OrderSlot>,
    /// Users created and not deleted.
    active_users: Pool,
    /// Orders neither final nor deleted (their owners are active).
    open_orders: Pool,
    /// Orders not deleted whose owners are active.
    live_orders: Pool,
    emails_issued: u64,
    finished: bool,
}

impl fmt::Debug for Generator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generator")
            .field("config", &self.config)
            .field("clock", &self.clock)
            .field("users_created", &self.users.len())
            .field("orders_created", &self.orders.len())
            .field("open_orders", &self.open_orders.len())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            clock: config.start.trunc_subsecs(6),
            users: Vec::with_capacity(config.users.min(1 << 20)),
            orders: Vec::with_capacity(config.orders.min(1 << 20)),
            active_users: Pool::default(),
            open_orders: Pool::default(),
            live_orders: Pool::default(),
            emails_issued: 0,
            finished: false,
            config,
        }
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    fn remaining_users(&self) -> usize {
        self.config.users - self.users.len()
    }

    fn remaining_orders(&self) -> usize {
        self.config.orders - self.orders.len()
    }

    fn is_done(&self) -> bool {
        self.remaining_users() == 0
            && (self.remaining_orders() == 0 || self.active_users.is_empty())
            && self.open_orders.is_empty()
    }

    fn new_id(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random::<u128>().to_le_bytes()).into_uuid()
    }

    fn tick(&mut self) {
        let step = self.rng.random_range(1..=MAX_STEP_MS);
        self.clock += TimeDelta::milliseconds(step);
    }

    /// Draws the next action among those possible now. Creating users and orders, and moving open
    /// orders on, must eventually happen; updates and deletes happen now and then along the way.
    fn choose_action(&mut self) -> Option<Action> {
        let to_create_users = self.remaining_users() as u64;
        let to_create_orders = if self.active_users.is_empty() {
            0
        } else {
            self.remaining_orders() as u64
        };
        let mut weights: Vec<(Action, u64)> = Vec::with_capacity(6);
        // Spread creations so users and orders run out at about the same time.
        if let Some(share) = (40 * to_create_users).checked_div(to_create_users + to_create_orders)
        {
            let user_share = share.max(u64::from(to_create_users > 0));
            if to_create_users > 0 {
                weights.push((Action::CreateUser, user_share));
            }
            if to_create_orders > 0 {
                weights.push((Action::CreateOrder, (40 - user_share).max(1)));
            }
        }
        if !self.open_orders.is_empty() {
            // The more open orders, the busier the warehouse.
            let open = self.open_orders.len().min(10) as u64;
            weights.push((Action::AdvanceOrder, 6 * open));
        }
        if !self.active_users.is_empty() {
            weights.push((Action::UpdateUser, 3));
            // Keep one user around while orders still need an owner.
            if self.active_users.len() > 1 || self.remaining_orders() == 0 {
                weights.push((Action::DeleteUser, 1));
            }
        }
        if !self.live_orders.is_empty() {
            weights.push((Action::DeleteOrder, 1));
        }
        let total: u64 = weights.iter().map(|(_, weight)| weight).sum();
        if total == 0 {
            return None;
        }
        let mut draw = self.rng.random_range(0..total);
        for (action, weight) in weights {
            if draw < weight {
                return Some(action);
            }
            draw -= weight;
        }
        None
    }

    fn person(&mut self) -> (String, String) {
        let first: &str = FirstName().fake_with_rng(&mut self.rng);
        let last: &str = LastName().fake_with_rng(&mut self.rng);
        (first.to_owned(), last.to_owned())
    }

    /// A new e-mail address for `name`, unique thanks to a running number.
    fn email_for(&mut self, name: &str) -> String {
        self.emails_issued += 1;
        let provider: &str = FreeEmailProvider().fake_with_rng(&mut self.rng);
        format!("{}{}@{provider}", local_part(name), self.emails_issued)
    }

    fn user_event(&mut self, index: usize, op: Op) -> Event {
        let event_id = self.new_id();
        let slot = &self.users[index];
        Event::User(UserEvent {
            event_id,
            op,
            version: slot.version,
            user: slot.user.clone(),
        })
    }

    fn order_event(&mut self, index: usize, op: Op) -> Event {
        let event_id = self.new_id();
        let slot = &self.orders[index];
        Event::Order(OrderEvent {
            event_id,
            op,
            version: slot.version,
            order: slot.order.clone(),
        })
    }

    fn create_user(&mut self) -> Event {
        let id = self.new_id();
        let (first, last) = self.person();
        let name = format!("{first} {last}");
        let email = self.email_for(&name);
        let index = self.users.len();
        self.users.push(UserSlot {
            user: User {
                id,
                name,
                email,
                created_at: self.clock,
                updated_at: self.clock,
                deleted_at: None,
            },
            first_name: first,
            version: 1,
            open_orders: 0,
            orders: Vec::new(),
        });
        self.active_users.insert(index);
        self.user_event(index, Op::Create)
    }

    fn update_user(&mut self, index: usize) -> Event {
        let roll = self.rng.random_range(0..100);
        let rename = !(50..85).contains(&roll);
        let new_email = roll >= 50;
        if rename {
            // A new family name, as after a marriage; the first name stays.
            let last: &str = LastName().fake_with_rng(&mut self.rng);
            let name = format!("{} {last}", self.users[index].first_name);
            self.users[index].user.name = name;
        }
        if new_email {
            let name = self.users[index].user.name.clone();
            self.users[index].user.email = self.email_for(&name);
        }
        let slot = &mut self.users[index];
        slot.version += 1;
        slot.user.updated_at = self.clock;
        self.user_event(index, Op::Update)
    }

    fn delete_user(&mut self, index: usize) -> Event {
        let slot = &mut self.users[index];
        slot.version += 1;
        slot.user.updated_at = self.clock;
        slot.user.deleted_at = Some(self.clock);
        self.active_users.remove(index);
        for order in std::mem::take(&mut self.users[index].orders) {
            self.live_orders.remove(order);
            self.open_orders.remove(order);
        }
        self.user_event(index, Op::Delete)
    }

    fn create_order(&mut self) -> Option<Event> {
        let owner = self.active_users.pick(&mut self.rng)?;
        let id = self.new_id();
        let &(product, cents) = PRODUCTS.choose(&mut self.rng)?;
        let quantity: i32 = if self.rng.random_ratio(1, 10) {
            self.rng.random_range(4..=10)
        } else {
            self.rng.random_range(1..=3)
        };
        let amount = Decimal::new(cents, 2) * Decimal::from(quantity);
        let index = self.orders.len();
        self.orders.push(OrderSlot {
            order: Order {
                id,
                user_id: self.users[owner].user.id,
                product: product.to_owned(),
                quantity,
                amount,
                status: OrderStatus::Placed,
                order_date: self.clock.date_naive(),
                created_at: self.clock,
                updated_at: self.clock,
                deleted_at: None,
            },
            version: 1,
            owner,
        });
        let user = &mut self.users[owner];
        user.open_orders += 1;
        user.orders.push(index);
        self.open_orders.insert(index);
        self.live_orders.insert(index);
        Some(self.order_event(index, Op::Create))
    }

    fn advance_order(&mut self, index: usize) -> Option<Event> {
        let current = self.orders[index].order.status;
        let next = match current {
            OrderStatus::Placed if self.rng.random_ratio(17, 20) => OrderStatus::Shipped,
            OrderStatus::Placed => OrderStatus::Cancelled,
            OrderStatus::Shipped if self.rng.random_ratio(9, 10) => OrderStatus::Delivered,
            OrderStatus::Shipped => OrderStatus::Cancelled,
            OrderStatus::Delivered | OrderStatus::Cancelled => return None,
        };
        if !current.can_move_to(next) {
            return None;
        }
        let slot = &mut self.orders[index];
        slot.version += 1;
        slot.order.status = next;
        slot.order.updated_at = self.clock;
        let owner = slot.owner;
        if next.is_final() {
            self.open_orders.remove(index);
            self.users[owner].open_orders -= 1;
        }
        Some(self.order_event(index, Op::Update))
    }

    fn delete_order(&mut self, index: usize) -> Event {
        let slot = &mut self.orders[index];
        slot.version += 1;
        slot.order.updated_at = self.clock;
        slot.order.deleted_at = Some(self.clock);
        let owner = slot.owner;
        let was_open = !slot.order.status.is_final();
        self.live_orders.remove(index);
        if was_open {
            self.open_orders.remove(index);
            self.users[owner].open_orders -= 1;
        }
        self.users[owner].orders.retain(|&order| order != index);
        self.order_event(index, Op::Delete)
    }

    fn step(&mut self) -> Option<Event> {
        match self.choose_action()? {
            Action::CreateUser => Some(self.create_user()),
            Action::CreateOrder => self.create_order(),
            Action::AdvanceOrder => {
                let index = self.open_orders.pick(&mut self.rng)?;
                self.advance_order(index)
            }
            Action::UpdateUser => {
                let index = self.active_users.pick(&mut self.rng)?;
                Some(self.update_user(index))
            }
            Action::DeleteUser => {
                let index = self.active_users.pick(&mut self.rng)?;
                // Someone with orders under way cannot close the account yet: a profile edit instead.
                if self.users[index].open_orders > 0 {
                    Some(self.update_user(index))
                } else {
                    Some(self.delete_user(index))
                }
            }
            Action::DeleteOrder => {
                let index = self.live_orders.pick(&mut self.rng)?;
                Some(self.delete_order(index))
            }
        }
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.finished || self.is_done() {
            self.finished = true;
            return None;
        }
        self.tick();
        let event = self.step();
        // Every branch above yields an event while work remains; stop rather than spin if not.
        if event.is_none() {
            self.finished = true;
        }
        event
    }
}

impl FusedIterator for Generator {}

/// `Mary-Ann O'Brien` → `mary.ann.obrien`: lower-case ASCII letters and digits, words joined by dots.
fn local_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for word in name.split(|c: char| c.is_whitespace() || c == '-') {
        let word: String = word
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&word);
    }
    if out.is_empty() {
        out.push_str("user");
    }
    out.push('.');
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use chrono::TimeZone;

    use super::*;

    fn config(users: usize, orders: usize, seed: u64) -> GeneratorConfig {
        GeneratorConfig {
            users,
            orders,
            seed,
            start: Utc
                .with_ymd_and_hms(2026, 11, 24, 10, 0, 0)
                .single()
                .unwrap_or_default(),
        }
    }

    fn wire(config: GeneratorConfig) -> Vec<(String, Vec<u8>)> {
        Generator::new(config)
            .map(|event| (event.key(), event.to_json()))
            .collect()
    }

    #[test]
    fn same_config_same_bytes() {
        let first = wire(config(300, 900, 42));
        let second = wire(config(300, 900, 42));
        assert!(!first.is_empty());
        assert!(first == second, "two runs with one config differ");
        let other = wire(config(300, 900, 43));
        assert!(first != other, "another seed gives the same stream");
    }

    #[test]
    fn local_parts_are_plain_ascii() {
        assert_eq!(local_part("Mary-Ann O'Brien"), "mary.ann.obrien.");
        assert_eq!(local_part("Zoë  Smith"), "zo.smith.");
        assert_eq!(local_part("  "), "user.");
    }

    #[test]
    fn empty_configs_end_at_once_or_make_users_only() {
        assert_eq!(Generator::new(config(0, 0, 1)).count(), 0);
        assert_eq!(
            Generator::new(config(0, 50, 1)).count(),
            0,
            "orders need a user"
        );
        let events: Vec<Event> = Generator::new(config(5, 0, 1)).collect();
        assert!(events.iter().all(|e| matches!(e, Event::User(_))));
        let mut generator = Generator::new(config(1, 1, 1));
        let count = generator.by_ref().count();
        assert!(count >= 3, "a user, an order and its end: {count}");
        assert!(generator.next().is_none(), "fused");
    }

    /// Replays a stream and checks every rule of the module documentation.
    #[test]
    fn large_stream_keeps_every_rule() {
        let cfg = config(2_000, 6_000, 7);
        let events: Vec<Event> = Generator::new(cfg.clone()).collect();

        let mut event_ids = HashSet::new();
        let mut emails = HashSet::new();
        let mut current_email: HashMap<Uuid, String> = HashMap::new();
        let mut user_versions: HashMap<Uuid, i64> = HashMap::new();
        let mut deleted_users: HashSet<Uuid> = HashSet::new();
        let mut orders: HashMap<Uuid, (i64, OrderStatus, bool)> = HashMap::new();
        let mut order_owner: HashMap<Uuid, Uuid> = HashMap::new();
        let mut last_time = cfg.start;
        let (mut user_creates, mut user_updates, mut user_deletes) = (0, 0, 0);
        let (mut order_creates, mut order_deletes) = (0, 0);
        let mut finals: HashMap<OrderStatus, usize> = HashMap::new();
        let mut kind_switches = 0;
        let mut previous_kind = None;

        for (position, event) in events.iter().enumerate() {
            let at = format!("event {position}: {event:?}");
            if previous_kind.is_some_and(|kind| kind != event.kind()) {
                kind_switches += 1;
            }
            previous_kind = Some(event.kind());
            match event {
                Event::User(e) => {
                    assert_eq!(e.validate(), Ok(()), "{at}");
                    assert!(event_ids.insert(e.event_id), "duplicate event id, {at}");
                    let u = &e.user;
                    assert!(
                        !deleted_users.contains(&u.id),
                        "event after the user's DELETE, {at}"
                    );
                    assert!(u.updated_at > last_time, "clock must advance, {at}");
                    last_time = u.updated_at;
                    let expected = user_versions.get(&u.id).map_or(1, |v| v + 1);
                    assert_eq!(e.version, expected, "{at}");
                    user_versions.insert(u.id, e.version);
                    match e.op {
                        Op::Create => {
                            assert_eq!(e.version, 1, "{at}");
                            assert_eq!(u.created_at, u.updated_at, "{at}");
                            assert!(emails.insert(u.email.clone()), "e-mail reused, {at}");
                            user_creates += 1;
                        }
                        Op::Update => {
                            assert!(e.version > 1, "{at}");
                            if current_email.get(&u.id) != Some(&u.email) {
                                assert!(emails.insert(u.email.clone()), "e-mail reused, {at}");
                            }
                            user_updates += 1;
                        }
                        Op::Delete => {
                            assert_eq!(current_email.get(&u.id), Some(&u.email), "{at}");
                            assert_eq!(u.deleted_at, Some(u.updated_at), "{at}");
                            deleted_users.insert(u.id);
                            user_deletes += 1;
                        }
                    }
                    current_email.insert(u.id, u.email.clone());
                }
                Event::Order(e) => {
                    assert_eq!(e.validate(), Ok(()), "{at}");
                    assert!(event_ids.insert(e.event_id), "duplicate event id, {at}");
                    let o = &e.order;
                    assert!(o.updated_at > last_time, "clock must advance, {at}");
                    last_time = o.updated_at;
                    assert!(
                        user_versions.contains_key(&o.user_id),
                        "order of a user not created before it, {at}"
                    );
                    assert!(
                        !deleted_users.contains(&o.user_id),
                        "order event after its user's DELETE, {at}"
                    );
                    let unit_cents = PRODUCTS
                        .iter()
                        .find(|(name, _)| *name == o.product)
                        .map(|(_, cents)| *cents);
                    assert!(unit_cents.is_some(), "unknown product, {at}");
                    let unit_price = Decimal::new(unit_cents.unwrap_or_default(), 2);
                    assert_eq!(o.amount, unit_price * Decimal::from(o.quantity), "{at}");
                    assert_eq!(o.amount.scale(), 2, "{at}");
                    match orders.get(&o.id).copied() {
                        None => {
                            assert_eq!(e.op, Op::Create, "{at}");
                            assert_eq!(e.version, 1, "{at}");
                            assert_eq!(o.status, OrderStatus::Placed, "{at}");
                            assert_eq!(o.order_date, o.created_at.date_naive(), "{at}");
                            order_owner.insert(o.id, o.user_id);
                            order_creates += 1;
                        }
                        Some((version, status, deleted)) => {
                            assert!(!deleted, "event after the order's DELETE, {at}");
                            assert_eq!(e.version, version + 1, "{at}");
                            assert_eq!(order_owner.get(&o.id), Some(&o.user_id), "{at}");
                            match e.op {
                                Op::Update => {
                                    assert!(status.can_move_to(o.status), "{status:?} → {at}");
                                    if o.status.is_final() {
                                        *finals.entry(o.status).or_default() += 1;
                                    }
                                }
                                Op::Delete => {
                                    assert_eq!(o.status, status, "{at}");
                                    assert_eq!(o.deleted_at, Some(o.updated_at), "{at}");
                                    order_deletes += 1;
                                }
                                Op::Create => panic!("second CREATE, {at}"),
                            }
                        }
                    }
                    orders.insert(o.id, (e.version, o.status, e.op == Op::Delete));
                }
            }
        }

        assert_eq!(user_creates, cfg.users);
        assert_eq!(order_creates, cfg.orders);
        for (id, (_, status, deleted)) in &orders {
            assert!(
                *deleted || status.is_final(),
                "order {id} ends {status:?}, not deleted"
            );
        }
        // The stream is realistic only if every kind of change shows up and entities interleave.
        assert!(user_updates > 50, "user updates: {user_updates}");
        assert!(user_deletes > 10, "user deletes: {user_deletes}");
        assert!(order_deletes > 10, "order deletes: {order_deletes}");
        assert!(finals.get(&OrderStatus::Delivered).copied().unwrap_or(0) > 1_000);
        assert!(finals.get(&OrderStatus::Cancelled).copied().unwrap_or(0) > 100);
        assert!(
            kind_switches > events.len() / 10,
            "kinds barely interleave: {kind_switches}"
        );
        let first_order_create = events.iter().position(|e| matches!(e, Event::Order(_)));
        let last_user_create = events
            .iter()
            .rposition(|e| matches!(e, Event::User(u) if u.op == Op::Create));
        assert!(
            first_order_create < last_user_create,
            "orders start before the last user signs up"
        );
    }
}
