//! The users service: create, read, update, delete and list users.
//!
//! Emails are unique without regard to case: each user row keeps the
//! lowercased email in `email_key`, which carries the UNIQUE constraint.
//!
//! Besides HTTP, the service offers `corral:shop/users` to other services.

use corral_sdk::db::{self, Row, SqliteError};
use corral_sdk::http::{Fields, Page, page, parse_id};
use corral_sdk::{Problem, Request, Response, Service};
use serde::Serialize;

struct Users;

corral_sdk::export_service!(Users);

/// `corral:shop/users`, which other components import.
#[allow(unsafe_code, clippy::all)]
mod shop {
    wit_bindgen::generate!({
        inline: "package corral:users-service; world users-api { export corral:shop/users@0.1.0; }",
        path: "../../wit",
    });
}

use shop::exports::corral::shop::users as api;

impl api::Guest for Users {
    fn get_user(id: u64) -> Result<Option<api::User>, api::Error> {
        let unavailable = |e: db::Error| api::Error::Unavailable(e.to_string());
        let Ok(id) = i64::try_from(id) else { return Ok(None) };
        let row = db::optional_row(&format!("SELECT {COLUMNS} FROM users WHERE id = ?"), &[id.into()])
            .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let user = User::from_row(&row).map_err(unavailable)?;
        Ok(Some(api::User {
            id: user.id as u64,
            name: user.name,
            email: user.email,
            created_at: user.created_at,
        }))
    }
}

shop::export!(Users with_types_in shop);

/// Schema steps, only ever appended; see `db::migrate`.
const MIGRATIONS: &[&str] = &["CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    )"];

const COLUMNS: &str = "id, name, email, created_at";
const MAX_NAME_CHARS: usize = 100;
const MAX_EMAIL_CHARS: usize = 254;

#[derive(Serialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    created_at: String,
}

impl User {
    fn from_row(row: &Row) -> Result<Self, db::Error> {
        Ok(User {
            id: row.get(0)?,
            name: row.get(1)?,
            email: row.get(2)?,
            created_at: row.get(3)?,
        })
    }
}

impl Service for Users {
    fn init() -> Result<(), String> {
        db::migrate(MIGRATIONS).map_err(|e| e.to_string())
    }

    fn handle(req: Request) -> Result<Response, Problem> {
        match req.segments().as_slice() {
            ["users"] => match req.method() {
                "GET" | "HEAD" => list(&req),
                "POST" => create(&req),
                other => Err(Problem::method_not_allowed(other, &["GET", "POST"])),
            },
            ["users", id] => {
                let id = parse_id(id, "user")?;
                match req.method() {
                    "GET" | "HEAD" => get(id),
                    "PATCH" => update(id, &req),
                    "DELETE" => delete(id),
                    other => Err(Problem::method_not_allowed(other, &["GET", "PATCH", "DELETE"])),
                }
            }
            _ => Err(Problem::not_found(format!("no resource at {}", req.path()))),
        }
    }
}

fn create(req: &Request) -> Result<Response, Problem> {
    let mut fields = req.json_object()?;
    let name = fields.string("name", true);
    let email = fields.string("email", true);
    validate(&mut fields, name.as_deref(), email.as_deref());
    fields.finish()?;
    let (Some(name), Some(email)) = (name, email) else {
        unreachable!("finish reports missing fields");
    };
    let row = db::query_row(
        &format!("INSERT INTO users (name, email, email_key) VALUES (?, ?, ?) RETURNING {COLUMNS}"),
        &[name.into(), email.as_str().into(), email.to_lowercase().into()],
    )
    .map_err(|e| email_conflict(e, &email))?;
    let user = User::from_row(&row)?;
    Ok(Response::json(201, &user).header("location", format!("/users/{}", user.id)))
}

fn get(id: i64) -> Result<Response, Problem> {
    let row = db::optional_row(&format!("SELECT {COLUMNS} FROM users WHERE id = ?"), &[id.into()])?;
    match row {
        Some(row) => Ok(Response::json(200, &User::from_row(&row)?)),
        None => Err(not_found(id)),
    }
}

fn list(req: &Request) -> Result<Response, Problem> {
    let (limit, after) = page(req, 20, 100)?;
    // One row more than the page tells whether there is a next page.
    let rows = db::execute(
        &format!("SELECT {COLUMNS} FROM users WHERE id > ? ORDER BY id LIMIT ?"),
        &[after.into(), (limit + 1).into()],
    )?
    .rows;
    let users = rows.iter().map(User::from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(Response::json(200, &Page::new(users, limit, |u| u.id)))
}

fn update(id: i64, req: &Request) -> Result<Response, Problem> {
    let mut fields = req.json_object()?;
    let name = fields.string("name", false);
    let email = fields.string("email", false);
    if name.is_none() && email.is_none() {
        fields.error("name", "name or email is required");
    }
    validate(&mut fields, name.as_deref(), email.as_deref());
    fields.finish()?;
    let email_key = email.as_deref().map(str::to_lowercase);
    let row = db::optional_row(
        &format!(
            "UPDATE users SET name = coalesce(?, name), email = coalesce(?, email),
             email_key = coalesce(?, email_key) WHERE id = ? RETURNING {COLUMNS}"
        ),
        &[name.into(), email.clone().into(), email_key.into(), id.into()],
    )
    .map_err(|e| email_conflict(e, email.as_deref().unwrap_or_default()))?;
    match row {
        Some(row) => Ok(Response::json(200, &User::from_row(&row)?)),
        None => Err(not_found(id)),
    }
}

fn delete(id: i64) -> Result<Response, Problem> {
    db::execute("DELETE FROM users WHERE id = ?", &[id.into()])?;
    if db::changes() == 0 {
        return Err(not_found(id));
    }
    Ok(Response::empty(204))
}

fn validate(fields: &mut Fields, name: Option<&str>, email: Option<&str>) {
    if let Some(name) = name {
        if name.trim().is_empty() {
            fields.error("name", "must not be empty");
        } else if name.chars().count() > MAX_NAME_CHARS {
            fields.error("name", format!("must be at most {MAX_NAME_CHARS} characters"));
        }
    }
    if let Some(email) = email
        && !is_valid_email(email)
    {
        fields.error("email", "must be an email address such as ada@example.com");
    }
}

/// A pragmatic check: one `@`, a non-empty local part, a domain of dotted
/// labels, no spaces or control characters, at most 254 characters.
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
    email.chars().count() <= MAX_EMAIL_CHARS
        && !local.is_empty()
        && local.chars().count() <= 64
        && !local.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@')
        && domain.contains('.')
        && domain.split('.').all(label_ok)
}

fn email_conflict(e: db::Error, email: &str) -> Problem {
    match e {
        db::Error::Sqlite(SqliteError::ConstraintViolation(ref message)) if message.contains("users.email_key") => {
            Problem::conflict(format!("a user with email {email} already exists"))
        }
        other => other.into(),
    }
}

fn not_found(id: i64) -> Problem {
    Problem::not_found(format!("no user with id {id}"))
}

#[cfg(test)]
mod tests {
    use super::is_valid_email;

    #[test]
    fn emails() {
        for good in ["ada@example.com", "a.b+c@sub.example.org", "x@b.co", "élise@exemple.fr"] {
            assert!(is_valid_email(good), "{good}");
        }
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a b@example.com",
            "ada@exa mple.com",
            "ada@@example.com",
            "ada@-example.com",
            "ada@example..com",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }
}
