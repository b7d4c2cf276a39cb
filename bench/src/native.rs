//! The native baseline: the users and orders endpoints the benchmark uses,
//! written directly on hyper and rusqlite with the same schema, JSON and
//! SQLite settings as the components, so that corral can be measured
//! against what the same service costs without wasm.
//!
//! `native-baseline <listen address> <data folder>`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The same schema steps as the users and orders components.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE IF NOT EXISTS orders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
        total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE IF NOT EXISTS order_items (
        order_id INTEGER NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
        line INTEGER NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity >= 1),
        unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
        PRIMARY KEY (order_id, line)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, id);
";

/// A file per service, as corral has, each with its pool of connections.
struct Db {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Db {
    fn open(path: PathBuf) -> anyhow::Result<Arc<Db>> {
        let db = Arc::new(Db {
            path,
            idle: Mutex::new(Vec::new()),
        });
        let conn = db.connect()?;
        conn.execute_batch(SCHEMA)?;
        db.idle.lock().unwrap().push(conn);
        Ok(db)
    }

    /// The same settings corral gives every component's database.
    fn connect(&self) -> rusqlite::Result<Connection> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags_and_vfs(&self.path, flags, c"unix-excl")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        Ok(conn)
    }

    /// Runs `work` on a pooled connection on a blocking thread.
    async fn with<R: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let taken = db.idle.lock().unwrap().pop();
            let mut conn = match taken {
                Some(conn) => conn,
                None => db.connect()?,
            };
            let out = work(&mut conn);
            db.idle.lock().unwrap().push(conn);
            Ok(out?)
        })
        .await?
    }
}

struct App {
    users: Arc<Db>,
    orders: Arc<Db>,
}

#[derive(Serialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    created_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    email: String,
}

#[derive(Serialize)]
struct Order {
    id: i64,
    user_id: i64,
    status: String,
    items: Vec<Item>,
    total_cents: i64,
    created_at: String,
}

impl Order {
    /// An order from `id, user_id, status, total_cents, created_at`, its items still empty.
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
        Ok(Order {
            id: r.get(0)?,
            user_id: r.get(1)?,
            status: r.get(2)?,
            total_cents: r.get(3)?,
            created_at: r.get(4)?,
            items: Vec::new(),
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    sku: String,
    quantity: i64,
    unit_price_cents: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    user_id: i64,
    items: Vec<Item>,
}

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: &impl Serialize) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

fn problem(status: StatusCode, kind: &str, detail: &str) -> Reply {
    let body = json!({ "type": format!("urn:corral:problem:{kind}"), "title": kind, "status": status.as_u16(), "detail": detail });
    let mut response = json_reply(status, &body);
    response
        .headers_mut()
        .insert("content-type", "application/problem+json".parse().unwrap());
    response
}

/// The same email check as the users component.
fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    email.chars().count() <= 254
        && !local.is_empty()
        && local.chars().count() <= 64
        && !local.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@')
        && domain.contains('.')
        && domain.split('.').all(label_ok)
}

impl App {
    async fn handle(&self, request: Request<Incoming>) -> anyhow::Result<Reply> {
        let path = request.uri().path().to_string();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let method = request.method().clone();
        let id = |s: &str| s.parse::<i64>().ok().filter(|id| *id > 0);
        match (method, segments.as_slice()) {
            (Method::GET, ["users", raw]) => match id(raw) {
                Some(id) => self.get_user(id).await,
                None => Ok(problem(StatusCode::NOT_FOUND, "not-found", "no such user")),
            },
            (Method::POST, ["users"]) => {
                let body = request.into_body().collect().await?.to_bytes();
                self.create_user(&body).await
            }
            (Method::GET, ["orders", raw]) => match id(raw) {
                Some(id) => self.get_order(id).await,
                None => Ok(problem(StatusCode::NOT_FOUND, "not-found", "no such order")),
            },
            (Method::POST, ["orders"]) => {
                let body = request.into_body().collect().await?.to_bytes();
                self.create_order(&body).await
            }
            _ => Ok(problem(StatusCode::NOT_FOUND, "not-found", "no such resource")),
        }
    }

    async fn get_user(&self, id: i64) -> anyhow::Result<Reply> {
        let user = self
            .users
            .with(move |conn| {
                conn.prepare_cached("SELECT id, name, email, created_at FROM users WHERE id = ?")?
                    .query_row([id], |r| {
                        Ok(User {
                            id: r.get(0)?,
                            name: r.get(1)?,
                            email: r.get(2)?,
                            created_at: r.get(3)?,
                        })
                    })
                    .optional()
            })
            .await?;
        Ok(match user {
            Some(user) => json_reply(StatusCode::OK, &user),
            None => problem(StatusCode::NOT_FOUND, "not-found", &format!("no user with id {id}")),
        })
    }

    async fn create_user(&self, body: &[u8]) -> anyhow::Result<Reply> {
        let new: NewUser = match serde_json::from_slice(body) {
            Ok(new) => new,
            Err(e) => return Ok(problem(StatusCode::BAD_REQUEST, "malformed-json", &e.to_string())),
        };
        if new.name.trim().is_empty() || new.name.chars().count() > 100 || !is_valid_email(&new.email) {
            return Ok(problem(StatusCode::BAD_REQUEST, "validation", "invalid name or email"));
        }
        let result =
            self.users
                .with(move |conn| {
                    conn.prepare_cached(
                    "INSERT INTO users (name, email, email_key) VALUES (?, ?, ?) RETURNING id, name, email, created_at",
                )?
                .query_row((&new.name, &new.email, new.email.to_lowercase()), |r| {
                    Ok(User { id: r.get(0)?, name: r.get(1)?, email: r.get(2)?, created_at: r.get(3)? })
                })
                .map(Some)
                .or_else(|e| match e.sqlite_error_code() {
                    Some(rusqlite::ErrorCode::ConstraintViolation) => Ok(None),
                    _ => Err(e),
                })
                })
                .await?;
        Ok(match result {
            Some(user) => {
                let location = format!("/users/{}", user.id);
                let mut response = json_reply(StatusCode::CREATED, &user);
                response.headers_mut().insert("location", location.parse().unwrap());
                response
            }
            None => problem(
                StatusCode::CONFLICT,
                "conflict",
                "a user with this email already exists",
            ),
        })
    }

    async fn get_order(&self, id: i64) -> anyhow::Result<Reply> {
        let order = self
            .orders
            .with(move |conn| {
                let Some(mut order) = conn
                    .prepare_cached("SELECT id, user_id, status, total_cents, created_at FROM orders WHERE id = ?")?
                    .query_row([id], Order::from_row)
                    .optional()?
                else {
                    return Ok(None);
                };
                let mut items = conn.prepare_cached(
                    "SELECT sku, quantity, unit_price_cents FROM order_items WHERE order_id = ? ORDER BY line",
                )?;
                order.items = items
                    .query_map([id], |r| {
                        Ok(Item {
                            sku: r.get(0)?,
                            quantity: r.get(1)?,
                            unit_price_cents: r.get(2)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(Some(order))
            })
            .await?;
        Ok(match order {
            Some(order) => json_reply(StatusCode::OK, &order),
            None => problem(StatusCode::NOT_FOUND, "not-found", &format!("no order with id {id}")),
        })
    }

    async fn create_order(&self, body: &[u8]) -> anyhow::Result<Reply> {
        let new: NewOrder = match serde_json::from_slice(body) {
            Ok(new) => new,
            Err(e) => return Ok(problem(StatusCode::BAD_REQUEST, "malformed-json", &e.to_string())),
        };
        let total = new
            .items
            .iter()
            .try_fold(0i64, |t, i| i.quantity.checked_mul(i.unit_price_cents)?.checked_add(t));
        let Some(total) = total.filter(|_| !new.items.is_empty()) else {
            return Ok(problem(StatusCode::BAD_REQUEST, "validation", "invalid items"));
        };
        let order = self
            .orders
            .with(move |conn| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut order = tx
                    .prepare_cached(
                        "INSERT INTO orders (user_id, total_cents) VALUES (?, ?)
                         RETURNING id, user_id, status, total_cents, created_at",
                    )?
                    .query_row((new.user_id, total), Order::from_row)?;
                for (line, item) in new.items.into_iter().enumerate() {
                    tx.prepare_cached(
                        "INSERT INTO order_items (order_id, line, sku, quantity, unit_price_cents) VALUES (?, ?, ?, ?, ?)",
                    )?
                    .execute((order.id, line as i64, &item.sku, item.quantity, item.unit_price_cents))?;
                    order.items.push(item);
                }
                tx.commit()?;
                Ok(order)
            })
            .await?;
        Ok(json_reply(StatusCode::CREATED, &order))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(data)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: native-baseline <listen address> <data folder>");
    };
    let listen: SocketAddr = listen.parse()?;
    let data = Path::new(&data);
    std::fs::create_dir_all(data)?;
    let app = Arc::new(App {
        users: Db::open(data.join("users.sqlite3"))?,
        orders: Db::open(data.join("orders.sqlite3"))?,
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                async move {
                    let reply = app
                        .handle(request)
                        .await
                        .unwrap_or_else(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()));
                    Ok::<_, std::convert::Infallible>(reply)
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
