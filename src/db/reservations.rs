//! The `reservations` table, and a caller's history with the store.

use chrono::{DateTime, Utc};

use super::*;

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Reservation {
    pub id: i64,
    pub store: String,
    pub call_id: Option<String>,
    pub customer_number: String,
    pub car_number: Option<String>,
    pub car_model: Option<String>,
    pub service: Option<String>,
    pub reserved_at: i64,
    pub memo: Option<String>,
    pub created_at: i64,
}

/// What a store knows of one caller (docs/http-api.md, "Customers").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// Calls from this number to the store, before the asked time.
    pub calls: i64,
    /// When the latest of them started.
    pub last_call_at: Option<i64>,
    /// Reservations made for this number.
    pub reservations: i64,
    /// The one with the latest reserved time.
    pub last_reservation: Option<Reservation>,
}

/// The fields of a new reservation.
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub call_id: Option<String>,
    pub customer_number: String,
    pub car_number: Option<String>,
    pub car_model: Option<String>,
    pub service: Option<String>,
    pub reserved_at: DateTime<Utc>,
    pub memo: Option<String>,
}

impl Db {
    pub async fn reservation_add(&self, store: &str, r: &NewReservation) -> Result<Reservation> {
        // To the end: SQLite reports a failed commit only when the
        // statement completes (see `upsert_call`).
        let rows = on_pool!(self, pool => sqlx::query_as::<_, Reservation>(
            "INSERT INTO reservations (store, call_id, customer_number, car_number, car_model, \
                service, reserved_at, memo, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             RETURNING id, store, call_id, customer_number, car_number, car_model, service, \
                reserved_at, memo, created_at",
        )
        .bind(store)
        .bind(r.call_id.as_deref())
        .bind(&r.customer_number)
        .bind(r.car_number.as_deref())
        .bind(r.car_model.as_deref())
        .bind(r.service.as_deref())
        .bind(millis(r.reserved_at))
        .bind(r.memo.as_deref())
        .bind(millis(Utc::now()))
        .fetch_all(pool)
        .await)?;
        rows.into_iter()
            .next()
            .ok_or_else(|| DbError::Sql(sqlx::Error::RowNotFound))
    }

    /// What a store knows of one caller: their calls started before
    /// `before` (how many, and when the latest started) and their latest
    /// reservation.
    pub async fn customer(
        &self,
        store: &str,
        number: &str,
        before: DateTime<Utc>,
    ) -> Result<Customer> {
        let (calls, last_call_at): (i64, Option<i64>) = on_pool!(self, pool => sqlx::query_as(
            "SELECT COUNT(*), MAX(started_at) FROM calls \
             WHERE store = $1 AND caller = $2 AND started_at < $3",
        )
        .bind(store)
        .bind(number)
        .bind(millis(before))
        .fetch_one(pool)
        .await)?;
        let reservations: i64 = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM reservations WHERE store = $1 AND customer_number = $2",
        )
        .bind(store)
        .bind(number)
        .fetch_one(pool)
        .await)?;
        let last_reservation = on_pool!(self, pool => sqlx::query_as::<_, Reservation>(
            "SELECT id, store, call_id, customer_number, car_number, car_model, service, \
                reserved_at, memo, created_at FROM reservations \
             WHERE store = $1 AND customer_number = $2 \
             ORDER BY reserved_at DESC, id DESC LIMIT 1",
        )
        .bind(store)
        .bind(number)
        .fetch_optional(pool)
        .await)?;
        Ok(Customer {
            calls,
            last_call_at,
            reservations,
            last_reservation,
        })
    }

    /// A store's reservations whose time falls in `[from, to)`.
    pub async fn reservations_between(
        &self,
        store: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Reservation>> {
        Ok(on_pool!(self, pool => sqlx::query_as::<_, Reservation>(
            "SELECT id, store, call_id, customer_number, car_number, car_model, service, \
                reserved_at, memo, created_at FROM reservations \
             WHERE store = $1 AND reserved_at >= $2 AND reserved_at < $3 ORDER BY reserved_at, id",
        )
        .bind(store)
        .bind(millis(from))
        .bind(millis(to))
        .fetch_all(pool)
        .await)?)
    }
}
