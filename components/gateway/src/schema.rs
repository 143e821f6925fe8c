//! The GraphQL schema: each resolver calls the component that owns the data, as the end user
//! (see [`crate::backend`]), and maps its JSON error to a GraphQL error whose `extensions` carry
//! the callee's `code` and HTTP `status`. Nullable fields keep the rest of an answer when one
//! call fails (GraphQL's partial results).

use crate::backend::{self, CallError, Caller, Method, Service, encode, with_query};
use async_graphql::{
    ComplexObject, Context, EmptySubscription, ErrorExtensions, ID, InputObject, Json, Object,
    Schema, SimpleObject,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The gateway's schema.
pub type ShopSchema = Schema<Query, Mutation, EmptySubscription>;

/// Deepest selection a query may make (the standard introspection query needs 13).
pub const MAX_DEPTH: usize = 13;
/// Most expensive query accepted: each field costs 1, a list field its `pageSize` (default
/// 20) times its selection, an order's lines [`LINES_ESTIMATE`] times theirs, and
/// `OrderItem.product` (one call to the catalog per line) 5 plus its selection.
pub const MAX_COMPLEXITY: usize = 2_500;
/// Lines counted for an order's `items` (an order may have up to 100).
const LINES_ESTIMATE: usize = 10;
/// The page size the components use when none is given.
const DEFAULT_PAGE_SIZE: usize = 20;

/// The schema with its limits; `caller` (the end user's `Authorization`) goes with each
/// request as data (see [`crate::main`]).
pub fn build() -> ShopSchema {
    Schema::build(Query, Mutation, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(32)
        .limit_directives(16)
        .finish()
}

impl ErrorExtensions for CallError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.message.clone()).extend_with(|_, extensions| {
            extensions.set("code", self.code.clone());
            extensions.set("status", i32::from(self.status));
            if let Some(field) = &self.field {
                extensions.set("field", field.clone());
            }
            if let Some(request_id) = &self.request_id {
                extensions.set("requestId", request_id.clone());
            }
        })
    }
}

/// `call` as the request's caller. A failed call is recorded as a GraphQL error at this
/// field's path (its `extensions` say the callee's `code` and `status`) and the field is null:
/// the other fields of the answer keep their data. (Returning the error instead would make
/// async-graphql leave the field out of `data`, or null the whole `data`.)
async fn fetch<T: for<'de> Deserialize<'de>>(
    ctx: &Context<'_>,
    method: Method,
    service: Service,
    path: &str,
    body: Option<&Value>,
) -> Option<T> {
    let caller = ctx.data_opt::<Caller>().cloned().unwrap_or_default();
    match backend::call(&caller, method, service, path, body).await {
        Ok(value) => Some(value),
        Err(err) => {
            let error = err.extend().into_server_error(ctx.item.pos);
            ctx.add_error(ctx.set_error_path(error));
            None
        }
    }
}

/// The complexity of a paginated list: its page size times its selection.
fn page_complexity(child: usize, page_size: Option<i32>) -> usize {
    let size = page_size
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .clamp(1, 100);
    1 + size.saturating_mul(child)
}

fn page_params(page: Option<i32>, page_size: Option<i32>) -> [(&'static str, Option<String>); 2] {
    [
        ("page", page.map(|page| page.to_string())),
        ("page_size", page_size.map(|size| size.to_string())),
    ]
}

// --- types ----------------------------------------------------------------------------------

/// A shop account.
#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct User {
    pub id: ID,
    pub email: String,
    pub name: String,
    #[serde(default)]
    pub phone: Option<String>,
    /// `USER` or `ADMIN`.
    pub role: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A session: the account and its tokens (send `Authorization: Bearer <accessToken>`).
#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct AuthPayload {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    /// Seconds until the access token expires.
    #[serde(default)]
    pub expires_in: Option<i64>,
    /// Seconds until the refresh token expires.
    #[serde(default)]
    pub refresh_expires_in: Option<i64>,
}

/// A product of the catalog. Money is in integer cents.
#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Product {
    pub id: ID,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub price_cents: i64,
    pub sku: String,
    pub stock: i64,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub category: String,
    pub created_at: String,
    pub updated_at: String,
}

/// An order and its lines.
#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Order {
    pub id: ID,
    pub user_id: ID,
    /// `PENDING`, `PAID`, `PAYMENT_FAILED` or `CANCELLED`.
    pub status: String,
    #[graphql(complexity = "1 + LINES_ESTIMATE * child_complexity")]
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    #[serde(default)]
    pub payment_method: String,
    pub created_at: String,
    pub updated_at: String,
}

/// One line of an order, at the price of the moment it was placed.
#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct OrderItem {
    pub product_id: ID,
    pub name: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

#[ComplexObject]
impl OrderItem {
    /// The product as the catalog has it now (null, with an error, once it is deleted).
    #[graphql(complexity = "5 + child_complexity")]
    async fn product(&self, ctx: &Context<'_>) -> Option<Product> {
        let path = format!("/api/products/{}", encode(&self.product_id));
        fetch(ctx, Method::Get, Service::Catalog, &path, None).await
    }
}

/// A message for the signed-in user about something that happened (a registration, an
/// order, a payment).
#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Notification {
    pub id: ID,
    /// The event it is about (`order.paid`, …).
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    pub kind: String,
    pub title: String,
    pub body: String,
    pub read: bool,
    #[serde(default)]
    pub read_at: Option<String>,
    pub created_at: String,
    /// The event's details.
    #[serde(default)]
    pub data: Json<Value>,
}

/// One page of a list, newest first.
#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(concrete(name = "ProductPage", params(Product)))]
#[graphql(concrete(name = "OrderPage", params(Order)))]
#[graphql(concrete(name = "NotificationPage", params(Notification)))]
pub struct Page<T: async_graphql::OutputType> {
    pub items: Vec<T>,
    /// Items in the whole list.
    pub total: i64,
    pub page: i32,
    pub page_size: i32,
}

/// A new product.
#[derive(Debug, Clone, Serialize, InputObject)]
pub struct ProductInput {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub price_cents: i64,
    pub sku: String,
    pub stock: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// One line of a new order.
#[derive(Debug, Clone, Serialize, InputObject)]
pub struct OrderItemInput {
    pub product_id: ID,
    pub quantity: i64,
}

// --- queries --------------------------------------------------------------------------------

pub struct Query;

#[Object]
impl Query {
    /// The signed-in user (needs a bearer token).
    async fn me(&self, ctx: &Context<'_>) -> Option<User> {
        fetch(ctx, Method::Get, Service::Account, "/api/accounts/me", None).await
    }

    /// A product by id.
    async fn product(&self, ctx: &Context<'_>, id: ID) -> Option<Product> {
        let path = format!("/api/products/{}", encode(&id));
        fetch(ctx, Method::Get, Service::Catalog, &path, None).await
    }

    /// Products, newest first; `category` matches exactly, `q` is a case-insensitive
    /// substring of the name or the description.
    #[graphql(complexity = "page_complexity(child_complexity, page_size)")]
    async fn products(
        &self,
        ctx: &Context<'_>,
        page: Option<i32>,
        page_size: Option<i32>,
        category: Option<String>,
        q: Option<String>,
    ) -> Option<Page<Product>> {
        let [page, page_size] = page_params(page, page_size);
        let path = with_query(
            "/api/products",
            &[page, page_size, ("category", category), ("q", q)],
        );
        fetch(ctx, Method::Get, Service::Catalog, &path, None).await
    }

    /// One of the signed-in user's orders (an ADMIN may read any).
    async fn order(&self, ctx: &Context<'_>, id: ID) -> Option<Order> {
        let path = format!("/api/orders/{}", encode(&id));
        fetch(ctx, Method::Get, Service::Order, &path, None).await
    }

    /// The signed-in user's orders, newest first.
    #[graphql(complexity = "page_complexity(child_complexity, page_size)")]
    async fn orders(
        &self,
        ctx: &Context<'_>,
        page: Option<i32>,
        page_size: Option<i32>,
    ) -> Option<Page<Order>> {
        let path = with_query("/api/orders", &page_params(page, page_size));
        fetch(ctx, Method::Get, Service::Order, &path, None).await
    }

    /// The signed-in user's notifications, newest first.
    #[graphql(complexity = "page_complexity(child_complexity, page_size)")]
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        page: Option<i32>,
        page_size: Option<i32>,
    ) -> Option<Page<Notification>> {
        let path = with_query("/api/notifications", &page_params(page, page_size));
        fetch(ctx, Method::Get, Service::Notification, &path, None).await
    }
}

// --- mutations ------------------------------------------------------------------------------

pub struct Mutation;

#[Object]
impl Mutation {
    /// Creates an account and signs it in.
    async fn register(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
        name: String,
        phone: Option<String>,
    ) -> Option<AuthPayload> {
        let mut body = json!({ "email": email, "password": password, "name": name });
        if let Some(phone) = phone {
            body["phone"] = Value::String(phone);
        }
        let path = "/api/accounts/register";
        fetch(ctx, Method::Post, Service::Account, path, Some(&body)).await
    }

    /// Signs in.
    async fn login(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> Option<AuthPayload> {
        let body = json!({ "email": email, "password": password });
        let path = "/api/accounts/login";
        fetch(ctx, Method::Post, Service::Account, path, Some(&body)).await
    }

    /// Adds a product to the catalog (ADMIN).
    async fn create_product(&self, ctx: &Context<'_>, input: ProductInput) -> Option<Product> {
        let body = serde_json::to_value(&input).unwrap_or_default();
        fetch(
            ctx,
            Method::Post,
            Service::Catalog,
            "/api/products",
            Some(&body),
        )
        .await
    }

    /// Places an order for the signed-in user; the stock is reserved at once and the payment
    /// follows (the order becomes `PAID` or `PAYMENT_FAILED`).
    async fn place_order(
        &self,
        ctx: &Context<'_>,
        items: Vec<OrderItemInput>,
        payment_method: String,
    ) -> Option<Order> {
        let body = json!({ "items": items, "payment_method": payment_method });
        fetch(
            ctx,
            Method::Post,
            Service::Order,
            "/api/orders",
            Some(&body),
        )
        .await
    }

    /// Cancels one of the signed-in user's orders while it is `PENDING`.
    async fn cancel_order(&self, ctx: &Context<'_>, id: ID) -> Option<Order> {
        let path = format!("/api/orders/{}/cancel", encode(&id));
        fetch(ctx, Method::Post, Service::Order, &path, None).await
    }
}
