//! The orders service: place orders, read and list them, and move them
//! through their life cycle.
//!
//! An order and its items are written in one transaction. Status changes
//! follow pending -> paid -> shipped -> delivered, and pending|paid ->
//! cancelled; anything else is a conflict. Every change publishes
//! `orders.status-changed` in its transaction, ordered by order. When
//! `users.deleted` arrives, that user's pending and paid orders are
//! cancelled.

use corral_sdk::{Check, Page, PageQuery, Params, Problem, Request, Response, Route, Service, Validate};
use corral_sdk::{Event, Outcome, db, events};
use serde::{Deserialize, Serialize};
use serde_json::json;

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

const ROUTES: &[Route] = &[
    ("GET", "/orders", list),
    ("POST", "/orders", create),
    ("GET", "/orders/{id}", get),
    ("PATCH", "/orders/{id}", update_status),
];

const ORDER_COLUMNS: &str = "id, user_id, status, total_cents, created_at";
const MAX_ITEMS: usize = 100;
const MAX_SKU_CHARS: usize = 64;

#[derive(Serialize, Deserialize)]
struct Order {
    id: i64,
    user_id: i64,
    status: Status,
    #[serde(default)]
    items: Vec<Item>,
    total_cents: i64,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
struct Item {
    sku: String,
    quantity: i64,
    unit_price_cents: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pending,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    /// Whether an order may move from this status to `to`.
    fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Pending, Paid) | (Paid, Shipped) | (Shipped, Delivered) | (Pending | Paid, Cancelled)
        )
    }

    fn as_str(self) -> &'static str {
        ["pending", "paid", "shipped", "delivered", "cancelled"][self as usize]
    }
}

#[derive(Deserialize)]
struct NewOrder {
    user_id: i64,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct StatusChange {
    status: Status,
}

impl NewOrder {
    /// The sum of the lines, if it fits in 64 bits.
    fn total_cents(&self) -> Option<i64> {
        self.items.iter().try_fold(0i64, |total, item| {
            item.quantity
                .checked_mul(item.unit_price_cents)
                .and_then(|line| total.checked_add(line))
        })
    }
}

impl Validate for NewOrder {
    fn validate(&self, check: &mut Check) {
        check.that("user_id", self.user_id >= 1, "must be at least 1");
        check.that("items", !self.items.is_empty(), "must contain at least one item");
        check.that(
            "items",
            self.items.len() <= MAX_ITEMS,
            format!("must contain at most {MAX_ITEMS} items"),
        );
        check.each("items", &self.items);
        check.that("items", self.total_cents().is_some(), "the order total is too large");
    }
}

impl Validate for Item {
    fn validate(&self, check: &mut Check) {
        let sku_ok = !self.sku.trim().is_empty() && self.sku.chars().count() <= MAX_SKU_CHARS;
        check.that("sku", sku_ok, format!("must be 1 to {MAX_SKU_CHARS} characters"));
        check.that("quantity", self.quantity >= 1, "must be at least 1");
        check.that("unit_price_cents", self.unit_price_cents >= 0, "must be at least 0");
    }
}

impl Validate for StatusChange {}

impl Service for Orders {
    fn init() -> Result<(), String> {
        db::migrate(MIGRATIONS).map_err(|e| e.to_string())
    }

    fn handle(req: Request) -> Result<Response, Problem> {
        corral_sdk::route(&req, ROUTES)
    }

    fn on_event(event: Event) -> Outcome {
        #[derive(Deserialize)]
        struct Deleted {
            id: i64,
        }
        let user = match (event.topic.as_str(), event.json::<Deleted>()) {
            ("users.deleted", Ok(Deleted { id })) => id,
            (topic, _) => return Outcome::DeadLetter(format!("cannot handle {topic}: {:?}", event.payload)),
        };
        match cancel_orders_of(user) {
            Ok(()) => Outcome::Ack,
            Err(problem) => {
                corral_sdk::log::warn(&format!("cannot cancel the orders of user {user}: {}", problem.detail));
                Outcome::RetryAfter(1000)
            }
        }
    }
}

/// Cancels the user's pending and paid orders; orders already cancelled,
/// or never there, are left as they are, so a second delivery does nothing.
fn cancel_orders_of(user_id: i64) -> Result<(), Problem> {
    #[derive(Deserialize)]
    struct Open {
        id: i64,
        status: Status,
    }
    db::transaction(|| -> Result<(), Problem> {
        let open: Vec<Open> = db::query(
            "SELECT id, status FROM orders WHERE user_id = ? AND status IN ('pending', 'paid')",
            &[user_id.into()],
        )?;
        for order in open {
            set_status(order.id, user_id, order.status, Status::Cancelled)?;
        }
        Ok(())
    })
}

/// Records a status change and publishes it, in the caller's transaction.
fn set_status(id: i64, user_id: i64, from: Status, to: Status) -> Result<(), Problem> {
    db::execute(
        "UPDATE orders SET status = ? WHERE id = ?",
        &[to.as_str().into(), id.into()],
    )?;
    let change = json!({ "order_id": id, "user_id": user_id, "from": from.as_str(), "to": to.as_str() });
    events::publish_with("orders.status-changed", &change, Some(&id.to_string()))?;
    Ok(())
}

fn create(req: &Request, _: &Params) -> Result<Response, Problem> {
    let new: NewOrder = req.json()?;
    let total = new.total_cents().unwrap_or_default();
    user_directory::check_user(new.user_id)?;
    let order = db::transaction(|| -> Result<Order, db::Error> {
        let sql = format!("INSERT INTO orders (user_id, total_cents) VALUES (?, ?) RETURNING {ORDER_COLUMNS}");
        let mut order: Order = db::query_one(&sql, &[new.user_id.into(), total.into()])?;
        for (line, item) in new.items.into_iter().enumerate() {
            db::execute(
                "INSERT INTO order_items (order_id, line, sku, quantity, unit_price_cents) VALUES (?, ?, ?, ?, ?)",
                &[
                    order.id.into(),
                    (line as i64).into(),
                    (&item.sku).into(),
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

/// An order; with `?expand=user`, its user too, from the users service.
fn get(req: &Request, params: &Params) -> Result<Response, Problem> {
    let order = load(params.id("id", "order")?)?;
    match req.query("expand").as_deref() {
        None => Ok(Response::json(200, &order)),
        Some("user") => {
            let user = user_directory::find_user(order.user_id)?;
            let mut body = serde_json::to_value(&order).map_err(|e| Problem::internal(e.to_string()))?;
            body["user"] = json!(user.map(|u| json!({ "id": u.id, "name": u.name, "email": u.email })));
            Ok(Response::json(200, &body))
        }
        Some(other) => Err(Problem::invalid(
            "expand",
            format!("{other:?} cannot be expanded; only \"user\" can"),
        )),
    }
}

fn load(id: i64) -> Result<Order, Problem> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?");
    let order: Order = db::query_optional(&sql, &[id.into()])?.ok_or_else(|| not_found(id))?;
    let mut orders = [order];
    attach_items(&mut orders)?;
    let [order] = orders;
    Ok(order)
}

fn list(req: &Request, _: &Params) -> Result<Response, Problem> {
    let page = PageQuery::of(req, 20, 100)?;
    let user_id = match req.query("user_id") {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| Problem::invalid("user_id", "must be a positive integer"))?,
        ),
    };
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id > ? AND (?2 IS NULL OR user_id = ?2) ORDER BY id LIMIT ?3"
    );
    let orders: Vec<Order> = db::query(&sql, &[page.after.into(), user_id.into(), page.fetch().into()])?;
    let mut page = Page::new(orders, page, |o| o.id);
    attach_items(&mut page.items)?;
    Ok(Response::json(200, &page))
}

/// Loads the items of the given orders with one query.
fn attach_items(orders: &mut [Order]) -> Result<(), db::Error> {
    #[derive(Deserialize)]
    struct Line {
        order_id: i64,
        sku: String,
        quantity: i64,
        unit_price_cents: i64,
    }
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = orders.iter().map(|o| o.id).collect();
    let lines: Vec<Line> = db::query(
        "SELECT order_id, sku, quantity, unit_price_cents FROM order_items
         WHERE order_id IN (SELECT value FROM json_each(?)) ORDER BY order_id, line",
        &[json!(ids).to_string().into()],
    )?;
    for line in lines {
        if let Some(order) = orders.iter_mut().find(|o| o.id == line.order_id) {
            order.items.push(Item {
                sku: line.sku,
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            });
        }
    }
    Ok(())
}

fn update_status(req: &Request, params: &Params) -> Result<Response, Problem> {
    let id = params.id("id", "order")?;
    let StatusChange { status } = req.json()?;
    let order = db::transaction(|| -> Result<Order, Problem> {
        let before = load(id)?;
        let current = before.status;
        if !current.can_become(status) {
            let detail = format!(
                "cannot change the status of order {id} from {} to {}",
                current.as_str(),
                status.as_str()
            );
            return Err(Problem::conflict(detail).with("current_status", current.as_str().into()));
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

    corral_sdk::interfaces!(shop, "corral:shop/users-client@0.1.0");
    use shop::corral::shop::users::{self, Error, User};

    /// The user, or the problem to answer with: 503 when the users service
    /// cannot say.
    pub fn find_user(user_id: i64) -> Result<Option<User>, Problem> {
        users::get_user(user_id as u64).map_err(|Error::Unavailable(reason)| {
            let detail = format!("the users service did not answer: {reason}");
            Problem::new(
                503,
                "dependency-unavailable",
                "A service this one needs is unavailable",
                detail,
            )
            .header("retry-after", "1")
        })
    }

    /// Refuses an order for a user that does not exist: 422 naming `user_id`.
    pub fn check_user(user_id: i64) -> Result<(), Problem> {
        if find_user(user_id)?.is_some() {
            return Ok(());
        }
        let detail = format!("no user with id {user_id}");
        let errors = serde_json::json!([FieldError {
            field: "user_id".into(),
            message: detail.clone()
        }]);
        Err(Problem::new(422, "unknown-user", "Unknown user", detail).with("errors", errors))
    }
}

#[cfg(test)]
mod tests {
    use super::Status::{self, *};

    #[test]
    fn transitions() {
        let all = [Pending, Paid, Shipped, Delivered, Cancelled];
        let allowed: Vec<(Status, Status)> = all
            .iter()
            .flat_map(|from| all.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        assert_eq!(
            allowed,
            [
                (Pending, Paid),
                (Pending, Cancelled),
                (Paid, Shipped),
                (Paid, Cancelled),
                (Shipped, Delivered)
            ]
        );
    }
}
