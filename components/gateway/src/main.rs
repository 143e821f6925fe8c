//! The shop's GraphQL gateway: one endpoint in front of account, catalog, order and
//! notification.
//!
//! - `POST /graphql` `{query, variables?, operationName?}` → 200 the GraphQL answer
//!   `{data, errors?}` (`application/json`); 400 with `error` (agora's shape, code
//!   `invalid_request`) and `errors` (the same as a GraphQL error) when the body is not such a
//!   JSON object. The
//!   schema is in `schema.rs` (print it with the `{ __schema { … } }` introspection query):
//!   queries `me`, `product(id)`, `products(page, pageSize, category, q)`, `order(id)`,
//!   `orders(page, pageSize)`, `notifications(page, pageSize)`; mutations `register(email,
//!   password, name, phone)`, `login(email, password)` (both → `{user, accessToken,
//!   refreshToken, …}`), `createProduct(input)`, `placeOrder(items, paymentMethod)`,
//!   `cancelOrder(id)`. Field names are camelCase; money is integer cents (`priceCents`,
//!   `totalCents`).
//! - `GET /graphql` → GraphiQL: a self-contained page (inline HTML and JS, nothing from the
//!   network) with a query editor, variables, a bearer-token field and a Run button, which
//!   runs `{ __typename }` when it opens.
//!
//! Each resolver calls the component that owns the data in-process through the host
//! (`http://NAME.agora.internal/api/…`, no network hop), forwarding the caller's
//! `Authorization` header: the host verifies the token again and the callee enforces its own
//! policies, so the gateway's route is public and the gateway holds no rights of its own. A
//! callee's error `{"error": {"code", "message", "field"?, "request_id"}}` becomes a GraphQL
//! error with `extensions: {code, status, field?, requestId?}` (a refused token: `code:
//! "unauthorized", status: 401`); a failed call (the callee unreachable) has `code:
//! "upstream_unavailable", status: 502`. Every top-level field and `OrderItem.product` is
//! nullable, so one failed call leaves the rest of the answer (GraphQL's partial results).
//! Parse and validation errors carry `code: "invalid_query", status: 400`.
//!
//! Limits: selections at most 13 deep, complexity at most 2 500 (lists count `pageSize`
//! times their selection; see `schema.rs`), and the request body by the host's `body_kib`.
//!
//! ```toml
//! [[component]]
//! name = "gateway"
//! source = "target/components/gateway.wasm"
//! routes = ["/graphql"]
//! grants = { http = ["http://account.agora.internal", "http://catalog.agora.internal", "http://order.agora.internal", "http://notification.agora.internal"] }
//!
//! [[component.policy]]                  # public: the callees check the forwarded token
//! access = "public"
//! rate_limit = { per_ip = "50/s" }
//!
//! [component.limits]
//! body_kib = 64                         # a query, not an upload
//! deadline_ms = 10000
//! ```

mod backend;
mod schema;

use agora_sdk::http::{self, Body, Error, Method, Request, Response, StatusCode};
use backend::Caller;
use wstd::http::HeaderValue;

/// The GraphiQL page.
const GRAPHIQL: &str = include_str!("graphiql.html");

/// What the page may do: its own inline script and style, and requests to this origin.
const GRAPHIQL_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = http::request_id(&request).to_owned();
    let path = request.uri().path();
    if path != "/graphql" && path != "/graphql/" {
        let message = format!("no route {path}");
        return Ok(http::ApiError::not_found(message).into_response(&request_id));
    }
    Ok(match *request.method() {
        Method::GET | Method::HEAD => graphiql(),
        Method::POST => graphql(&mut request, &request_id).await,
        _ => {
            let mut response = http::ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "/graphql answers GET (GraphiQL) and POST (queries)",
            )
            .into_response(&request_id);
            response
                .headers_mut()
                .insert("allow", HeaderValue::from_static("GET, HEAD, POST"));
            response
        }
    })
}

/// `POST /graphql`: runs the query as the caller.
async fn graphql(request: &mut Request<Body>, request_id: &str) -> Response<Body> {
    let caller = Caller {
        authorization: request
            .headers()
            .get("authorization")
            .map(|value| value.as_bytes().to_vec()),
    };
    let bytes = match request.body_mut().contents().await {
        Ok(bytes) => bytes.to_vec(),
        Err(err) => {
            return request_error(&format!("the body cannot be read: {err}"), request_id);
        }
    };
    let query: async_graphql::Request = match serde_json::from_slice(&bytes) {
        Ok(query) => query,
        Err(err) => {
            return request_error(
                &format!(
                    "the body must be a JSON object {{\"query\", \"variables\"?, \"operationName\"?}}: {err}"
                ),
                request_id,
            );
        }
    };
    let mut answer = schema::build().execute(query.data(caller)).await;
    label_query_errors(&mut answer);
    http::json(StatusCode::OK, &answer)
}

/// Gives errors of the query itself (syntax, validation, limits), which have no code of their
/// own, `code: "invalid_query"` and `status: 400`.
fn label_query_errors(answer: &mut async_graphql::Response) {
    for error in &mut answer.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", "invalid_query");
            extensions.set("status", 400);
        }
    }
}

/// 400: the request is not a GraphQL request. The answer carries the error twice: in agora's
/// shape (`error`, like every other error of the shop) and as a GraphQL error (`errors`, which
/// GraphQL clients read).
fn request_error(message: &str, request_id: &str) -> Response<Body> {
    http::json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({
            "error": { "code": "invalid_request", "message": message, "request_id": request_id },
            "errors": [{
                "message": message,
                "extensions": { "code": "invalid_request", "status": 400 },
            }]
        }),
    )
}

/// `GET /graphql`: the GraphiQL page.
fn graphiql() -> Response<Body> {
    let mut response = Response::new(Body::from(GRAPHIQL));
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(GRAPHIQL_CSP),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `query` on the schema without calling any component (natively, the calls would
    /// fail: these queries are refused or answered before any resolver runs).
    fn run(query: &str) -> async_graphql::Response {
        let mut answer = block_on(schema::build().execute(query));
        label_query_errors(&mut answer);
        answer
    }

    /// Polls `future` to completion; fine for futures that never wait on I/O.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
        }
    }

    fn codes(answer: &async_graphql::Response) -> Vec<String> {
        let json = serde_json::to_value(answer).unwrap_or_default();
        json["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|error| {
                error["extensions"]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn the_schema_has_the_shops_fields_in_camel_case() {
        let sdl = schema::build().sdl();
        for needle in [
            "me: User",
            "product(id: ID!): Product",
            "products(page: Int, pageSize: Int, category: String, q: String): ProductPage",
            "order(id: ID!): Order",
            "orders(page: Int, pageSize: Int): OrderPage",
            "notifications(page: Int, pageSize: Int): NotificationPage",
            "register(email: String!, password: String!, name: String!, phone: String): AuthPayload",
            "login(email: String!, password: String!): AuthPayload",
            "createProduct(input: ProductInput!): Product",
            "placeOrder(items: [OrderItemInput!]!, paymentMethod: String!): Order",
            "cancelOrder(id: ID!): Order",
            "priceCents: Int!",
            "totalCents: Int!",
            "unitPriceCents: Int!",
            "createdAt: String!",
            "accessToken: String!",
            "refreshToken: String!",
            "pageSize: Int!",
            "type: String!",
            "productId: ID!",
        ] {
            assert!(sdl.contains(needle), "the schema lacks `{needle}`:\n{sdl}");
        }
    }

    #[test]
    fn typename_is_answered_without_any_call() {
        let answer = run("{ __typename }");
        assert!(answer.errors.is_empty(), "{:?}", answer.errors);
        assert_eq!(
            serde_json::to_value(&answer.data).unwrap_or_default(),
            serde_json::json!({ "__typename": "Query" })
        );
    }

    /// `{ __schema { types { fields { args { type { ofType { … name } } } } } } }` with
    /// `nesting` levels of `ofType`: 6 + `nesting` deep.
    fn type_ref_query(nesting: usize) -> String {
        format!(
            "{{ __schema {{ types {{ fields {{ args {{ type {{ {} name {} }} }} }} }} }} }}",
            "ofType { kind ".repeat(nesting),
            "} ".repeat(nesting)
        )
    }

    #[test]
    fn too_deep_and_too_complex_queries_are_refused_before_any_call() {
        let answer = run(&type_ref_query(8));
        assert_eq!(codes(&answer), ["invalid_query"]);
        assert!(
            answer.errors[0].message.contains("nested too deep"),
            "{:?}",
            answer.errors
        );

        let complex = "{ orders(pageSize: 100) { items { items { product { id name sku } } } } }";
        let answer = run(complex);
        assert_eq!(codes(&answer), ["invalid_query"]);
        assert!(
            answer.errors[0].message.contains("complex"),
            "{:?}",
            answer.errors
        );
    }

    #[test]
    fn the_standard_introspection_depth_is_allowed() {
        // GraphiQL's introspection query nests `ofType` seven times below `args { type`.
        let answer = run(&type_ref_query(7));
        assert!(answer.errors.is_empty(), "{:?}", answer.errors);
    }

    #[test]
    fn syntax_errors_are_invalid_queries() {
        assert_eq!(codes(&run("{ products(")), ["invalid_query"]);
        assert_eq!(codes(&run("{ nope }")), ["invalid_query"]);
    }

    #[test]
    fn graphiql_is_a_self_contained_page() {
        assert!(GRAPHIQL.contains("<title>GraphiQL"));
        assert!(GRAPHIQL.contains("<noscript>"));
        assert!(GRAPHIQL.contains("id=\"run\""));
        // Nothing loaded from elsewhere: no external script, style sheet or image.
        assert!(!GRAPHIQL.contains("src=") && !GRAPHIQL.contains("<link"));
    }
}
