//! `corral:service/sqlite` implemented on [`SqliteCtx`].

use std::time::Instant;

use super::{SqliteCtx, SqliteError};
use crate::capabilities::bindings::corral::service::sqlite::{Error, Host, QueryResult, Value};

impl Host for SqliteCtx {
    async fn execute(&mut self, statement: String, parameters: Vec<Value>) -> Result<QueryResult, SqliteError> {
        let started = Instant::now();
        let result = self.run(statement, parameters).await?;
        self.stats.duration.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.stats.ok.inc(),
            Err(_) => self.stats.failed.inc(),
        };
        Ok(result?)
    }

    async fn changes(&mut self) -> wasmtime::Result<u64> {
        Ok(self.changes)
    }

    async fn last_insert_rowid(&mut self) -> wasmtime::Result<i64> {
        Ok(self.last_insert_rowid)
    }

    async fn begin(&mut self) -> Result<(), SqliteError> {
        Ok(self.begin_transaction().await??)
    }

    async fn commit(&mut self) -> Result<(), SqliteError> {
        Ok(self.end_transaction(true).await??)
    }

    async fn rollback(&mut self) -> Result<(), SqliteError> {
        Ok(self.end_transaction(false).await??)
    }

    fn convert_error(&mut self, err: SqliteError) -> wasmtime::Result<Error> {
        match err {
            SqliteError::Guest(e) => Ok(e),
            SqliteError::Trap(e) => Err(e),
        }
    }
}
