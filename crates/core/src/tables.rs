//! One description of each table's columns, used by the PostgreSQL sink, the Cassandra sink, the
//! verifier, the tests and the benchmarks: the names, their order and their types are spelled out
//! here and nowhere else.
//!
//! PostgreSQL holds `users` and `orders` (`postgres-schema.sql`); Cassandra mirrors them in
//! `users`, `orders` and `orders_by_user` (`cassandra-schema.cql`), the last one keyed by
//! `(user_id, order_id)` with the orders columns otherwise. A unit test checks both schema files
//! against this description.

/// A column's type as the pipeline uses it: the PostgreSQL type, and the CQL type it is mirrored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Uuid,
    Text,
    /// INTEGER / int.
    Int,
    /// BIGINT / bigint.
    BigInt,
    Bool,
    /// DATE / date.
    Date,
    /// TIMESTAMPTZ / timestamp (Cassandra keeps milliseconds).
    TimestampTz,
    /// TIMESTAMP WITHOUT TIME ZONE, read as UTC.
    Timestamp,
    /// NUMERIC(p, scale) / decimal.
    Numeric {
        scale: u32,
    },
}

impl ColumnType {
    /// The PostgreSQL type name, as used in casts (`$1::timestamptz[]`).
    pub const fn pg(self) -> &'static str {
        match self {
            Self::Uuid => "uuid",
            Self::Text => "text",
            Self::Int => "int4",
            Self::BigInt => "int8",
            Self::Bool => "bool",
            Self::Date => "date",
            Self::TimestampTz => "timestamptz",
            Self::Timestamp => "timestamp",
            Self::Numeric { .. } => "numeric",
        }
    }

    /// Whether PostgreSQL can store a value of this type out of line (TOAST): only then may
    /// Debezium send its "unchanged" placeholder for it.
    pub const fn toastable(self) -> bool {
        matches!(self, Self::Text)
    }

    /// The name [`ColumnType::parse`] reads back: [`ColumnType::pg`], with a numeric's scale
    /// (`numeric(2)`).
    pub fn name(self) -> String {
        match self {
            Self::Numeric { scale } => format!("numeric({scale})"),
            other => other.pg().to_owned(),
        }
    }

    /// Reads [`ColumnType::name`].
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(scale) = name
            .strip_prefix("numeric(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            return scale.parse().ok().map(|scale| Self::Numeric { scale });
        }
        [
            Self::Uuid,
            Self::Text,
            Self::Int,
            Self::BigInt,
            Self::Bool,
            Self::Date,
            Self::TimestampTz,
            Self::Timestamp,
        ]
        .into_iter()
        .find(|ty| ty.pg() == name)
    }

    /// The type of a PostgreSQL column as `information_schema.columns` gives it (`udt_name` and
    /// `numeric_scale`), when the pipeline can mirror it: what Debezium's encoding of that
    /// column decodes to. Anything else is described in the error.
    pub fn from_pg(udt_name: &str, numeric_scale: Option<i32>) -> Result<Self, String> {
        Ok(match udt_name {
            "uuid" => Self::Uuid,
            "text" | "varchar" | "bpchar" => Self::Text,
            "int2" | "int4" => Self::Int,
            "int8" => Self::BigInt,
            "bool" => Self::Bool,
            "date" => Self::Date,
            "timestamptz" => Self::TimestampTz,
            "timestamp" => Self::Timestamp,
            "numeric" => match numeric_scale.and_then(|s| u32::try_from(s).ok()) {
                Some(scale) => Self::Numeric { scale },
                None => return Err("numeric without a declared scale".to_owned()),
            },
            other => return Err(other.to_owned()),
        })
    }

    /// Whether a value of type `other` may be stored in a column of this type unchanged: the
    /// same type, a decimal of another scale (Cassandra's decimal keeps any), or an int in a
    /// bigint.
    pub fn holds(self, other: Self) -> bool {
        matches!(
            (self, other),
            (Self::Numeric { .. }, Self::Numeric { .. }) | (Self::BigInt, Self::Int)
        ) || self == other
    }

    /// The CQL type name.
    pub const fn cql(self) -> &'static str {
        match self {
            Self::Uuid => "uuid",
            Self::Text => "text",
            Self::Int => "int",
            Self::BigInt => "bigint",
            Self::Bool => "boolean",
            Self::Date => "date",
            Self::TimestampTz | Self::Timestamp => "timestamp",
            Self::Numeric { .. } => "decimal",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

const fn column(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty }
}

/// A table: its name, its primary key columns (in key order) and every column (keys first, in the
/// order the sinks bind and the verifier reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub key: &'static [&'static str],
    pub columns: &'static [Column],
}

impl Table {
    /// The columns that are not part of the primary key, in order.
    pub fn values(&self) -> impl Iterator<Item = &'static Column> + '_ {
        self.columns.iter().filter(|c| !self.key.contains(&c.name))
    }

    /// The key columns, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &'static Column> + '_ {
        self.key.iter().filter_map(|name| self.column(name))
    }

    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Where `name` is in [`Table::columns`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Every column name, comma-separated, in order: for statement text.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `users` in PostgreSQL and Cassandra.
pub const USERS: Table = Table {
    name: "users",
    key: &["id"],
    columns: &[
        column("id", ColumnType::Uuid),
        column("name", ColumnType::Text),
        column("email", ColumnType::Text),
        column("created_at", ColumnType::TimestampTz),
        column("updated_at", ColumnType::TimestampTz),
        column("deleted_at", ColumnType::TimestampTz),
        column("version", ColumnType::BigInt),
    ],
};

/// The columns of an order besides its keys, shared by `orders` and `orders_by_user`.
const ORDER_VALUES: [Column; 9] = [
    column("product", ColumnType::Text),
    column("quantity", ColumnType::Int),
    column("amount", ColumnType::Numeric { scale: 2 }),
    column("status", ColumnType::Text),
    column("order_date", ColumnType::Date),
    column("created_at", ColumnType::TimestampTz),
    column("updated_at", ColumnType::TimestampTz),
    column("deleted_at", ColumnType::TimestampTz),
    column("version", ColumnType::BigInt),
];

/// Two uuid columns followed by [`ORDER_VALUES`].
const fn order_columns(first: &'static str, second: &'static str) -> [Column; 11] {
    let mut columns = [column(first, ColumnType::Uuid); 11];
    columns[1] = column(second, ColumnType::Uuid);
    let mut i = 0;
    while i < ORDER_VALUES.len() {
        columns[i + 2] = ORDER_VALUES[i];
        i += 1;
    }
    columns
}

const ORDERS_COLUMNS: [Column; 11] = order_columns("id", "user_id");
const ORDERS_BY_USER_COLUMNS: [Column; 11] = order_columns("user_id", "order_id");

/// `orders` in PostgreSQL and Cassandra.
pub const ORDERS: Table = Table {
    name: "orders",
    key: &["id"],
    columns: &ORDERS_COLUMNS,
};

/// Cassandra's `orders_by_user`: an `orders` row keyed by `(user_id, order_id)`, where `order_id`
/// is the order's `id`; its other columns are [`ORDERS`]'s, in the same order.
pub const ORDERS_BY_USER: Table = Table {
    name: "orders_by_user",
    key: &["user_id", "order_id"],
    columns: &ORDERS_BY_USER_COLUMNS,
};

/// The name an `orders` column has in `orders_by_user`.
pub fn orders_by_user_column(orders_column: &str) -> &str {
    if orders_column == "id" {
        "order_id"
    } else {
        orders_column
    }
}

/// For each column of `orders_by_user`, where it is in an `orders` row.
pub fn orders_by_user_positions() -> impl Iterator<Item = Option<usize>> {
    ORDERS_BY_USER.columns.iter().map(|column| {
        ORDERS
            .columns
            .iter()
            .position(|c| orders_by_user_column(c.name) == column.name)
    })
}

/// An `orders` row (every column, in order) as the `orders_by_user` row it implies.
pub fn orders_by_user_row<T: Clone>(orders_row: &[T], missing: impl Fn() -> T) -> Vec<T> {
    orders_by_user_positions()
        .map(|at| {
            at.and_then(|at| orders_row.get(at).cloned())
                .unwrap_or_else(&missing)
        })
        .collect()
}

/// The captured table a mirrored table is filled from (`orders` for `orders_by_user`).
pub fn source_of(mirrored: &'static Table) -> &'static Table {
    if mirrored.name == ORDERS_BY_USER.name {
        &ORDERS
    } else {
        mirrored
    }
}

/// The mirrored tables the captured `table` fills (`orders` and `orders_by_user` for `orders`).
pub fn mirrors_of(table: &Table) -> impl Iterator<Item = &'static Table> + '_ {
    MIRRORED
        .into_iter()
        .filter(move |mirrored| source_of(mirrored).name == table.name)
}

/// The captured table a mirrored table of this name is filled from (its own name if not
/// mirrored).
pub fn source_of_name(mirrored: &str) -> &str {
    MIRRORED
        .into_iter()
        .find(|t| t.name == mirrored)
        .map_or(mirrored, |t| source_of(t).name)
}

/// The tables PostgreSQL has and Debezium captures.
pub const CAPTURED: [&Table; 2] = [&USERS, &ORDERS];

/// The tables Cassandra mirrors them in.
pub const MIRRORED: [&Table; 3] = [&USERS, &ORDERS, &ORDERS_BY_USER];

/// A captured table by name.
pub fn captured(name: &str) -> Option<&'static Table> {
    CAPTURED.into_iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name type` pairs of a `CREATE TABLE` statement for `table` in a schema file (constraints
    /// and key clauses skipped), lower-cased, spaces inside a type removed (`numeric(12,2)`).
    fn declared(schema: &str, table: &str) -> Vec<(String, String)> {
        let lower = schema.to_lowercase().replace(", ", ",");
        let start = lower
            .find(&format!("{table} ("))
            .unwrap_or_else(|| panic!("no table {table}"));
        let body = &lower[start + table.len() + 2..];
        let body = &body[..body.find(");").unwrap_or(body.len())];
        body.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("primary key"))
            .filter(|line| !line.starts_with("check") && !line.starts_with("--"))
            .filter(|line| !line.starts_with(')'))
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?.to_owned();
                let ty = words.next()?.trim_end_matches(',').to_owned();
                Some((name, ty))
            })
            .collect()
    }

    #[test]
    fn postgres_schema_matches_the_description() {
        let schema = include_str!("../../../postgres-schema.sql");
        for table in CAPTURED {
            let found = declared(schema, table.name);
            let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
            let expected: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
            assert_eq!(names, expected, "{}", table.name);
            for (column, (_, ty)) in table.columns.iter().zip(&found) {
                let matches = match column.ty {
                    ColumnType::Int => ty == "integer",
                    ColumnType::BigInt => ty == "bigint",
                    ColumnType::Numeric { scale } => {
                        ty.starts_with("numeric(") && ty.ends_with(&format!(",{scale})"))
                    }
                    other => ty == other.pg(),
                };
                assert!(
                    matches,
                    "{}.{}: {ty} against {:?}",
                    table.name, column.name, column.ty
                );
            }
        }
    }

    #[test]
    fn cassandra_schema_matches_the_description() {
        let schema = include_str!("../../../cassandra-schema.cql");
        for table in MIRRORED {
            let expected: Vec<(String, String)> = table
                .columns
                .iter()
                .map(|c| (c.name.to_owned(), c.ty.cql().to_owned()))
                .collect();
            let found = declared(schema, &format!("cdc_keyspace.{}", table.name));
            assert_eq!(found, expected, "{}", table.name);
        }
    }

    #[test]
    fn type_names_read_back() {
        for ty in [
            ColumnType::Uuid,
            ColumnType::Text,
            ColumnType::Int,
            ColumnType::BigInt,
            ColumnType::Bool,
            ColumnType::Date,
            ColumnType::TimestampTz,
            ColumnType::Timestamp,
            ColumnType::Numeric { scale: 0 },
            ColumnType::Numeric { scale: 2 },
        ] {
            assert_eq!(ColumnType::parse(&ty.name()), Some(ty), "{ty:?}");
        }
        assert_eq!(ColumnType::parse("jsonb"), None);
        assert_eq!(ColumnType::parse("numeric(x)"), None);
        assert_eq!(
            ColumnType::from_pg("numeric", Some(2)),
            Ok(ColumnType::Numeric { scale: 2 })
        );
        assert!(ColumnType::from_pg("numeric", None).is_err());
        assert_eq!(ColumnType::from_pg("varchar", None), Ok(ColumnType::Text));
        assert_eq!(ColumnType::from_pg("jsonb", None), Err("jsonb".to_owned()));
        assert!(ColumnType::BigInt.holds(ColumnType::Int));
        assert!(!ColumnType::Int.holds(ColumnType::BigInt));
        assert!(ColumnType::Numeric { scale: 2 }.holds(ColumnType::Numeric { scale: 3 }));
        assert!(!ColumnType::Text.holds(ColumnType::Uuid));
    }

    #[test]
    fn orders_by_user_holds_the_orders_columns() {
        let renamed: Vec<(&str, ColumnType)> = ORDERS
            .columns
            .iter()
            .map(|c| (orders_by_user_column(c.name), c.ty))
            .collect();
        for (name, ty) in renamed {
            assert_eq!(
                ORDERS_BY_USER.column(name).map(|c| c.ty),
                Some(ty),
                "{name}"
            );
        }
        assert_eq!(ORDERS_BY_USER.columns.len(), ORDERS.columns.len());
        assert_eq!(
            USERS.values().map(|c| c.name).collect::<Vec<_>>(),
            [
                "name",
                "email",
                "created_at",
                "updated_at",
                "deleted_at",
                "version"
            ]
        );
        assert_eq!(
            ORDERS_BY_USER.keys().map(|c| c.name).collect::<Vec<_>>(),
            ["user_id", "order_id"]
        );
    }
}
