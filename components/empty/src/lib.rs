//! The smallest service: 200 with an empty body, no database, no work. It
//! measures what the host itself costs per request. `/empty/sql` adds one
//! database round trip, to measure that alone.

use corral_sdk::{Problem, Request, Response, Service, db};

struct Empty;

corral_sdk::export_service!(Empty);

impl Service for Empty {
    fn handle(request: Request) -> Result<Response, Problem> {
        if request.path() == "/empty/sql" {
            db::execute("SELECT 1", &[])?;
        }
        Ok(Response::empty(200))
    }
}
