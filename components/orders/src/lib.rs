//! The orders service: place orders, read and list them, and move them
//! through their life cycle.
//!
//! An order and its items are written in one transaction. Status changes
//! follow pending -> paid -> shipped -> delivered, and pending|paid ->
//! cancelled; anything else is a conflict.

use corral_sdk::db::{self, Row};
use corral_sdk::http::{Fields, Page, page, parse_id};
use corral_sdk::{Problem, Request, Response, Service};
use serde::Serialize;
use serde_json::{Value, json};

struct Orders;

corral_sdk::export_service!(Orders);

/// Schema steps, only ever appended; see `db::migrate`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE orders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
        total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    )",
    "CREATE TABLE order_items (
        order_id INTEGER NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
        line INTEGER NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity >= 1),
        unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
        PRIMARY KEY (order_id, line)
    ) WITHOUT ROWID",
    "CREATE INDEX orders_by_user ON orders (user_id, id)",
];

const STATUSES: &[&str] = &["pending", "paid", "shipped", "delivered", "cancelled"];
const MAX_ITEMS: usize = 100;
const MAX_SKU_CHARS: usize = 64;

#[derive(Serialize)]
struct Order {
    id: i64,
    user_id: i64,
    status: String,
    items: Vec<Item>,
    total_cents: i64,
    created_at: String,
}

#[derive(Serialize)]
struct Item {
    sku: String,
    quantity: i64,
    unit_price_cents: i64,
}

const ORDER_COLUMNS: &str = "id, user_id, status, total_cents, created_at";

impl Order {
    /// An order from a row of `ORDER_COLUMNS`, with its items still empty.
    fn from_row(row: &Row) -> Result<Self, db::Error> {
        Ok(Order {
            id: row.get(0)?,
            user_id: row.get(1)?,
            status: row.get(2)?,
            total_cents: row.get(3)?,
            created_at: row.get(4)?,
            items: Vec::new(),
        })
    }
}

impl Service for Orders {
    fn init() -> Result<(), String> {
        db::migrate(MIGRATIONS).map_err(|e| e.to_string())
    }

    fn handle(req: Request) -> Result<Response, Problem> {
        match req.segments().as_slice() {
            ["orders"] => match req.method() {
                "GET" | "HEAD" => list(&req),
                "POST" => create(&req),
                other => Err(Problem::method_not_allowed(other, &["GET", "POST"])),
            },
            ["orders", id] => {
                let id = parse_id(id, "order")?;
                match req.method() {
                    "GET" | "HEAD" => get(id, &req),
                    "PATCH" => update_status(id, &req),
                    other => Err(Problem::method_not_allowed(other, &["GET", "PATCH"])),
                }
            }
            _ => Err(Problem::not_found(format!("no resource at {}", req.path()))),
        }
    }
}

/// Whether an order may move from one status to another.
fn transition_allowed(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("pending", "paid") | ("paid", "shipped") | ("shipped", "delivered") | ("pending" | "paid", "cancelled")
    )
}

fn create(req: &Request) -> Result<Response, Problem> {
    let mut fields = req.json_object()?;
    let user_id = fields.integer("user_id", true, 1, i64::MAX);
    let items = fields
        .array("items", true)
        .map(|items| validate_items(&mut fields, items));
    fields.finish()?;
    let (Some(user_id), Some(Some((items, total_cents)))) = (user_id, items) else {
        unreachable!("finish reports missing or invalid fields");
    };
    user_directory::check_user(user_id)?;

    let order = db::transaction(|| -> Result<Order, db::Error> {
        let row = db::query_row(
            &format!("INSERT INTO orders (user_id, total_cents) VALUES (?, ?) RETURNING {ORDER_COLUMNS}"),
            &[user_id.into(), total_cents.into()],
        )?;
        let mut order = Order::from_row(&row)?;
        for (line, item) in items.into_iter().enumerate() {
            db::execute(
                "INSERT INTO order_items (order_id, line, sku, quantity, unit_price_cents)
                 VALUES (?, ?, ?, ?, ?)",
                &[
                    order.id.into(),
                    (line as i64).into(),
                    item.sku.as_str().into(),
                    item.quantity.into(),
                    item.unit_price_cents.into(),
                ],
            )?;
            order.items.push(item);
        }
        Ok(order)
    })?;
    Ok(Response::json(201, &order).header("location", format!("/orders/{}", order.id)))
}

/// Validates the items of a new order and computes the total; `None` when
/// any item is wrong (the errors are in `fields`).
fn validate_items(fields: &mut Fields, raw: Vec<Value>) -> Option<(Vec<Item>, i64)> {
    if raw.is_empty() {
        fields.error("items", "must contain at least one item");
        return None;
    }
    if raw.len() > MAX_ITEMS {
        fields.error("items", format!("must contain at most {MAX_ITEMS} items"));
        return None;
    }
    let mut items = Vec::with_capacity(raw.len());
    for (index, value) in raw.into_iter().enumerate() {
        let Some(mut item) = fields.nested(&format!("items[{index}]"), value) else {
            continue;
        };
        let sku = item.string("sku", true);
        if let Some(sku) = &sku
            && (sku.trim().is_empty() || sku.chars().count() > MAX_SKU_CHARS)
        {
            item.error("sku", format!("must be 1 to {MAX_SKU_CHARS} characters"));
        }
        let quantity = item.integer("quantity", true, 1, i64::MAX);
        let unit_price_cents = item.integer("unit_price_cents", true, 0, i64::MAX);
        fields.absorb(item);
        if let (Some(sku), Some(quantity), Some(unit_price_cents)) = (sku, quantity, unit_price_cents) {
            items.push(Item {
                sku,
                quantity,
                unit_price_cents,
            });
        }
    }
    let total = items.iter().try_fold(0i64, |total, item| {
        item.quantity
            .checked_mul(item.unit_price_cents)
            .and_then(|line| total.checked_add(line))
    });
    match total {
        Some(total) => Some((items, total)),
        None => {
            fields.error("items", "the order total is too large");
            None
        }
    }
}

/// An order; with `?expand=user`, its user too, from the users service.
fn get(id: i64, req: &Request) -> Result<Response, Problem> {
    let order = load(id)?;
    match req.query("expand").as_deref() {
        None => Ok(Response::json(200, &order)),
        Some("user") => {
            let user = user_directory::find_user(order.user_id)?
                .map(|u| json!({ "id": u.id, "name": u.name, "email": u.email }));
            let mut body = serde_json::to_value(&order).map_err(|e| Problem::internal(e.to_string()))?;
            body["user"] = user.unwrap_or(Value::Null);
            Ok(Response::json(200, &body))
        }
        Some(other) => Err(Problem::validation(vec![corral_sdk::FieldError {
            field: "expand".into(),
            message: format!("{other:?} cannot be expanded; only \"user\" can"),
        }])),
    }
}

fn load(id: i64) -> Result<Order, Problem> {
    let row = db::optional_row(
        &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?"),
        &[id.into()],
    )?
    .ok_or_else(|| not_found(id))?;
    let mut orders = vec![Order::from_row(&row)?];
    attach_items(&mut orders)?;
    Ok(orders.remove(0))
}

fn list(req: &Request) -> Result<Response, Problem> {
    let (limit, after) = page(req, 20, 100)?;
    let user_id = match req.query("user_id") {
        None => None,
        Some(raw) => Some(raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
            Problem::validation(vec![corral_sdk::FieldError {
                field: "user_id".into(),
                message: "must be a positive integer".into(),
            }])
        })?),
    };
    // One row more than the page tells whether there is a next page.
    let rows = db::execute(
        &format!(
            "SELECT {ORDER_COLUMNS} FROM orders
             WHERE id > ? AND (?2 IS NULL OR user_id = ?2) ORDER BY id LIMIT ?3"
        ),
        &[after.into(), user_id.into(), (limit + 1).into()],
    )?
    .rows;
    let orders = rows.iter().map(Order::from_row).collect::<Result<Vec<_>, _>>()?;
    let mut page = Page::new(orders, limit, |o| o.id);
    attach_items(&mut page.items)?;
    Ok(Response::json(200, &page))
}

/// Loads the items of the given orders with one query.
fn attach_items(orders: &mut [Order]) -> Result<(), db::Error> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = orders.iter().map(|o| o.id).collect();
    let rows = db::execute(
        "SELECT order_id, sku, quantity, unit_price_cents FROM order_items
         WHERE order_id IN (SELECT value FROM json_each(?)) ORDER BY order_id, line",
        &[json!(ids).to_string().into()],
    )?
    .rows;
    for row in rows {
        let order_id: i64 = row.get(0)?;
        if let Some(order) = orders.iter_mut().find(|o| o.id == order_id) {
            order.items.push(Item {
                sku: row.get(1)?,
                quantity: row.get(2)?,
                unit_price_cents: row.get(3)?,
            });
        }
    }
    Ok(())
}

fn update_status(id: i64, req: &Request) -> Result<Response, Problem> {
    let mut fields = req.json_object()?;
    let status = fields.string("status", true);
    if let Some(status) = &status
        && !STATUSES.contains(&status.as_str())
    {
        fields.error("status", format!("must be one of {}", STATUSES.join(", ")));
    }
    fields.finish()?;
    let Some(status) = status else {
        unreachable!("finish reports a missing status");
    };
    let order = db::transaction(|| -> Result<Order, Problem> {
        let current: String = db::optional_row("SELECT status FROM orders WHERE id = ?", &[id.into()])?
            .ok_or_else(|| not_found(id))?
            .get(0)?;
        if !transition_allowed(&current, &status) {
            return Err(Problem::conflict(format!(
                "cannot change the status of order {id} from {current} to {status}"
            ))
            .with("current_status", current.into()));
        }
        db::execute(
            "UPDATE orders SET status = ? WHERE id = ?",
            &[status.as_str().into(), id.into()],
        )?;
        load(id)
    })?;
    Ok(Response::json(200, &order))
}

fn not_found(id: i64) -> Problem {
    Problem::not_found(format!("no order with id {id}"))
}

/// Where orders learn about users: `corral:shop/users`, which the host
/// connects to the users service.
mod user_directory {
    use corral_sdk::{FieldError, Problem};

    #[allow(unsafe_code, clippy::all)]
    mod shop {
        wit_bindgen::generate!({
            inline: "package corral:orders-service; world users-client { import corral:shop/users@0.1.0; }",
            generate_all,
            path: "../../wit",
        });
    }

    use shop::corral::shop::users::{self, Error, User};

    /// The user, or the problem to answer with: 422 naming `user_id` when
    /// there is none, 503 when the users service cannot say.
    pub fn find_user(user_id: i64) -> Result<Option<User>, Problem> {
        match users::get_user(user_id as u64) {
            Ok(user) => Ok(user),
            Err(Error::Unavailable(reason)) => Err(Problem::new(
                503,
                "dependency-unavailable",
                "A service this one needs is unavailable",
                format!("the users service did not answer: {reason}"),
            )
            .header("retry-after", "1")),
        }
    }

    /// Refuses an order for a user that does not exist.
    pub fn check_user(user_id: i64) -> Result<(), Problem> {
        match find_user(user_id)? {
            Some(_) => Ok(()),
            None => Err(Problem::new(
                422,
                "unknown-user",
                "Unknown user",
                format!("no user with id {user_id}"),
            )
            .with(
                "errors",
                serde_json::json!([FieldError {
                    field: "user_id".into(),
                    message: format!("no user with id {user_id}")
                }]),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{STATUSES, transition_allowed};

    #[test]
    fn transitions() {
        let allowed: Vec<(&str, &str)> = STATUSES
            .iter()
            .flat_map(|from| STATUSES.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| transition_allowed(from, to))
            .collect();
        assert_eq!(
            allowed,
            [
                ("pending", "paid"),
                ("pending", "cancelled"),
                ("paid", "shipped"),
                ("paid", "cancelled"),
                ("shipped", "delivered"),
            ]
        );
    }
}
