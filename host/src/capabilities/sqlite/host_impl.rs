//! `corral:service/sqlite` implemented on [`SqliteCtx`].

use std::time::Instant;

use super::{SqliteCtx, SqliteError};
use crate::capabilities::bindings::corral::service::sqlite::{Error, Host, QueryResult, Value};

impl Host for SqliteCtx {
    async fn execute(&mut self, statement: String, parameters: Vec<Value>) -> Result<QueryResult, SqliteError> {
        let started = Instant::now();
        let result = match self.try_read_inline(&statement, &parameters) {
            Some(result) => result,
            None => {
                self.with_conn(move |conn| conn.execute(&statement, &parameters))
                    .await?
            }
        };
        self.stats.duration.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.stats.ok.inc(),
            Err(_) => self.stats.failed.inc(),
        };
        Ok(result?)
    }

    async fn changes(&mut self) -> wasmtime::Result<u64> {
        Ok(self.conn.as_ref().map_or(0, |conn| conn.changes()))
    }

    async fn last_insert_rowid(&mut self) -> wasmtime::Result<i64> {
        Ok(self.conn.as_ref().map_or(0, |conn| conn.last_insert_rowid()))
    }

    async fn begin(&mut self) -> Result<(), SqliteError> {
        Ok(self.with_conn(|conn| conn.begin()).await??)
    }

    async fn commit(&mut self) -> Result<(), SqliteError> {
        Ok(self.with_conn(|conn| conn.commit()).await??)
    }

    async fn rollback(&mut self) -> Result<(), SqliteError> {
        Ok(self.with_conn(|conn| conn.rollback()).await??)
    }

    fn convert_error(&mut self, err: SqliteError) -> wasmtime::Result<Error> {
        match err {
            SqliteError::Guest(e) => Ok(e),
            SqliteError::Trap(e) => Err(e),
        }
    }
}
