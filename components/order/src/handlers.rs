//! One function per route: each takes the caller's identity and what the route table read
//! from the request, and answers with a response or an [`ApiError`].

use crate::input::NewOrder;
use crate::orders::{self, CANCELLED, Order, PENDING};
use crate::{calls, events};
use agora_sdk::auth::Identity;
use agora_sdk::http::{self, ApiError, Body, Page, Response, StatusCode};
use agora_sdk::log;
use agora_sdk::sql::{self, Timestamp};

/// What a route answers: a response, or an error in agora's shape.
pub type Answer = Result<Response<Body>, ApiError>;

/// `POST /api/orders`: reserve the stock, then store the order (releasing the stock again
/// when that fails).
pub async fn create(identity: &Identity, new: NewOrder) -> Answer {
    let order_id = agora_sdk::events::uuid_v4();
    let (items, total_cents) = calls::reserve(&order_id, &new.items).await?;
    let now = Timestamp::now();
    let order = Order {
        id: order_id.clone(),
        user_id: identity.subject.clone(),
        status: PENDING.to_owned(),
        items,
        total_cents,
        payment_method: new.payment_method,
        created_at: now.to_rfc3339(),
        updated_at: now.to_rfc3339(),
    };
    if let Err(err) = orders::insert(&order, now) {
        // Nothing refers to the reservation: give the stock back before answering.
        if let Err(release_err) = calls::release(&order_id).await {
            log::error(
                "orders",
                &format!(
                    "order {order_id} was not stored and its reservation could not be \
                     released: {release_err}"
                ),
            );
        }
        return Err(ApiError::from(err));
    }
    log::info(
        "orders",
        &format!(
            "order {order_id} placed by {}: {} line(s), {total_cents} cents",
            order.user_id,
            order.items.len()
        ),
    );
    let mut response = http::json(StatusCode::CREATED, &order);
    if let Ok(location) = format!("/api/orders/{order_id}").parse() {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

/// `GET /api/orders`: the caller's orders, newest first.
pub fn list(identity: &Identity, page: Page) -> Answer {
    let (orders, total) = orders::of_user(&identity.subject, &page).map_err(ApiError::from)?;
    Ok(http::json(StatusCode::OK, &page.list(&orders, total)))
}

/// `GET /api/orders/{id}`: to its owner or an ADMIN.
pub fn get(identity: &Identity, id: &str) -> Answer {
    let order = orders::load(id)
        .map_err(ApiError::from)?
        .filter(|order| order.user_id == identity.subject || identity.has_role("ADMIN"))
        .ok_or_else(|| not_found(id))?;
    Ok(http::json(StatusCode::OK, &order))
}

/// `POST /api/orders/{id}/cancel`: owner only, only while `PENDING`; the stock is released
/// before the commit.
pub async fn cancel(identity: &Identity, id: &str) -> Answer {
    if !http::is_uuid(id) {
        return Err(not_found(id));
    }
    let tx = sql::begin().map_err(ApiError::from)?;
    let Some(mut order) = orders::load_in(&tx, id).map_err(ApiError::from)? else {
        return Err(not_found(id));
    };
    if order.user_id != identity.subject {
        return Err(if identity.has_role("ADMIN") {
            ApiError::forbidden(format!("only the owner may cancel order {id}"))
        } else {
            not_found(id)
        });
    }
    let now = Timestamp::now();
    let changed = order.status == PENDING
        && orders::leave_pending(&tx, id, CANCELLED, now)
            .map_err(ApiError::from)?
            .is_some();
    if !changed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!(
                "order {id} is {}: only a PENDING order can be cancelled",
                order.status
            ),
        ));
    }
    tx.publish_event(&events::order_cancelled(id, &order.user_id))
        .map_err(ApiError::from)?;
    // Released before the commit: if the catalog fails, dropping `tx` rolls the cancel back
    // and the order keeps its stock, consistently.
    calls::release(&order.id).await?;
    tx.commit().map_err(ApiError::from)?;
    log::info("orders", &format!("order {id} cancelled, stock released"));
    order.status = CANCELLED.to_owned();
    order.updated_at = now.to_rfc3339();
    Ok(http::json(StatusCode::OK, &order))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no order {id}"))
}
