//! The {{name}} service: create, read, update, delete and list items.

use corral_sdk::{db, Check, Page, PageQuery, Params, Problem, Request, Response, Route, Service, Validate};
use serde::{Deserialize, Serialize};

struct Component;
corral_sdk::export_service!(Component);

/// Schema steps, only ever appended.
const MIGRATIONS: &[&str] =
    &["CREATE TABLE {{table}} (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, done INTEGER NOT NULL)"];

const ROUTES: &[Route] = &[
    ("GET", "/{{name}}", list),
    ("POST", "/{{name}}", create),
    ("GET", "/{{name}}/{id}", get),
    ("PATCH", "/{{name}}/{id}", update),
    ("DELETE", "/{{name}}/{id}", delete),
];

#[derive(Serialize, Deserialize)]
struct Item {
    id: i64,
    title: String,
    done: bool,
}

/// A new item, or a change to one.
#[derive(Deserialize)]
struct Edit {
    title: Option<String>,
    done: Option<bool>,
}

impl Validate for Edit {
    fn validate(&self, check: &mut Check) {
        if let Some(title) = &self.title {
            check.not_blank("title", title).max_chars("title", title, 200);
        }
    }
}

impl Service for Component {
    fn init() -> Result<(), String> {
        db::migrate(MIGRATIONS).map_err(|e| e.to_string())
    }

    fn handle(req: Request) -> Result<Response, Problem> {
        corral_sdk::route(&req, ROUTES)
    }
}

fn create(req: &Request, _: &Params) -> Result<Response, Problem> {
    let Edit { title, done } = req.json()?;
    let title = title.ok_or_else(|| Problem::invalid("title", "is required"))?;
    let sql = "INSERT INTO {{table}} (title, done) VALUES (?, ?) RETURNING *";
    let item: Item = db::query_one(sql, &[title.into(), done.unwrap_or(false).into()])?;
    Ok(Response::json(201, &item).header("location", format!("/{{name}}/{}", item.id)))
}

fn get(_: &Request, params: &Params) -> Result<Response, Problem> {
    let id = params.id("id", "item")?;
    found(id, db::query_optional::<Item>("SELECT * FROM {{table}} WHERE id = ?", &[id.into()])?)
}

fn list(req: &Request, _: &Params) -> Result<Response, Problem> {
    let page = PageQuery::of(req, 20, 100)?;
    let sql = "SELECT * FROM {{table}} WHERE id > ? ORDER BY id LIMIT ?";
    let items: Vec<Item> = db::query(sql, &[page.after.into(), page.fetch().into()])?;
    Ok(Response::json(200, &Page::new(items, page, |i| i.id)))
}

fn update(req: &Request, params: &Params) -> Result<Response, Problem> {
    let id = params.id("id", "item")?;
    let Edit { title, done } = req.json()?;
    let sql = "UPDATE {{table}} SET title = coalesce(?, title), done = coalesce(?, done) WHERE id = ? RETURNING *";
    found(id, db::query_optional::<Item>(sql, &[title.into(), done.into(), id.into()])?)
}

fn delete(_: &Request, params: &Params) -> Result<Response, Problem> {
    let id = params.id("id", "item")?;
    db::execute("DELETE FROM {{table}} WHERE id = ?", &[id.into()])?;
    found(id, (db::changes() > 0).then_some(()))?;
    Ok(Response::empty(204))
}

/// 200 with the item, or 404.
fn found(id: i64, item: Option<impl Serialize>) -> Result<Response, Problem> {
    let item = item.ok_or_else(|| Problem::not_found(format!("no item with id {id}")))?;
    Ok(Response::json(200, &item))
}
