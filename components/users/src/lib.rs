//! The users service: create, read, update, delete and list users, and
//! `corral:shop/users` for other services. Deleting a user publishes
//! `users.deleted` (`{"id": ...}`).
//!
//! Emails are unique without regard to case: each row keeps the lowercased
//! email in `email_key`, which carries the UNIQUE constraint.

use corral_sdk::{Check, Page, PageQuery, Params, Problem, Request, Response, Route, Service, Validate};
use corral_sdk::{db, events};
use serde::{Deserialize, Serialize};

struct Users;

corral_sdk::export_service!(Users);
corral_sdk::interfaces!(shop, "corral:shop/users-provider@0.1.0");
shop::export!(Users with_types_in shop);
use shop::exports::corral::shop::users as api;

/// Schema steps, only ever appended; see `db::migrate`.
const MIGRATIONS: &[&str] = &["CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    )"];

const ROUTES: &[Route] = &[
    ("GET", "/users", list),
    ("POST", "/users", create),
    ("GET", "/users/{id}", get),
    ("PATCH", "/users/{id}", update),
    ("DELETE", "/users/{id}", delete),
];

const COLUMNS: &str = "id, name, email, created_at";

#[derive(Serialize, Deserialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    created_at: String,
}

/// A new user, or (all fields optional) a change to one.
#[derive(Deserialize)]
struct UserInput<T> {
    name: T,
    email: T,
}

type NewUser = UserInput<String>;
type UserPatch = UserInput<Option<String>>;

impl Service for Users {
    fn init() -> Result<(), String> {
        db::migrate(MIGRATIONS).map_err(|e| e.to_string())
    }

    fn handle(req: Request) -> Result<Response, Problem> {
        corral_sdk::route(&req, ROUTES)
    }
}

fn create(req: &Request, _: &Params) -> Result<Response, Problem> {
    let new: NewUser = req.json()?;
    let sql = format!("INSERT INTO users (name, email, email_key) VALUES (?, ?, ?) RETURNING {COLUMNS}");
    let params = [(&new.name).into(), (&new.email).into(), new.email.to_lowercase().into()];
    let user: User = db::query_one(&sql, &params).map_err(|e| email_taken(e, &new.email))?;
    Ok(Response::json(201, &user).header("location", format!("/users/{}", user.id)))
}

fn get(_: &Request, params: &Params) -> Result<Response, Problem> {
    let id = params.id("id", "user")?;
    Ok(Response::json(200, &find(id)?.ok_or_else(|| not_found(id))?))
}

fn list(req: &Request, _: &Params) -> Result<Response, Problem> {
    let page = PageQuery::of(req, 20, 100)?;
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id > ? ORDER BY id LIMIT ?");
    let users: Vec<User> = db::query(&sql, &[page.after.into(), page.fetch().into()])?;
    Ok(Response::json(200, &Page::new(users, page, |u| u.id)))
}

fn update(req: &Request, params: &Params) -> Result<Response, Problem> {
    let id = params.id("id", "user")?;
    let patch: UserPatch = req.json()?;
    let email = patch.email.as_deref();
    let sql = format!(
        "UPDATE users SET name = coalesce(?, name), email = coalesce(?, email),
         email_key = coalesce(?, email_key) WHERE id = ? RETURNING {COLUMNS}"
    );
    let params = [
        patch.name.into(),
        email.into(),
        email.map(str::to_lowercase).into(),
        id.into(),
    ];
    let user: Option<User> =
        db::query_optional(&sql, &params).map_err(|e| email_taken(e, email.unwrap_or_default()))?;
    Ok(Response::json(200, &user.ok_or_else(|| not_found(id))?))
}

/// Deletes the user and publishes `users.deleted` in the same transaction.
fn delete(_: &Request, params: &Params) -> Result<Response, Problem> {
    let id = params.id("id", "user")?;
    db::transaction(|| -> Result<(), Problem> {
        db::execute("DELETE FROM users WHERE id = ?", &[id.into()])?;
        if db::changes() == 0 {
            return Err(not_found(id));
        }
        events::publish("users.deleted", &serde_json::json!({ "id": id }))?;
        Ok(())
    })?;
    Ok(Response::empty(204))
}

fn find(id: i64) -> Result<Option<User>, db::Error> {
    db::query_optional(&format!("SELECT {COLUMNS} FROM users WHERE id = ?"), &[id.into()])
}

impl Validate for NewUser {
    fn validate(&self, check: &mut Check) {
        check_fields(check, Some(&self.name), Some(&self.email));
    }
}

impl Validate for UserPatch {
    fn validate(&self, check: &mut Check) {
        let neither = self.name.is_none() && self.email.is_none();
        check.that("name", !neither, "name or email is required");
        check_fields(check, self.name.as_deref(), self.email.as_deref());
    }
}

fn check_fields(check: &mut Check, name: Option<&str>, email: Option<&str>) {
    if let Some(name) = name {
        check.not_blank("name", name).max_chars("name", name, 100);
    }
    if let Some(email) = email {
        check.email("email", email);
    }
}

fn email_taken(e: db::Error, email: &str) -> Problem {
    match e.is_unique_violation("users.email_key") {
        true => Problem::conflict(format!("a user with email {email} already exists")),
        false => e.into(),
    }
}

fn not_found(id: i64) -> Problem {
    Problem::not_found(format!("no user with id {id}"))
}

impl api::Guest for Users {
    fn get_user(id: u64) -> Result<Option<api::User>, api::Error> {
        let found = i64::try_from(id).ok().map(find).transpose();
        let user = found.map_err(|e| api::Error::Unavailable(e.to_string()))?.flatten();
        Ok(user.map(|u| api::User {
            id: u.id as u64,
            name: u.name,
            email: u.email,
            created_at: u.created_at,
        }))
    }
}
