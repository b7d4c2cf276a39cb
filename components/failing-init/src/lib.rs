//! A component whose `init` changes the schema and then fails, for tests
//! only: the host must refuse it and leave the database as it was.

use corral_sdk::db;
use corral_sdk::{Problem, Request, Response, Service};

struct FailingInit;

corral_sdk::export_service!(FailingInit);

impl Service for FailingInit {
    fn init() -> Result<(), String> {
        db::execute("CREATE TABLE leftover (x INTEGER)", &[]).map_err(|e| e.to_string())?;
        db::execute("PRAGMA user_version = 99", &[]).map_err(|e| e.to_string())?;
        Err("this version refuses to start".into())
    }

    fn handle(_request: Request) -> Result<Response, Problem> {
        Ok(Response::text(200, "never served"))
    }
}
